"""Dataset names, Minari loading, and the flat arrays every algorithm trains on.

A D4RL-style name (``antmaze-umaze-v2``) or a plain Minari id resolves through one registry table to a
Minari dataset, which is read from ``MINARI_DATASETS_PATH`` (downloaded only when allowed) and turned
into :class:`OfflineData`: flat float32 transition arrays plus a :class:`DatasetInfo` that records
everything the live environment, evaluation and export need to treat observations the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class ScoreRule:
    """How a return becomes a score: ``100 * (R - ref_min) / (ref_max - ref_min)``.

    ``kind`` is ``"success"`` (mazes: return is 0/1, score = success rate x 100), ``"normalized"``
    (D4RL or Minari reference returns) or ``"raw"`` (no reference: the return itself).
    """

    kind: str = "raw"
    ref_min: float = 0.0
    ref_max: float = 1.0
    source: str = ""

    def score(self, episode_return: float | np.ndarray) -> float | np.ndarray:
        if self.kind == "raw":
            return episode_return
        return 100.0 * (episode_return - self.ref_min) / (self.ref_max - self.ref_min)

    def describe(self) -> str:
        if self.kind == "success":
            return "success rate x 100"
        if self.kind == "normalized":
            return f"100 x (R - {self.ref_min:g}) / ({self.ref_max:g} - {self.ref_min:g}) [{self.source}]"
        return "raw return"


@dataclass
class DatasetInfo:
    """Everything about a dataset that must travel with a checkpoint (JSON-able via ``to_dict``)."""

    name: str
    minari_id: str
    family: str
    task_mode: str | None
    obs_keys: list[str]
    obs_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    env_spec: str
    eval_env_spec: str
    score_rule: ScoreRule = field(default_factory=ScoreRule)
    max_episode_steps: int | None = None
    goal: list[float] | None = None
    episodes: int = 0
    steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        data = dict(data)
        data["score_rule"] = ScoreRule(**data.get("score_rule", {}))
        return cls(**data)


@dataclass
class OfflineData:
    """Flat float32 transitions. ``terminals`` are true terminations only, never time-limit cuts.

    ``episode_ends`` marks the last transition of every episode (terminated or truncated); reward
    transforms that need episode returns use it.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    episode_ends: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in order."""
        ends = np.flatnonzero(self.episode_ends)
        if len(ends) == 0 or ends[-1] != len(self.rewards) - 1:
            ends = np.append(ends, len(self.rewards) - 1)
        sums = np.cumsum(self.rewards, dtype=np.float64)[ends]
        return np.diff(np.concatenate([[0.0], sums]))

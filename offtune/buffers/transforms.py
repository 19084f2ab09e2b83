"""Reward transforms and the observation normaliser, as small named pieces.

Every reward transform used by the official code is affine (``r -> scale * r + shift``), so a chain of
them is one affine map: it is stored in the checkpoint as two numbers and applied identically to the
offline data and to every online reward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from offtune.errors import OfftuneError, suggest


@dataclass(frozen=True)
class RewardTransform:
    """``r -> scale * r + shift``; ``name`` says where it came from."""

    scale: float = 1.0
    shift: float = 0.0
    name: str = "identity"

    def __call__(self, rewards):
        return rewards * self.scale + self.shift

    def then(self, other: RewardTransform) -> RewardTransform:
        """Apply ``self`` first, then ``other``."""
        name = other.name if self.name == "identity" else f"{self.name}+{other.name}"
        return RewardTransform(self.scale * other.scale, self.shift * other.scale + other.shift, name)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "shift": self.shift, "name": self.name}


@dataclass(frozen=True)
class RewardStatistics:
    """What a transform may read off the offline dataset: its per-step rewards and its episode returns."""

    step_rewards: np.ndarray
    episode_returns: np.ndarray


def identity(_statistics: RewardStatistics) -> RewardTransform:
    return RewardTransform()


def antmaze_minus_one(_statistics: RewardStatistics) -> RewardTransform:
    """IQL and SPOT on AntMaze: r - 1, i.e. -1 per step and 0 at the goal."""
    return RewardTransform(1.0, -1.0, "antmaze_minus_one")


def antmaze_misa(_statistics: RewardStatistics) -> RewardTransform:
    """MISA on AntMaze: 4 (r - 0.5), i.e. rewards in {-2, +2}."""
    return RewardTransform(4.0, -2.0, "antmaze_misa")


def locomotion_return_scale(statistics: RewardStatistics) -> RewardTransform:
    """IQL on locomotion: r * 1000 / (max episode return - min episode return)."""
    returns = statistics.episode_returns
    spread = float(np.max(returns) - np.min(returns)) if len(returns) else 0.0
    if spread <= 0.0:
        raise OfftuneError("locomotion_return_scale needs episodes with different returns")
    return RewardTransform(1000.0 / spread, 0.0, "locomotion_return_scale")


def minmax_unit(statistics: RewardStatistics) -> RewardTransform:
    """MISA on kitchen/adroit: the dataset's per-step reward range onto [-1, 1].

    MISA ``experiments/main.py``: ``(r - min_r) / (max_r - min_r)``, then ``(x - 0.5) * 2``, with min_r and
    max_r over the dataset's step rewards: r -> 2 (r - min_r) / (max_r - min_r) - 1.
    """
    rewards = statistics.step_rewards
    if not len(rewards) or float(np.max(rewards) - np.min(rewards)) <= 0.0:
        return RewardTransform(name="minmax_unit")
    low, spread = float(np.min(rewards)), float(np.max(rewards) - np.min(rewards))
    return RewardTransform(2.0 / spread, -2.0 * low / spread - 1.0, "minmax_unit")


REWARD_TRANSFORMS: dict[str, Callable[[RewardStatistics], RewardTransform]] = {
    "identity": identity,
    "antmaze_minus_one": antmaze_minus_one,
    "antmaze_misa": antmaze_misa,
    "locomotion_return_scale": locomotion_return_scale,
    "minmax_unit": minmax_unit,
}


def reward_transform(names: str, episode_returns: np.ndarray,
                     step_rewards: np.ndarray | None = None) -> RewardTransform:
    """Compose the named transforms (``"a+b"`` applies a, then b), each fitted on the raw dataset's rewards."""
    statistics = RewardStatistics(np.empty(0) if step_rewards is None else np.asarray(step_rewards),
                                  np.asarray(episode_returns))
    result = RewardTransform()
    for name in filter(None, names.split("+")):
        if name not in REWARD_TRANSFORMS:
            raise OfftuneError(f"unknown reward transform '{name}'.{suggest(name, REWARD_TRANSFORMS)}")
        result = result.then(REWARD_TRANSFORMS[name](statistics))
    return result


@dataclass
class Normalizer:
    """(x - mean) / (std + eps) with statistics frozen from the offline dataset."""

    mean: np.ndarray
    std: np.ndarray
    eps: float = 1e-3

    @classmethod
    def identity(cls, dim: int) -> Normalizer:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32), 0.0)

    @classmethod
    def fit(cls, observations: np.ndarray, eps: float = 1e-3) -> Normalizer:
        return cls(observations.mean(0).astype(np.float32), observations.std(0).astype(np.float32), eps)

    def __call__(self, observations):
        return (observations - self.mean) / (self.std + self.eps)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "eps": self.eps}

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32), data["eps"])

"""What both training phases share: the algorithm and its config, the dataset as the agent sees it, run
directories and the checkpoint payload (the contract of DESIGN.md, "Checkpoint")."""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offtune.buffers import datasets
from offtune.buffers.datasets import DatasetInfo, OfflineData
from offtune.buffers.replay import Batch
from offtune.buffers.transforms import Normalizer, RewardTransform, reward_transform
from offtune.errors import OfftuneError, suggest
from offtune.finetune.evaluate import from_env_actions
from offtune.finetune.runtime import (
    Interrupted,
    Progress,
    check_memory,
    first_non_finite_tensor,
    limit_cpu_threads,
    rng_state,
    set_matmul_precision,
)
from offtune.finetune.scores import RunDirectory, read_json, read_yaml_mapping
from offtune.policies import ALGORITHMS
from offtune.policies.base import Agent
from offtune.policies.checkpoint import load_checkpoint, resolve_device
from offtune.policies.config import apply_overrides, config_to_dict
from offtune.policies.presets import DEFAULT_PROTOCOL, preset

EVALUATION_SEED_OFFSET = 10_000
"""Evaluation episodes are seeded with the run's seed plus this, apart from the seeds training draws."""

MAZE_FAMILIES = ("antmaze", "pointmaze")

CHECKPOINT_MINUTES = 10.0
"""Default wall-clock interval of ``last.pt`` between evaluations (and during SPOT's VAE stage)."""

LAST = "last.pt"


@dataclass
class RunResult:
    """What a finished run returns to Python callers."""

    run_dir: Path
    checkpoint: Path
    evaluations: list[dict[str, Any]]
    scores: dict[str, Any] = field(default_factory=dict)


def algorithm(name: str) -> tuple[type, type]:
    """(ConfigClass, AgentClass) of an algorithm name, or an error naming the closest ones."""
    key = name.lower()
    if key not in ALGORITHMS:
        choices = ", ".join(ALGORITHMS)
        raise OfftuneError(f"unknown algorithm '{name}'; choose from {choices}.{suggest(key, ALGORITHMS)}")
    return ALGORITHMS[key]


def build_config(
    algo: str,
    info: DatasetInfo,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    protocol: str = DEFAULT_PROTOCOL,
) -> Any:
    """Defaults, then the family and protocol preset from the official code, then a YAML file, then ``--set``."""
    config_cls, _ = algorithm(algo)
    config = apply_overrides(config_cls(), preset(algo.lower(), info, protocol))
    if config_file is not None:
        config = apply_overrides(config, read_yaml_mapping(config_file, "config file"))
    return apply_overrides(config, overrides or {})


@dataclass
class PreparedData:
    """The dataset as the agent sees it: normalised observations, actions in [-1, 1], transformed rewards."""

    transitions: Batch
    normalizer: Normalizer
    reward_transform: RewardTransform


def prepare_offline(data: OfflineData, config: Any, normalizer: Normalizer | None = None,
                    transform: RewardTransform | None = None) -> PreparedData:
    """Apply the algorithm's data conventions (action clip, reward transform, normalisation).

    Fine-tuning passes the normaliser and reward transform its checkpoint recorded, so the offline data
    keeps exactly the scale the agent was trained on.
    """
    actions = from_env_actions(data.actions, data.info)
    if config.dataset_action_clip > 0:
        actions = np.clip(actions, -config.dataset_action_clip, config.dataset_action_clip)
    if transform is None:
        transform = reward_transform(config.reward_transform, data.episode_returns(), data.rewards)
    if normalizer is None:
        normalizer = (Normalizer.fit(data.observations) if config.normalize_observations
                      else Normalizer.identity(data.info.obs_dim))
    transitions = Batch(
        normalizer(data.observations).astype(np.float32),
        actions.astype(np.float32),
        transform(data.rewards).astype(np.float32),
        normalizer(data.next_observations).astype(np.float32),
        data.terminals.astype(np.float32),
    )
    return PreparedData(transitions, normalizer, transform)


def default_run_dir(algo: str, dataset: str, seed: int, suffix: str = "") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = dataset.replace("/", "_")
    return Path("runs") / f"{algo}-{slug}-s{seed}{suffix}-{stamp}"


def new_run_dir(out: str | Path | None, default: Path) -> Path:
    """The run directory of a fresh run; one that already holds a run is never mixed into."""
    path = Path(out) if out is not None else default
    refuse_existing_run(path)
    return path


def refuse_existing_run(path: Path) -> None:
    """A folder with a run in it is never written into by a fresh run: the message says how to continue it."""
    if not (path / "config.json").exists():
        return
    if (path / "checkpoints" / LAST).exists():
        raise OfftuneError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
    raise OfftuneError(f"{path} already holds a run that has no checkpoint yet (it stopped before its first one, or "
                       f"is still running); start it over with --resume {path}, or choose another --out")


@dataclass
class Recorded:
    """What ``--resume DIR`` continues: the run's ``last.pt``, or for a run that stopped before its first
    checkpoint, its ``config.json`` (``checkpoint`` is None and the run starts over with its own settings)."""

    run: dict[str, Any]
    """The settings the run recorded (``PretrainSettings.to_dict()`` or ``FinetuneSettings.to_dict()``)."""
    algo: str
    config: dict[str, Any]
    dataset: dict[str, Any]
    checkpoint: dict[str, Any] | None


def recorded_run(resume: str | Path, phase: str) -> Recorded:
    """The run in folder ``resume``, refused unless it is a run of ``phase`` ("offline" or "online")."""
    path = Path(resume)
    if (path / "checkpoints" / LAST).exists():
        checkpoint = load_checkpoint(path / "checkpoints" / LAST)
        recorded = Recorded(checkpoint["run"], checkpoint["algo"], checkpoint["config"], checkpoint["dataset"],
                            checkpoint)
    elif (path / "config.json").exists():
        try:
            saved = read_json(path / "config.json")
            recorded = Recorded(saved["run"], saved["run"]["algo"], saved["algo_config"], saved["dataset"], None)
        except (ValueError, KeyError, TypeError):
            raise OfftuneError(f"{path / 'config.json'} is damaged and the run has no checkpoint to continue from; "
                               "start a new run") from None
    else:
        raise OfftuneError(f"{path} holds no run to resume (no config.json, no checkpoints/{LAST})")
    recorded_phase = recorded.run.get("phase")
    if recorded_phase != phase:
        command = "pretrain" if recorded_phase == "offline" else "finetune"
        kind = "pretraining" if recorded_phase == "offline" else "fine-tuning"
        raise OfftuneError(f"{path} holds a {kind} run; resume it with `offtune {command} --resume`")
    return recorded


def check_minutes(minutes: float) -> float:
    if not minutes > 0:
        raise OfftuneError(f"--checkpoint-every-minutes must be positive, got {minutes}")
    return minutes


def transition_bytes(info: DatasetInfo) -> int:
    """One row of the replay buffer: observation, action, reward, next observation, done, as float32."""
    return 4 * (2 * info.obs_dim + info.action_dim + 2)


def check_batch_memory(config: Any, info: DatasetInfo, device: torch.device) -> None:
    """A batch size the device cannot hold is refused before the first update tries to allocate it.

    The estimate is a floor: the sampled rows plus one activation per hidden unit for four networks, with
    their gradients.
    """
    per_sample = transition_bytes(info) + 4 * 8 * sum(config.hidden_dims)
    check_memory(config.batch_size * per_sample, device, f"a batch of {config.batch_size:,}",
                 "use a smaller batch size (--batch-size or --set batch_size=...)")


def diverged(step: int, what: str, last_checkpoint: tuple[Path, int] | None) -> OfftuneError:
    """The error of a run whose updates produced NaN or infinity; nothing after the last good checkpoint is saved."""
    kept = (f"the last good checkpoint, {last_checkpoint[0]} (step {last_checkpoint[1]}), is kept"
            if last_checkpoint else "no checkpoint was written before it")
    return OfftuneError(f"training diverged by step {step}: {what}; {kept}. Start a new run with lower learning "
                        "rates (--set critic_lr=..., actor_lr=...) or check the dataset")


Q_METRICS = ("q", "q_data")
"""The logged mean Q of each algorithm (IQL and SPOT: ``q``; MISA: ``q_data``)."""


def value_range(rewards: tuple[float, float], discount: float) -> tuple[float, float]:
    """Where every Q value lies when each reward lies in ``rewards``: an episode may end after one step
    (Q = r) or never (Q = r / (1 - γ))."""
    horizon = 1.0 / (1.0 - discount) if discount < 1.0 else math.inf
    low, high = rewards
    # r · horizon, with 0 · ∞ = 0: zero rewards sum to zero however long the episode
    return min(low, low * horizon if low else 0.0), max(high, high * horizon if high else 0.0)


def value_warning(metrics: dict[str, float], rewards: tuple[float, float], discount: float) -> str | None:
    """A warning when the logged mean Q is far outside what the rewards allow, else None.

    "Far" is more than half the allowed range (plus 1) beyond it: a critic that gets there is overestimating
    out-of-data actions (the deadly triad), which later shows up as a collapsed score and Q in the millions.
    The official SPOT stops its offline run at mean Q > 1e4; offtune warns once and carries on.
    """
    low, high = value_range(rewards, discount)
    slack = 0.5 * (high - low) + 1.0
    for key in Q_METRICS:
        value = metrics.get(key)
        if value is not None and not low - slack <= value <= high + slack:
            return (f"mean {key} is {value:.4g}, far outside [{low:.4g}, {high:.4g}], where rewards in "
                    f"[{rewards[0]:.4g}, {rewards[1]:.4g}] at discount {discount} keep every Q value: the critic is "
                    "diverging (overestimating actions the data does not cover) and scores from here on mean little. "
                    "Try a stronger constraint (SPOT: a larger --set lam=...), a lower --set critic_lr=..., or an "
                    "earlier checkpoint")
    return None


class ValueWatch:
    """Tells the display, once per run, when the logged mean Q leaves the range the dataset's rewards allow."""

    def __init__(self, prepared: PreparedData, config: Any, progress: Progress) -> None:
        rewards = prepared.transitions.rewards
        self.rewards = (float(rewards.min()), float(rewards.max())) if len(rewards) else None
        # SPOT may switch to a larger discount online; the larger one gives the wider range.
        self.discount = max(config.discount, getattr(config, "online_discount", None) or 0.0)
        self.progress = progress
        self.warned = False

    def check(self, step: int, metrics: dict[str, float]) -> None:
        if self.warned or self.rewards is None:
            return
        message = value_warning(metrics, self.rewards, self.discount)
        if message is not None:
            self.warned = True
            self.progress.warning(f"step {step:,}: {message}")


def require_finite_weights(agent: Agent, step: int, last_checkpoint: tuple[Path, int] | None) -> None:
    """Refuse to evaluate or save weights or optimiser states that hold NaN or infinity (one host sync)."""
    name = first_non_finite_tensor(agent.state_dict())
    if name is not None:
        raise diverged(step, f"the agent's {name} holds NaN or infinity", last_checkpoint)


def default_eval_episodes(info: DatasetInfo) -> int:
    """The papers' protocol: 100 episodes on AntMaze, 10 elsewhere."""
    return 100 if info.family == "antmaze" else 10


def same_dataset(name: str, info: dict[str, Any]) -> bool:
    """Whether ``name`` (a D4RL name, short name or Minari id) names the dataset a run recorded as ``info``."""
    entry = datasets.resolve(name)
    return entry.name == info["name"] and (not entry.exact or entry.minari_id == info["minari_id"])


def device_and_precision(device: str, matmul_precision: str | None) -> tuple[torch.device, str]:
    torch_device = resolve_device(device)
    limit_cpu_threads(torch_device)
    return torch_device, set_matmul_precision(matmul_precision)


def interrupted_at_once(directory: RunDirectory, run: Any | None, resumed: dict[str, Any] | None) -> Interrupted:
    """A Ctrl-C that stopped the run in the middle of a step, or before its loop began: nothing is saved, and the
    run continues from its last checkpoint (the one it was resumed from, if it wrote none since)."""
    last = run.last_checkpoint if run is not None else None
    if last is None and resumed is not None:
        last = (Path(resumed["path"]), resumed["step"])
    step = run.step if run is not None else last[1] if last else 0
    return Interrupted(directory.path, step, *(last or (None, None)))


def open_run_directory(path: Path, logger: str | None, settings: Any, config: Any, info: DatasetInfo,
                       fresh: bool) -> RunDirectory:
    """Take the run directory (its lock) and write ``config.json``; a fresh run checks again, under the lock,
    that no other run got there first."""
    directory = RunDirectory(path, logger)
    try:
        if fresh:
            refuse_existing_run(path)
        directory.write_config({"run": settings.to_dict(), "algo_config": config_to_dict(config),
                                "dataset": info.to_dict()})
    except BaseException:
        directory.close()
        raise
    return directory


def checkpoint_payload(algo: str, config: Any, info: DatasetInfo, prepared: PreparedData, agent: Agent,
                        phase: str, step: int, evaluations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The checkpoint contract of DESIGN.md; each phase adds what it needs to resume (``extra``)."""
    return {
        "algo": algo,
        "config": config_to_dict(config),
        "dataset": info.to_dict(),
        "normalizer": prepared.normalizer.to_dict(),
        "reward_transform": prepared.reward_transform.to_dict(),
        "agent": agent.state_dict(),
        "phase": phase,
        "step": step,
        "rng": rng_state(),
        "scores": list(evaluations),
        **extra,
    }

"""What both training phases share: the algorithm and its config, the dataset as the agent sees it, run
directories and the checkpoint payload (the contract of DESIGN.md, "Checkpoint")."""

from __future__ import annotations

import datetime as _dt
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
from offtune.finetune.runtime import limit_cpu_threads, resolve_device, rng_state, set_matmul_precision
from offtune.finetune.scores import RunDirectory, read_yaml_mapping
from offtune.policies import ALGORITHMS
from offtune.policies.base import Agent
from offtune.policies.config import apply_overrides, config_to_dict
from offtune.policies.presets import preset

EVALUATION_SEED_OFFSET = 10_000
"""Evaluation episodes are seeded with the run's seed plus this, apart from the seeds training draws."""

MAZE_FAMILIES = ("antmaze", "pointmaze")


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
) -> Any:
    """Defaults, then the family preset from the official code, then a YAML file, then ``--set``."""
    config_cls, _ = algorithm(algo)
    config = apply_overrides(config_cls(), preset(algo, info))
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
        transform = reward_transform(config.reward_transform, data.episode_returns())
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
    if (path / "config.json").exists():
        raise OfftuneError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
    return path


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


def open_run_directory(path: Path, logger: str | None, settings: Any, config: Any,
                        info: DatasetInfo) -> RunDirectory:
    directory = RunDirectory(path, logger)
    directory.write_config({"run": settings.to_dict(), "algo_config": config_to_dict(config),
                            "dataset": info.to_dict()})
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

"""Logged data for ``finetune --data``: a Minari dataset read as the task a checkpoint was trained on.

The run itself is :class:`offtune.finetune.online.LoggedDataRun`; this module checks the options and the
dataset against the checkpoint and turns the dataset into the transitions its agent trains on.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch

from offtune.buffers import datasets
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.replay import Batch
from offtune.buffers.sources import open_dataset
from offtune.errors import OfftuneError
from offtune.finetune.envs import require_live_env
from offtune.finetune.runs import PreparedData, prepare_offline, transition_bytes
from offtune.finetune.runtime import check_memory


def refuse_live_env_options(utd: int, num_envs: int, buffer_size: int | None, record_dataset: str | None) -> None:
    """Options of the live env mean nothing on logged data: given, they are a mistake to say."""
    given = [option for option, value in (("--utd", utd != 1), ("--num-envs", num_envs != 1),
                                          ("--buffer-size", buffer_size is not None),
                                          ("--record-dataset", record_dataset is not None)) if value]
    if given:
        raise OfftuneError(f"--data trains on logged transitions, one update per step, without a live env; "
                           f"leave out {', '.join(given)}")


def _observation_size(space: gym.Space, keys: list[str]) -> int:
    """The size of ``space``'s observations flattened with ``keys`` (the checkpoint's order), or its whole flat
    size when it lacks one of them."""
    size = 0
    for key in keys:
        part = space
        for name in key.split("/"):
            if not isinstance(part, gym.spaces.Dict) or name not in part.spaces:
                return gym.spaces.flatdim(space)
            part = part[name]
        size += gym.spaces.flatdim(part)
    return size if keys else gym.spaces.flatdim(space)


def logged_transitions(name: str, info: DatasetInfo, config: Any, prepared: PreparedData, download: bool,
                       device: torch.device, started_with: int | None) -> Batch:
    """Dataset ``name`` as the checkpoint's agent sees it: read as the checkpoint's task (its family and task
    mode, so maze rewards are relabelled to the same goal) and scaled with its normaliser and reward transform.

    Refused when its observations, actions or goal are not the checkpoint's, when the live env evaluation needs
    cannot be built, and when a resumed run finds another number of transitions than the ``started_with`` it
    began with."""
    require_live_env(info, f"evaluating a --data run of {info.name}")
    opened = open_dataset(datasets.resolve(name), download_missing=download)
    sizes = (_observation_size(opened.observation_space, info.obs_keys), gym.spaces.flatdim(opened.action_space))
    if sizes != (info.obs_dim, info.action_dim):
        raise OfftuneError(f"dataset {name} has observations of size {sizes[0]} and actions of size {sizes[1]}, but "
                           f"the checkpoint (trained on {info.name}) takes {info.obs_dim} and {info.action_dim}")
    logged = datasets.load(name, task_mode=info.task_mode, download=download, family=info.family)
    if (logged.info.action_low, logged.info.action_high) != (info.action_low, info.action_high):
        raise OfftuneError(f"dataset {name} bounds its actions by {logged.info.action_low}..{logged.info.action_high}, "
                           f"the checkpoint's env by {info.action_low}..{info.action_high}")
    if logged.info.goal != info.goal:
        raise OfftuneError(f"dataset {name} is labelled for the goal {logged.info.goal}, the checkpoint's task has "
                           f"its goal at {info.goal}")
    if started_with is not None and len(logged) != started_with:
        raise OfftuneError(f"dataset {name} now holds {len(logged):,} transitions, but the run started on "
                           f"{started_with:,}: it changed, so the run cannot continue; start a new one")
    check_memory(len(logged) * transition_bytes(info), device, f"the {len(logged):,} transitions of {name}",
                 "use a machine with more memory")
    return prepare_offline(logged, config, prepared.normalizer, prepared.reward_transform).transitions

"""Online experience kept as a Minari dataset (``finetune --record-dataset``).

:class:`RecordRaw` wraps the raw env under :class:`offtune.finetune.envs.DatasetTask`, so what it keeps
(:class:`RawEpisodes`) is what the env itself returned, not the task view offtune trains on: the dataset then
looks like the one the checkpoint was trained on, and offtune's relabelling applies to it again on load.
The episodes travel in ``last.pt`` as tensors (:func:`episode_state`), so an interrupted run keeps them, and
:func:`write_recorded` writes them at the end of the run, declared like the checkpoint's dataset.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer

from offtune.buffers import datasets
from offtune.buffers.collect import EpisodeRecorder, write_dataset
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.sources import open_dataset
from offtune.buffers.storage import datasets_root, valid_dataset_id
from offtune.errors import OfftuneError

RECORDED_BY = "offtune_recorded_by"
"""Metadata key of a dataset ``--record-dataset`` wrote: its run folder, so that resuming that run (killed
between writing the dataset and ``final.pt``) may write it again, and no other run may."""

EPISODE_FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


class RawEpisodes:
    """The episodes a run's live envs played, as a Minari dataset stores them: the env's own observations (a
    dict stays a dict), actions in env units, and the env's own rewards, terminations and truncations.

    Finished episodes are kept in the order they ended; each env has one running. An episode that did not end
    by the env's own flags (offtune's maze task ended it on reaching the goal, or the run stopped) is cut with
    a truncation, as the published maze datasets cut theirs at every goal.
    """

    def __init__(self, num_envs: int) -> None:
        self.finished: list[EpisodeBuffer] = []
        self.running: list[EpisodeRecorder | None] = [None] * num_envs

    def start(self, index: int, observation: Any) -> None:
        self.cut(index)
        self.running[index] = EpisodeRecorder(copy.deepcopy(observation), None)

    def add(self, index: int, action: np.ndarray, observation: Any, reward: float, terminated: bool,
            truncated: bool) -> None:
        self.running[index].add(action, copy.deepcopy(observation), reward, terminated, truncated, None)
        if terminated or truncated:
            self.cut(index)

    def cut(self, index: int) -> None:
        """End env ``index``'s running episode where it stands (marked truncated unless it ended by itself)."""
        recorder = self.running[index]
        if recorder is not None and len(recorder):
            self.finished.append(recorder.to_buffer(len(self.finished), truncate_end=True))
        self.running[index] = None

    def episodes(self) -> list[EpisodeBuffer]:
        """Every episode so far, the running ones cut where they stand: what ``last.pt`` keeps (a resumed run
        starts its episodes again, like the live envs) and what the dataset gets at the end."""
        running = [recorder for recorder in self.running if recorder is not None and len(recorder)]
        cut = [recorder.to_buffer(len(self.finished) + i, truncate_end=True) for i, recorder in enumerate(running)]
        return [*self.finished, *cut]

    def restore(self, episodes: list[EpisodeBuffer]) -> None:
        self.finished = list(episodes)
        self.running = [None] * len(self.running)


class RecordRaw(gym.Wrapper):
    """Hands every reset and step of the env, as the env returned it, to env ``index`` of ``episodes``."""

    def __init__(self, env: gym.Env, episodes: RawEpisodes, index: int) -> None:
        super().__init__(env)
        self.episodes, self.index = episodes, index

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, env_info = self.env.reset(seed=seed, options=options)
        self.episodes.start(self.index, observation)
        return observation, env_info

    def step(self, action):
        observation, reward, terminated, truncated, env_info = self.env.step(action)
        stored = np.asarray(action, dtype=self.action_space.dtype)  # the dataset's action dtype, not float64
        self.episodes.add(self.index, stored, observation, reward, terminated, truncated)
        return observation, reward, terminated, truncated, env_info


def _tree(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``leaf`` applied to every array of a (nested dict of) arrays."""
    if isinstance(value, dict):
        return {key: _tree(part, leaf) for key, part in value.items()}
    return leaf(value)


def episode_state(episode: EpisodeBuffer) -> dict[str, Any]:
    """A recorded episode as tensors, the only arrays a checkpoint holds (``torch.load(weights_only=True)``)."""
    return {name: _tree(getattr(episode, name), torch.from_numpy) for name in EPISODE_FIELDS}


def episode_from_state(state: dict[str, Any], episode_id: int) -> EpisodeBuffer:
    return EpisodeBuffer(id=episode_id, **{name: _tree(state[name], torch.Tensor.numpy) for name in EPISODE_FIELDS})


def _recorded_by(dataset_id: str) -> str | None:
    """The run folder that wrote local dataset ``dataset_id`` with ``--record-dataset``, if one did."""
    try:
        metadata = json.loads((datasets_root() / dataset_id / "data" / "metadata.json").read_text())
    except (OSError, ValueError):
        return None
    return metadata.get(RECORDED_BY) if isinstance(metadata, dict) else None


def check_record_target(dataset_id: str, run_dir: Path) -> None:
    """Before training: an id Minari takes and that no dataset has yet (but the one this run wrote, when it is
    resumed after writing it)."""
    if not valid_dataset_id(dataset_id):
        raise OfftuneError(f"--record-dataset {dataset_id!r} is not a valid Minari dataset id: use "
                           "namespace/name-vN with letters, digits, - and _")
    if (datasets_root() / dataset_id).exists() and _recorded_by(dataset_id) != str(run_dir.resolve()):
        raise OfftuneError(f"dataset {dataset_id} already exists locally; choose another --record-dataset id")


def write_recorded(dataset_id: str, episodes: list[EpisodeBuffer], info: DatasetInfo, run_dir: Path, algo: str,
                   origin: str) -> None:
    """``episodes`` as Minari dataset ``dataset_id``, declared like the dataset ``info`` was loaded from (its
    spaces, env spec and evaluation env spec), so that it loads like that one. The live env the steps were
    taken in and ``origin`` (what recorded them) are in its description."""
    owner = str(run_dir.resolve())
    taken = (datasets_root() / dataset_id).exists()
    if taken and _recorded_by(dataset_id) != owner:
        raise OfftuneError(f"dataset {dataset_id} appeared while this run trained; move it away and finish with "
                           f"--resume {run_dir}")
    source = open_dataset(datasets.resolve(info.minari_id))
    eval_json = source.storage.metadata.get("eval_env_spec")
    episodes = [dataclasses.replace(episode, id=i) for i, episode in enumerate(episodes)]
    steps = sum(len(episode.rewards) for episode in episodes)
    description = (
        f"Online transitions of {origin}, stepped in the live env {EnvSpec.from_json(info.eval_env_spec).id} of "
        f"{info.minari_id}: {steps} steps in {len(episodes)} episodes. Observations, actions, rewards and flags are "
        "the env's own; an episode ended by offtune's task or by the end of the run is truncated."
    )
    env = make_gym_env(source.env_spec)
    try:
        write_dataset(dataset_id, episodes, env, EnvSpec.from_json(eval_json) if eval_json else None,
                      algorithm_name=f"offtune {algo} fine-tuning", description=description, force=taken,
                      spaces=(source.observation_space, source.action_space), metadata={RECORDED_BY: owner})
    finally:
        env.close()

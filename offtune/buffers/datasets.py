"""Offline data as every algorithm trains on it: flat float32 transitions plus a :class:`DatasetInfo`.

``load`` turns a dataset name into :class:`OfflineData` in steps: resolve the name
(:mod:`~offtune.buffers.registry`), open the Minari dataset (:mod:`~offtune.buffers.sources`), fix the
task (the live env, D4RL's goal in d4rl mode, the observation keys; :mod:`~offtune.buffers.mazes`), then per
episode flatten the observations, relabel maze rewards to that goal and mark the terminals, and last record
the :class:`DatasetInfo` the live env, evaluation and export need to see observations the same way. What
comes out is checked (finite, shaped as Minari stores it, actions within bounds), so a broken dataset stops
here with the episode and step at fault instead of training to NaN.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from offtune.buffers.checks import CHECKSUM_KEY, check_episode, check_values, data_crc
from offtune.buffers.mazes import D4RL_SUCCESS_RADIUS, MAZE_FAMILIES, TASK_MODES, live_task, success_radius
from offtune.buffers.registry import (
    LOCOMOTION_REFS,
    SUCCESS,
    RegistryEntry,
    ScoreRule,
    d4rl_rule,
    guess_family,
    resolve,
)
from offtune.buffers.registry import REGISTRY as REGISTRY  # re-exported: callers read ``datasets.REGISTRY``
from offtune.buffers.sources import damaged, open_dataset, read_episodes
from offtune.errors import OfftuneError


@dataclass
class DatasetInfo:
    """Everything about a dataset that must travel with a checkpoint (JSON-able via ``to_dict``).

    ``obs_keys`` is the order in which dict observations are concatenated (empty for a flat Box);
    ``eval_env_spec`` is the JSON ``EnvSpec`` of the live env to build; for mazes ``goal`` (d4rl task mode)
    and ``success_radius`` say what counts as reaching the goal; ``observation_space`` is the dataset's own
    (possibly dict) observation space, for display.
    """

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
    success_radius: float | None = None
    observation_space: str = ""

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


# --- observations ----------------------------------------------------------------------------------------

OBS_KEYS: dict[tuple[str, str | None], list[str]] = {
    ("antmaze", "d4rl"): ["achieved_goal", "observation"],
    ("antmaze", "goal"): ["achieved_goal", "observation", "desired_goal"],
    ("pointmaze", "goal"): ["observation", "desired_goal"],
    ("pointmaze", "d4rl"): ["observation"],
    ("kitchen", None): ["observation"],
}
"""Flattening order per (family, task mode); any other dataset uses its Dict space's own order. Kitchen
flattens its ``observation`` key alone (its goal keys are dicts of per-task targets)."""


def _lookup(observation: Mapping[str, Any], key: str) -> Any:
    for part in key.split("/"):
        observation = observation[part]
    return observation


def flatten_observation(observation: Any, keys: Sequence[str]) -> np.ndarray:
    """Concatenate the ``keys`` of a dict observation (one, or a batch with a leading axis) as float32.

    Nested keys are written ``outer/inner``; with no keys the observation is already flat.
    """
    if not keys:
        return np.asarray(observation, dtype=np.float32)
    parts = [np.atleast_1d(np.asarray(_lookup(observation, key), dtype=np.float32)) for key in keys]
    return np.concatenate(parts, axis=-1)


def default_obs_keys(space: Any) -> list[str]:
    """Key paths of a (nested) Dict space in the space's own order; [] for a flat Box."""
    from gymnasium import spaces

    if not isinstance(space, spaces.Dict):
        return []
    keys: list[str] = []
    for key, subspace in space.spaces.items():
        inner = default_obs_keys(subspace)
        keys += [f"{key}/{k}" for k in inner] if isinstance(subspace, spaces.Dict) else [key]
    return keys


# --- the task a load is for ------------------------------------------------------------------------------


def _task_mode(entry: RegistryEntry, task_mode: str | None) -> str | None:
    """The task mode asked for, checked against the family's; by default the entry's own, else goal."""
    modes = TASK_MODES.get(entry.family)
    if modes is None:
        if task_mode is not None:
            raise OfftuneError(f"{entry.name} ({entry.family}) has no task modes; omit --task-mode")
        return None
    if task_mode is None:
        return entry.task_mode or "goal"
    if task_mode not in modes:
        raise OfftuneError(f"unknown task mode {task_mode!r} for {entry.family}; choose {' or '.join(modes)}")
    return task_mode


@dataclass(frozen=True)
class _Task:
    """What one load is for: the name's entry and task mode, the env the data were recorded in, the live
    env they are evaluated in, D4RL's goal (d4rl mode only) and the observation keys in flattening order."""

    entry: RegistryEntry
    mode: str | None
    env_spec: Any
    live_spec: Any
    goal: list[float] | None
    obs_keys: list[str]


def recorded_env_spec(spec_json: str) -> Any:
    """An ``EnvSpec`` from the JSON a dataset recorded, cleaned as Minari's ``recover_environment`` cleans it.

    Datasets written under gymnasium 0.29 record ``apply_api_compatibility`` and ``autoreset``, fields
    gymnasium 1.x's ``EnvSpec`` no longer has (Minari strips them by string replacement, which misses them
    in any other position or spacing); every field today's ``EnvSpec`` lacks is dropped here.
    """
    from dataclasses import fields

    from gymnasium.envs.registration import EnvSpec

    known = {spec_field.name for spec_field in fields(EnvSpec)}
    recorded = {key: value for key, value in json.loads(spec_json).items() if key in known}
    return EnvSpec.from_json(json.dumps(recorded))


def _task(entry: RegistryEntry, mode: str | None, dataset: Any) -> _Task:
    """The task of ``dataset`` from the env specs Minari recorded with it."""
    env_spec = dataset.env_spec
    if env_spec is None:
        raise OfftuneError(f"dataset {dataset.id} records no environment spec; offtune needs one")
    eval_json = dataset.storage.metadata.get("eval_env_spec")
    eval_spec = recorded_env_spec(eval_json) if eval_json else env_spec
    live_spec, goal = live_task(entry.family, mode, env_spec, eval_spec)
    keys = OBS_KEYS.get((entry.family, mode)) or default_obs_keys(dataset.observation_space)
    return _Task(entry, mode, env_spec, live_spec, goal, keys)


# --- transitions -----------------------------------------------------------------------------------------


def d4rl_goal_rewards(achieved_goal: np.ndarray, goal: Sequence[float]) -> np.ndarray:
    """D4RL's maze reward for each step of an episode: 1 where it arrives within 0.5 of the one goal, else 0.

    ``achieved_goal`` holds the episode's ``n + 1`` positions; step ``t`` is judged by where it ends, ``t + 1``.
    These replace Minari's rewards, which follow a goal that changes per episode; D4RL's task, the one the
    papers' tables use, has a single goal.
    """
    distance = np.linalg.norm(achieved_goal[1:] - np.asarray(goal), axis=-1)
    return (distance <= D4RL_SUCCESS_RADIUS).astype(np.float32)


def _terminals(family: str, rewards: np.ndarray, terminations: Any) -> np.ndarray:
    """Mazes are goal reaching, so the rewarded steps are their only terminals; elsewhere Minari's
    terminations. A time-limit truncation is never a terminal."""
    if family in MAZE_FAMILIES:
        return rewards == 1.0
    return np.asarray(terminations, bool)


def _episode_transitions(episode: Any, task: _Task) -> tuple[np.ndarray, ...]:
    """One episode as (observations, next observations, actions, rewards, terminals, episode ends)."""
    observations = flatten_observation(episode.observations, task.obs_keys)
    if task.goal is None:
        rewards = np.asarray(episode.rewards, dtype=np.float32)
    else:
        rewards = d4rl_goal_rewards(episode.observations["achieved_goal"], task.goal)
    terminals = _terminals(task.entry.family, rewards, episode.terminations)
    ends = np.zeros(len(rewards), dtype=bool)
    ends[-1] = True
    return observations[:-1], observations[1:], episode.actions, rewards, terminals, ends


def _transitions(dataset: Any, task: _Task) -> tuple[dict[str, np.ndarray], int]:
    """Every episode's transitions joined into :class:`OfflineData`'s arrays, and the episode count; the data
    are checked on the way (:mod:`~offtune.buffers.checks`)."""
    from gymnasium import spaces

    action_space = dataset.action_space
    if not isinstance(action_space, spaces.Box):
        raise OfftuneError(f"dataset {dataset.id} has a {type(action_space).__name__} action space; offtune needs Box")
    recorded, crc = dataset.storage.metadata.get(CHECKSUM_KEY), 0
    episodes, episode_ids = [], []
    with np.errstate(over="ignore"):  # a value float32 cannot hold becomes inf, which check_values reports
        for episode in read_episodes(task.entry, dataset):
            check_episode(dataset.id, episode, dataset.observation_space, action_space)
            if recorded is not None:
                crc = data_crc(episode, crc)
            episodes.append(_episode_transitions(episode, task))
            episode_ids.append(episode.id)
        if not episodes:
            raise OfftuneError(f"dataset {dataset.id} has no episodes")
        if recorded is not None and crc != recorded:
            reason = "its data differ from the checksum offtune recorded when it wrote them"
            raise damaged(task.entry, dataset.id, "main_data.hdf5", reason)
        observations, next_observations, actions, rewards, terminals, ends = (
            np.concatenate(column) for column in zip(*episodes, strict=True)
        )
        arrays = {
            "observations": observations,
            "actions": actions.astype(np.float32).reshape(len(rewards), -1),
            "rewards": rewards.astype(np.float32),
            "next_observations": next_observations,
            "terminals": terminals.astype(np.float32),
            "episode_ends": ends,
        }
    low, high = (np.ravel(bound).astype(np.float64) for bound in (action_space.low, action_space.high))
    check_values(dataset.id, arrays, np.asarray(episode_ids), low, high)
    return arrays, len(episodes)


# --- the record that travels with a checkpoint -----------------------------------------------------------


def _score_rule(entry: RegistryEntry, metadata: Mapping[str, Any]) -> ScoreRule:
    """Mazes: success rate; table rules first (Minari refs win for adroit, which were computed on its
    envs); else Minari's ref_min/max_score; else the raw return."""
    if entry.family in MAZE_FAMILIES:
        return SUCCESS
    has_refs = "ref_min_score" in metadata and "ref_max_score" in metadata
    if entry.score_rule is not None and not (entry.family == "adroit" and has_refs):
        return entry.score_rule
    if has_refs:
        return ScoreRule(
            "normalized",
            float(metadata["ref_min_score"]),
            float(metadata["ref_max_score"]),
            "Minari ref_min/max_score",
        )
    if entry.family == "locomotion":
        # Locomotion data collected here (``dataset collect --env Hopper-v5 --policy ...``) is scored like the
        # registered names: D4RL's reference returns of its robot.
        env_id = json.loads(metadata.get("env_spec") or "{}").get("id", "")
        robot = env_id.split("-")[0].lower()
        if robot in LOCOMOTION_REFS:
            return d4rl_rule(*LOCOMOTION_REFS[robot], robot)
    return ScoreRule()


def _max_steps(spec: Any) -> int | None:
    """The live env's time limit: its spec's own, else the registered env's, else None."""
    if spec.max_episode_steps is not None:
        return int(spec.max_episode_steps)
    import gymnasium as gym

    try:
        return gym.spec(spec.id).max_episode_steps
    except gym.error.Error:
        return None


def _dataset_info(task: _Task, dataset: Any, obs_dim: int, steps: int, episodes: int) -> DatasetInfo:
    """Everything a checkpoint needs to rebuild the task without the dataset: ids, spaces, specs, score rule."""
    action_space = dataset.action_space
    family = task.entry.family
    return DatasetInfo(
        name=task.entry.name,
        minari_id=dataset.id,
        family=family,
        task_mode=task.mode,
        obs_keys=list(task.obs_keys),
        obs_dim=obs_dim,
        action_dim=int(np.prod(action_space.shape)),
        action_low=[float(v) for v in np.ravel(action_space.low)],
        action_high=[float(v) for v in np.ravel(action_space.high)],
        env_spec=task.env_spec.to_json(),
        eval_env_spec=task.live_spec.to_json(),
        score_rule=_score_rule(task.entry, dataset.storage.metadata),
        max_episode_steps=_max_steps(task.live_spec),
        goal=task.goal,
        episodes=episodes,
        steps=steps,
        success_radius=success_radius(family, relabelled=task.goal is not None),
        observation_space=str(dataset.observation_space),
    )


# --- loading ---------------------------------------------------------------------------------------------


def load(name: str, task_mode: str | None = None, download: bool = False, family: str | None = None) -> OfflineData:
    """Load a dataset as flat float32 transitions plus the :class:`DatasetInfo` that describes them.

    Mazes are goal-reaching tasks: rewards are 1 on reaching the goal and those transitions are the only
    terminals; in ``task_mode="d4rl"`` rewards are relabelled to D4RL's single evaluation goal (success
    within 0.5 of the next position), otherwise Minari's own sparse rewards are kept. Elsewhere terminals
    are Minari's terminations. Time-limit truncations are never terminals.

    ``family`` reads the data as that family's task whatever the name suggests: fine-tuning on logged data
    (``finetune --data``) reads them as the task its checkpoint was trained on. Without it, an id whose words
    name no family takes the family of the env the data were recorded in, so that a dataset
    ``finetune --record-dataset`` wrote reads as its source's task under any id.
    """
    entry = resolve(name)
    if family is not None:
        entry = replace(entry, family=family)
    dataset = open_dataset(entry, download_missing=download)
    if entry.family == "other" and dataset.env_spec is not None:
        entry = replace(entry, family=guess_family(dataset.env_spec.id))
    mode = _task_mode(entry, task_mode)
    task = _task(entry, mode, dataset)
    arrays, episodes = _transitions(dataset, task)
    info = _dataset_info(task, dataset, arrays["observations"].shape[1], len(arrays["rewards"]), episodes)
    return OfflineData(**arrays, info=info)


def describe(data: OfflineData) -> dict[str, Any]:
    """A JSON-able summary for ``offtune dataset info``: ids, spaces, sizes, returns, score rule."""
    returns = data.episode_returns()
    info = data.info
    return {
        "name": info.name,
        "minari_id": info.minari_id,
        "family": info.family,
        "task_mode": info.task_mode,
        "observation_space": info.observation_space,
        "obs_keys": info.obs_keys,
        "obs_dim": info.obs_dim,
        "action_dim": info.action_dim,
        "action_low": min(info.action_low),
        "action_high": max(info.action_high),
        "env_id": json.loads(info.env_spec)["id"],
        "eval_env_id": json.loads(info.eval_env_spec)["id"],
        "max_episode_steps": info.max_episode_steps,
        "goal": info.goal,
        "episodes": info.episodes,
        "steps": info.steps,
        "terminals": int(data.terminals.sum()),
        "returns": {
            "mean": float(returns.mean()),
            "std": float(returns.std()),
            "min": float(returns.min()),
            "max": float(returns.max()),
        },
        "score_rule": info.score_rule.describe(),
        "dataset_score": float(np.mean(info.score_rule.score(returns))),
    }

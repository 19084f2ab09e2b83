"""Write real Minari datasets without JAX: a PointMaze planner, an SB3 policy, or random actions.

Minari's ``DataCollector`` needs JAX, so episodes are recorded here straight into Minari
``EpisodeBuffer``s (``n + 1`` observations and infos, ``n`` actions, rewards and flags) and written with
``minari.create_dataset_from_buffers``. The PointMaze collector follows the recipe of the published
D4RL/pointmaze datasets: Q-iteration over maze cells, a PD controller on jittered waypoints and Gaussian
action noise (:mod:`offtune.buffers.maze_expert`), in a continuing task whose episodes are cut at every goal
reached.

Collecting steps real envs, built with :func:`offtune.buffers.gym_make.make_gym_env`, not with
``offtune.finetune.envs``: writing datasets is a ``buffers`` job and ``buffers`` imports nothing from the
layers above it. They are the plain gymnasium envs, because a dataset records what the env itself returns;
``finetune.envs`` later derives its task view (flat observations, goal-reaching rewards) from the dataset.

Small synthetic datasets with the exact specs of published ones (``write_antmaze_like``,
``collect_policy`` with random actions) serve the tests and demos when the real data cannot be
downloaded.

About 460 lines, kept together because every collector runs the same sequence from here: check its numbers,
the id and the room before collecting, record episodes, write them with their checksum.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from gymnasium.envs.registration import EnvSpec
from minari.data_collector import EpisodeBuffer

from offtune.buffers.checks import CHECKSUM_KEY, data_crc
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.maze_expert import MazePlanner as MazePlanner  # re-exported: its address before the split
from offtune.buffers.maze_expert import WaypointController
from offtune.buffers.mazes import (
    ANTMAZE_EVAL_MAPS,
    ANTMAZE_UMAZE_MAP,
    MINARI_SUCCESS_RADIUS,
    POINTMAZE_EVAL_MAPS,
    maze_cell,
)
from offtune.buffers.storage import check_room, datasets_root, hdf5_bytes, valid_dataset_id, writing_dataset
from offtune.errors import OfftuneError

Observation = Any
Policy = Callable[[Observation], np.ndarray]
InfoRecord = Callable[[Observation, bool], dict[str, Any]]

POINTMAZE_ENVS = {
    "umaze": "PointMaze_UMaze-v3",
    "medium": "PointMaze_Medium-v3",
    "large": "PointMaze_Large-v3",
}
ANTMAZE_ENVS = {"umaze": "AntMaze_UMaze-v4", "medium": "AntMaze_Medium-v4", "large": "AntMaze_Large-v4"}
PROGRESS_EVERY = 1000


class EpisodeRecorder:
    """One episode in the layout Minari stores: ``n + 1`` observations and infos, ``n`` of the rest."""

    def __init__(self, observation: Observation, info: dict[str, Any] | None) -> None:
        self.observations = [observation]
        self.infos = None if info is None else [info]
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []
        self.terminations: list[bool] = []
        self.truncations: list[bool] = []

    def __len__(self) -> int:
        return len(self.rewards)

    def add(self, action, observation, reward, terminated, truncated, info: dict[str, Any] | None) -> None:
        self.actions.append(np.asarray(action))
        self.observations.append(observation)
        self.rewards.append(float(reward))
        self.terminations.append(bool(terminated))
        self.truncations.append(bool(truncated))
        if self.infos is not None and info is not None:
            self.infos.append(info)

    def to_buffer(self, episode_id: int, truncate_end: bool = False) -> EpisodeBuffer:
        """Stack the steps; ``truncate_end`` marks an episode cut short by the end of collection."""
        truncations = list(self.truncations)
        if truncate_end and not (self.terminations[-1] or truncations[-1]):
            truncations[-1] = True
        return EpisodeBuffer(
            id=episode_id,
            observations=_stack(self.observations),
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terminations),
            truncations=np.asarray(truncations),
            infos=None if self.infos is None else _stack(self.infos),
        )


def _stack(items: list[Any]) -> Any:
    """List of (nested dicts of) arrays -> (nested dict of) stacked arrays."""
    if isinstance(items[0], dict):
        return {key: _stack([item[key] for item in items]) for key in items[0]}
    return np.stack([np.asarray(item) for item in items])


def run_episodes(
    env: gym.Env,
    policy: Policy,
    steps: int,
    seed: int,
    record_info: InfoRecord | None = None,
    split_on_success: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[EpisodeBuffer]:
    """Step ``env`` for exactly ``steps`` steps and return the episodes.

    ``split_on_success`` cuts an episode (truncation) whenever ``info["success"]`` is true, without
    resetting: in a continuing maze with ``reset_target=True`` the env has already drawn the next goal,
    so the next episode starts where the agent stands. Its first observation carries the new goal, not the
    stale one the env returned on the success step (Minari #265).
    """
    observation, info = env.reset(seed=seed)
    recorder = EpisodeRecorder(observation, _info(record_info, observation, info))
    episodes: list[EpisodeBuffer] = []
    for step in range(steps):
        action = policy(observation)
        next_observation, reward, terminated, truncated, info = env.step(action)
        cut = split_on_success and bool(info.get("success", False))
        recorder.add(
            action,
            next_observation,
            reward,
            terminated,
            truncated or cut,
            _info(record_info, next_observation, info),
        )
        if progress is not None and (step + 1) % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
        if terminated or truncated or cut:
            episodes.append(recorder.to_buffer(len(episodes)))
            if terminated or truncated:
                next_observation, info = env.reset()
            else:
                next_observation = dict(next_observation, desired_goal=env.unwrapped.goal.copy())
                info = {"success": _within(next_observation, MINARI_SUCCESS_RADIUS)}
            recorder = EpisodeRecorder(next_observation, _info(record_info, next_observation, info))
        observation = next_observation
    if len(recorder):
        episodes.append(recorder.to_buffer(len(episodes), truncate_end=True))
    if progress is not None and steps % PROGRESS_EVERY:
        progress(steps % PROGRESS_EVERY)
    return episodes


def _info(
    record_info: InfoRecord | None, observation: Observation, info: dict[str, Any]
) -> dict[str, Any] | None:
    return None if record_info is None else record_info(observation, bool(info.get("success", False)))


def _within(observation: dict[str, np.ndarray], radius: float) -> bool:
    return bool(np.linalg.norm(observation["achieved_goal"] - observation["desired_goal"]) <= radius)


def pointmaze_info(observation: dict[str, np.ndarray], success: bool) -> dict[str, Any]:
    """The infos the published PointMaze data keep: enough to restore the simulator state."""
    return {
        "success": success,
        "qpos": observation["observation"][:2].copy(),
        "qvel": observation["observation"][2:].copy(),
        "goal": observation["desired_goal"].copy(),
    }


def antmaze_info(observation: dict[str, np.ndarray], success: bool) -> dict[str, Any]:
    """The infos of D4RL/antmaze/*-v1: success, qpos (x, y + 13), qvel (14) and the commanded goal."""
    return {
        "success": success,
        "qpos": np.concatenate([observation["achieved_goal"], observation["observation"][:13]]),
        "qvel": observation["observation"][13:].copy(),
        "goal": observation["desired_goal"].copy(),
    }


def pointmaze_eval_spec(maze: str) -> EnvSpec:
    """The published evaluation env: one fixed ``g``, resets anywhere, continuing, goal kept when reached."""
    spec = copy.deepcopy(gym.spec(POINTMAZE_ENVS[maze]))
    spec.kwargs = {
        **spec.kwargs,
        "maze_map": POINTMAZE_EVAL_MAPS[maze],
        "continuing_task": True,
        "reset_target": False,
    }
    return spec


def write_dataset(
    dataset_id: str,
    episodes: list[EpisodeBuffer],
    env: gym.Env,
    eval_env_spec: EnvSpec | None = None,
    algorithm_name: str = "offtune",
    description: str = "",
    force: bool = False,
    spaces: tuple[gym.Space, gym.Space] | None = None,
    metadata: dict[str, Any] | None = None,
) -> minari.MinariDataset:
    """Write ``episodes`` as a local Minari dataset with their checksum (:func:`~offtune.buffers.checks.data_crc`);
    an existing id is only replaced with ``force``, and only once the new one is written
    (:func:`~offtune.buffers.storage.writing_dataset`).

    ``spaces`` (observation, action) replace ``env``'s, so that data recorded for another dataset declare
    exactly that dataset's spaces; ``metadata`` adds keys to Minari's."""
    check_not_taken(dataset_id, force)
    observation_space, action_space = spaces or (None, None)
    with writing_dataset(dataset_id, hdf5_bytes(episodes), replace=force), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(code_permalink|author_email|eval_env).*")
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=episodes,
            env=env,
            eval_env=eval_env_spec,
            algorithm_name=algorithm_name,
            author="offtune",
            description=description,
            observation_space=observation_space,
            action_space=action_space,
        )
        crc = 0
        for episode in episodes:
            crc = data_crc(episode, crc)
        dataset.storage.update_metadata({**(metadata or {}), CHECKSUM_KEY: crc})
    return dataset


def collect_pointmaze(
    maze: str,
    steps: int,
    seed: int = 0,
    noise: float = 0.5,
    dataset_id: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> minari.MinariDataset:
    """A PointMaze dataset made like D4RL/pointmaze: planner, PD waypoints, noise, one goal per episode."""
    if maze not in POINTMAZE_ENVS:
        raise OfftuneError(f"unknown maze {maze!r}; choose one of {', '.join(POINTMAZE_ENVS)}")
    check_settings(steps, seed, noise)
    dataset_id = dataset_id or f"offtune/pointmaze/{maze}-v0"
    env = make_gym_env(POINTMAZE_ENVS[maze], continuing_task=True, reset_target=True, max_episode_steps=10**6)
    _check_free(dataset_id, force, env, steps)
    controller = WaypointController(env.unwrapped.maze, np.random.default_rng(seed), noise=noise)
    episodes = run_episodes(
        env, controller, steps, seed, pointmaze_info, split_on_success=True, progress=progress
    )
    return write_dataset(
        dataset_id,
        episodes,
        env,
        pointmaze_eval_spec(maze),
        algorithm_name="QIteration+PD waypoints",
        description=f"PointMaze {maze}: Q-iteration planner, PD waypoint controller, Gaussian action noise "
        f"sigma={noise}; one episode per goal reached; {steps} steps, seed {seed}.",
        force=force,
    )


def check_settings(steps: int, seed: int, noise: float) -> None:
    """Refuse numbers the collectors would take without complaint and turn into a useless dataset (a NaN
    noise makes every action NaN) or a traceback (numpy refuses negative seeds)."""
    if steps < 1:
        raise OfftuneError(f"--steps must be at least 1, not {steps}")
    if seed < 0:
        raise OfftuneError(f"--seed must be 0 or more, not {seed}")
    if not (math.isfinite(noise) and noise >= 0):
        raise OfftuneError(f"--noise is a standard deviation: a finite number, 0 or more, not {noise}")


def check_not_taken(dataset_id: str, force: bool) -> None:
    """Refuse to overwrite a dataset without ``force``; a folder Minari cannot list (damaged) counts too."""
    if (datasets_root() / dataset_id).exists() and not force:
        raise OfftuneError(f"dataset {dataset_id} already exists locally; pass --force to overwrite it")


def _space_bytes(space: gym.Space) -> int:
    """Bytes one element of ``space`` takes as an array (a Dict space: all its parts)."""
    if isinstance(space, gym.spaces.Dict):
        return sum(_space_bytes(part) for part in space.spaces.values())
    return int(np.prod(space.shape or (1,))) * np.dtype(space.dtype or np.float64).itemsize


def _check_free(dataset_id: str, force: bool, env: gym.Env, steps: int) -> None:
    """Fail before collecting, not after, when the id is malformed or taken, or when the steps' observations
    and actions alone would not fit in memory (where episodes are kept until written) or on the disk."""
    if not valid_dataset_id(dataset_id):
        raise OfftuneError(
            f"'{dataset_id}' is not a valid Minari dataset id: use namespace/name-vN with letters, digits, - and _"
        )
    check_not_taken(dataset_id, force)
    needed = steps * (_space_bytes(env.observation_space) + _space_bytes(env.action_space))
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > memory:
        raise OfftuneError(
            f"{steps} steps of {env.spec.id} need at least {needed / 2**30:.1f} GB of memory while collecting; "
            f"this machine has {memory / 2**30:.1f} GB: collect fewer --steps"
        )
    check_room(f"dataset {dataset_id} ({steps} steps of {env.spec.id})", needed)


def _shapes(space: gym.Space) -> Any:
    """A space's shape, or its parts' shapes for a Dict space: what an SB3 policy must agree on with the env."""
    if isinstance(space, gym.spaces.Dict):
        return {key: part.shape for key, part in space.spaces.items()}
    return space.shape


def load_sb3_policy(path: str | Path, env: gym.Env, rng: np.random.Generator, noise: float) -> Policy:
    """A deterministic SB3 policy (SAC, TD3 or PPO zip) plus Gaussian noise scaled to the action range."""
    import json
    import zipfile

    import stable_baselines3

    path = Path(path)
    if not path.is_file():
        raise OfftuneError(f"policy file {path} does not exist")
    try:
        module = json.loads(zipfile.ZipFile(path).read("data"))["policy_class"]["__module__"]
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise OfftuneError(f"{path} is not a Stable-Baselines3 model zip ({error})") from error
    algorithms = {"sac": stable_baselines3.SAC, "td3": stable_baselines3.TD3, "common": stable_baselines3.PPO}
    algorithm = algorithms.get(module.split(".")[1] if module.count(".") else "")
    if algorithm is None:
        raise OfftuneError(f"{path}: policy class from {module} is not SAC, TD3 or PPO")
    model = algorithm.load(path, device="cpu")
    expected = (_shapes(model.observation_space), model.action_space.shape)
    found = (_shapes(env.observation_space), env.action_space.shape)
    if expected != found:
        raise OfftuneError(
            f"{path} takes observations {expected[0]} and gives actions {expected[1]}, but {env.spec.id} has "
            f"observations {found[0]} and actions {found[1]}: pass the env the policy was trained on"
        )
    low, high = env.action_space.low, env.action_space.high
    scale = noise * (high - low) / 2.0

    def act(observation: Observation) -> np.ndarray:
        action, _ = model.predict(observation, deterministic=True)
        return np.clip(action + scale * rng.standard_normal(action.shape), low, high).astype(
            env.action_space.dtype
        )

    return act


def collect_policy(
    env_id: str,
    steps: int,
    seed: int = 0,
    policy_path: str | Path | None = None,
    noise: float = 0.1,
    dataset_id: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> minari.MinariDataset:
    """A dataset from an SB3 policy zip with Gaussian action noise, or from uniform random actions."""
    check_settings(steps, seed, noise)
    try:
        env = make_gym_env(env_id)
    except gym.error.Error as error:
        raise OfftuneError(f"cannot make environment {env_id!r}: {error}") from error
    if not isinstance(env.action_space, gym.spaces.Box):
        raise OfftuneError(
            f"{env_id} has a {type(env.action_space).__name__} action space; offtune needs Box"
        )
    kind = "random" if policy_path is None else Path(policy_path).stem.lower().replace("_", "-")
    dataset_id = dataset_id or f"offtune/{env.spec.name.lower()}/{kind}-v0"
    _check_free(dataset_id, force, env, steps)
    rng = np.random.default_rng(seed)
    if policy_path is None:
        env.action_space.seed(seed)
        policy: Policy = lambda _observation: env.action_space.sample()  # noqa: E731
        description = f"{env_id}: uniform random actions; {steps} steps, seed {seed}."
    else:
        policy = load_sb3_policy(policy_path, env, rng, noise)
        description = (
            f"{env_id}: SB3 policy {Path(policy_path).name} with Gaussian action noise sigma={noise} "
            f"(x half the action range); {steps} steps, seed {seed}."
        )
    episodes = run_episodes(env, policy, steps, seed, progress=progress)
    return write_dataset(dataset_id, episodes, env, algorithm_name=kind, description=description, force=force)


def place_agent(env: gym.Env, xy: np.ndarray) -> dict[str, np.ndarray]:
    """Move a maze agent (ant or point) to ``xy`` and return the observation it now has."""
    maze_env = env.unwrapped
    body = maze_env.ant_env if hasattr(maze_env, "ant_env") else maze_env.point_env
    qpos = body.data.qpos.copy()
    qpos[:2] = xy
    body.set_state(qpos, body.data.qvel.copy())
    body_observation = body._get_obs()  # the point body returns (obs, info), the ant body just obs
    if isinstance(body_observation, tuple):
        body_observation = body_observation[0]
    return maze_env._get_obs(body_observation)


def write_antmaze_like(
    dataset_id: str,
    maze: str = "umaze",
    episodes: int = 6,
    steps: int = 40,
    seed: int = 0,
    force: bool = False,
) -> minari.MinariDataset:
    """A small dataset with the exact spec of D4RL/antmaze/<maze>-v1 (umaze, medium-play, large-play).

    Same collection env, maze map, continuing task, 700/1000-step time limit, infos and evaluation env as
    the published data; the actions are small random ones. Every third episode starts next to D4RL's goal
    and every third next to the commanded goal, so both the relabelled and Minari's own rewards are
    sometimes 1. Episodes are ``steps`` long and end in a truncation.
    """
    if maze == "umaze":
        env = make_gym_env(
            ANTMAZE_ENVS[maze], maze_map=ANTMAZE_UMAZE_MAP, continuing_task=True, reset_target=False
        )
        d4rl_map = ANTMAZE_UMAZE_MAP
    else:
        env = make_gym_env(ANTMAZE_ENVS[maze], continuing_task=True, reset_target=False)
        d4rl_map = ANTMAZE_EVAL_MAPS[maze]
    eval_spec = copy.deepcopy(env.spec)
    eval_spec.kwargs = {**eval_spec.kwargs, "maze_map": ANTMAZE_EVAL_MAPS[maze]}
    maze_env = env.unwrapped
    d4rl_goal = maze_env.maze.cell_rowcol_to_xy(np.array(maze_cell(d4rl_map, "g")))
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    buffers = []
    for episode in range(episodes):
        observation, info = env.reset(seed=seed + episode)
        if episode % 3 == 1:
            observation = place_agent(env, d4rl_goal + rng.uniform(-0.2, 0.2, size=2))
        elif episode % 3 == 2:
            observation = place_agent(env, maze_env.goal + rng.uniform(-0.2, 0.2, size=2))
        recorder = EpisodeRecorder(
            observation, antmaze_info(observation, _within(observation, MINARI_SUCCESS_RADIUS))
        )
        for step in range(steps):
            action = 0.3 * env.action_space.sample()
            observation, reward, terminated, truncated, info = env.step(action)
            recorder.add(
                action,
                observation,
                reward,
                terminated,
                truncated or step == steps - 1,
                antmaze_info(observation, info["success"]),
            )
        buffers.append(recorder.to_buffer(episode))
    return write_dataset(
        dataset_id,
        buffers,
        env,
        eval_spec,
        algorithm_name="random",
        description=f"Stand-in with the spec of D4RL/antmaze/{maze}-v1 ({episodes} x {steps} steps).",
        force=force,
    )

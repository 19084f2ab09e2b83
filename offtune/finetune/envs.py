"""The live environment a dataset was made for, seen exactly as the offline data present it.

``make_env`` builds the env from ``DatasetInfo.eval_env_spec`` and wraps it so that observations are the
dataset's flat float32 vectors (same keys, same order), and mazes are the goal-reaching task the data
were labelled for: reward 1 and termination on reaching the goal (``info.goal`` within
``info.success_radius`` in d4rl mode, the env's own ``info["success"]`` in goal mode), 0 otherwise, so an
episode's return is its success. Time-limit truncations stay truncations.

The env underneath comes from :func:`offtune.buffers.gym_make.make_gym_env`, which collecting datasets
shares; it lives in ``buffers`` because arrows only point down the layers (it is importable from here too).

With ``record``, :class:`offtune.finetune.recording.RecordRaw` sits between the two and keeps what the env itself
returned, for ``finetune --record-dataset``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from offtune.buffers.datasets import DatasetInfo, flatten_observation
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.mazes import MAZE_FAMILIES
from offtune.errors import OfftuneError
from offtune.finetune.recording import RawEpisodes, RecordRaw


class DatasetTask(gym.Wrapper):
    """Flat observations in ``info.obs_keys`` order; maze rewards and terminations per the task mode.

    ``raw_observation_space`` keeps the env's own (dict) observation space for export.
    """

    def __init__(self, env: gym.Env, info: DatasetInfo) -> None:
        super().__init__(env)
        self.raw_observation_space = env.observation_space
        self.obs_keys = list(info.obs_keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (info.obs_dim,), np.float32)
        self.goal_reaching = info.family in MAZE_FAMILIES
        self.goal = None if info.goal is None else np.asarray(info.goal, dtype=np.float64)
        self.success_radius = info.success_radius

    def _success(self, observation: Any, env_info: dict[str, Any]) -> bool:
        if self.goal is not None:
            return bool(np.linalg.norm(observation["achieved_goal"] - self.goal) <= self.success_radius)
        return bool(env_info.get("success", False))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        observation, env_info = self.env.reset(seed=seed, options=options)
        if self.goal_reaching:
            env_info["success"] = self._success(observation, env_info)
        return flatten_observation(observation, self.obs_keys), env_info

    def step(self, action):
        observation, reward, terminated, truncated, env_info = self.env.step(action)
        if self.goal_reaching:
            success = self._success(observation, env_info)
            env_info["success"] = success
            reward, terminated = float(success), bool(terminated or success)
        return flatten_observation(observation, self.obs_keys), reward, terminated, truncated, env_info


def make_env(info: DatasetInfo, seed: int | None = None, render_mode: str | None = None,
             record: tuple[RawEpisodes, int] | None = None) -> gym.Env:
    """One live env for ``info``; ``seed`` seeds its first reset and its action space; ``record`` (episodes,
    env index) keeps its raw steps."""
    spec = EnvSpec.from_json(info.eval_env_spec)
    try:
        env = make_gym_env(spec, render_mode=render_mode)
    except AssertionError as error:
        if not spec.id.startswith("FrankaKitchen"):
            raise
        raise OfftuneError(
            f"{spec.id} cannot be built with mujoco>=3.12 (a joint-type check in gymnasium-robotics fails); "
            "install `mujoco<3.12` to use the kitchen datasets"
        ) from error
    if record is not None:
        env = RecordRaw(env, *record)
    env = DatasetTask(env, info)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def require_live_env(info: DatasetInfo, purpose: str) -> None:
    """Build the live env once and close it, so a run that needs it only at its evaluations says at the start,
    in one line, that it cannot be built here."""
    spec_id = EnvSpec.from_json(info.eval_env_spec).id
    try:
        make_env(info).close()
    except (gym.error.Error, ImportError) as error:
        raise OfftuneError(f"{purpose} needs the live env {spec_id}, which cannot be built here: {error}") from error


def make_vector_env(info: DatasetInfo, num_envs: int, seed: int | None = None,
                    record: RawEpisodes | None = None) -> gym.vector.SyncVectorEnv:
    """``num_envs`` live envs (env ``i`` seeded ``seed + i``) stepping together; ``record`` keeps their raw steps.

    Autoreset is same-step: a finished env resets inside the step that ended it, returns the new first
    observation, and leaves the last one in ``infos["final_obs"]`` (and its info in ``infos["final_info"]``).
    """

    def factory(index: int):
        return lambda: make_env(info, seed=None if seed is None else seed + index,
                                record=None if record is None else (record, index))

    return gym.vector.SyncVectorEnv(
        [factory(i) for i in range(num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
    )

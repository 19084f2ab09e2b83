"""Live envs: the dataset's observation layout, the maze goal-reaching task, truncations, vector envs."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from offtune.buffers.collect import place_agent
from offtune.buffers.datasets import flatten_observation, load
from offtune.buffers.mazes import ANTMAZE_UMAZE_MAP, maze_cell
from offtune.buffers.transforms import Normalizer
from offtune.finetune.envs import make_env, make_vector_env
from offtune.finetune.evaluate import evaluate


def test_antmaze_d4rl_env_matches_the_data(antmaze_umaze_dataset):
    info = load(antmaze_umaze_dataset).info
    env = make_env(info, seed=0)
    assert env.observation_space == gym.spaces.Box(-np.inf, np.inf, (29,), np.float32)
    assert isinstance(env.raw_observation_space, gym.spaces.Dict)
    maze = env.unwrapped.maze
    assert maze.maze_map == ANTMAZE_UMAZE_MAP
    np.testing.assert_allclose(maze.cell_rowcol_to_xy(np.array(maze_cell(maze.maze_map, "g"))), info.goal)
    observation, reset_info = env.reset()
    assert observation.dtype == np.float32 and reset_info["success"] is False
    # the ant starts near D4RL's start cell (bottom-left), 8 m from the goal
    assert np.linalg.norm(observation[:2] - np.array([-4.0, -4.0])) <= 1.5

    raw = place_agent(env, np.array([-4.3, 4.3]))  # 0.42 from the goal: inside D4RL's 0.5
    np.testing.assert_allclose(flatten_observation(raw, info.obs_keys)[:2], [-4.3, 4.3])
    observation, reward, terminated, truncated, step_info = env.step(np.zeros(8))
    assert (reward, terminated, truncated, step_info["success"]) == (1.0, True, False, True)

    env.reset()
    place_agent(env, np.array([-4.0, 4.6]))  # 0.6 from the goal: no success
    _, reward, terminated, _, step_info = env.step(np.zeros(8))
    assert (reward, terminated, step_info["success"]) == (0.0, False, False)
    # gymnasium-robotics leaves the model's XML in the temp folder; offtune removes it once the env is built
    assert not Path(env.unwrapped.tmp_xml_file_path).exists()


def test_antmaze_time_limit_is_a_truncation(antmaze_umaze_dataset):
    env = make_env(load(antmaze_umaze_dataset).info, seed=1)
    env.reset()
    for step in range(700):
        _, reward, terminated, truncated, _ = env.step(np.zeros(8))
        assert not terminated and reward == 0.0
        assert truncated == (step == 699)


def test_antmaze_goal_mode_env(antmaze_umaze_dataset):
    info = load(antmaze_umaze_dataset, task_mode="goal").info
    env = make_env(info, seed=0)
    observation, _ = env.reset()
    assert observation.shape == (31,)
    desired = env.unwrapped.goal.copy()
    np.testing.assert_allclose(observation[-2:], desired, rtol=1e-6)
    assert env.unwrapped.maze.maze_map[3][3] == "g"  # Minari's (mirrored) evaluation map
    place_agent(env, desired + 0.1)
    _, reward, terminated, _, step_info = env.step(np.zeros(8))
    assert (reward, terminated, step_info["success"]) == (1.0, True, True)


def test_pointmaze_goal_env_terminates_on_success(pointmaze_dataset):
    info = load(pointmaze_dataset).info
    env = make_env(info, seed=0)
    observation, _ = env.reset()
    assert observation.shape == (6,) and env.spec.max_episode_steps == 300
    _, reward, terminated, _, _ = env.step(np.zeros(2))
    assert (reward, terminated) == (0.0, False)
    place_agent(env, observation[-2:])
    _, reward, terminated, truncated, _ = env.step(np.zeros(2))
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert not Path(env.unwrapped.tmp_xml_file_path).exists()


def test_locomotion_env_is_the_plain_env(hopper_dataset):
    env = make_env(load(hopper_dataset).info, seed=5)
    plain = gym.make("Hopper-v5")
    plain.reset(seed=5)
    observation, _ = env.reset(seed=7)
    expected, _ = plain.reset(seed=7)
    np.testing.assert_allclose(observation, expected.astype(np.float32))
    for _ in range(200):
        action = np.full(3, 0.5, np.float32)
        step, reference = env.step(action), plain.step(action)
        np.testing.assert_allclose(step[0], reference[0].astype(np.float32), rtol=1e-6)
        assert step[1:4] == reference[1:4]
        if step[2] or step[3]:
            break
    assert step[2]  # the hopper fell: a true termination, left as it is


def test_seeded_envs_are_reproducible(pointmaze_dataset):
    info = load(pointmaze_dataset).info
    first, second = make_env(info, seed=3), make_env(info, seed=3)
    np.testing.assert_array_equal(first.reset()[0], second.reset()[0])


def test_vector_env_resets_in_the_same_step(hopper_dataset):
    envs = make_vector_env(load(hopper_dataset).info, num_envs=2, seed=0)
    observations, _ = envs.reset(seed=0)
    assert observations.shape == (2, 11) and observations.dtype == np.float32
    for _ in range(300):
        observations, _, terminated, truncated, infos = envs.step(np.full((2, 3), 0.5, np.float32))
        done = terminated | truncated
        if done.any():
            break
    index = int(np.flatnonzero(done)[0])
    final = infos["final_obs"][index]
    assert final.shape == (11,) and not np.allclose(final, observations[index])
    assert np.abs(observations[index][0] - 1.25) < 0.1  # a fresh hopper standing at its reset height


class StillPolicy:
    """Always the zero action: enough to run evaluation episodes in a real env."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim

    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.zeros(len(observations), self.action_dim)


def test_success_rate_only_where_the_env_reports_success(hopper_dataset, pointmaze_dataset):
    hopper = load(hopper_dataset).info
    fallen = evaluate(StillPolicy(hopper.action_dim), hopper, Normalizer.identity(hopper.obs_dim), episodes=2)
    assert fallen.summary()["success_rate"] is None and fallen.episodes == 2
    maze = load(pointmaze_dataset).info
    standing = evaluate(StillPolicy(maze.action_dim), maze, Normalizer.identity(maze.obs_dim), episodes=2)
    assert standing.summary()["success_rate"] == 0.0

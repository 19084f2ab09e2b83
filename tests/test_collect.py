"""Dataset writers: the PointMaze planner and controller, SB3/random collection, the AntMaze stand-in."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import minari
import numpy as np
import pytest
import stable_baselines3
from gymnasium_robotics.envs.maze.maps import U_MAZE

from offtune.buffers import collect
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.mazes import ANTMAZE_UMAZE_MAP, POINTMAZE_EVAL_MAPS
from offtune.buffers.storage import local_ids
from offtune.errors import OfftuneError


def test_planner_walks_the_u_from_bottom_left_to_top_left():
    planner = collect.MazePlanner(U_MAZE)
    step = planner.next_cells((1, 1))
    cell, path = (3, 1), [(3, 1)]
    while cell != (1, 1):
        cell = divmod(int(step[cell[0] * planner.cols + cell[1]]), planner.cols)
        path.append(cell)
    assert path == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert planner.next_cells((1, 1)) is step  # cached per goal cell


def test_noiseless_controller_reaches_the_eval_goal():
    env = make_gym_env(collect.pointmaze_eval_spec("umaze"))
    controller = collect.WaypointController(env.unwrapped.maze, np.random.default_rng(0), noise=0.0)
    observation, _ = env.reset(seed=0)
    for _ in range(300):
        observation, reward, _, _, info = env.step(controller(observation))
        if info["success"]:
            break
    assert info["success"] and reward == 1.0


def test_pointmaze_dataset_layout(pointmaze_dataset):
    dataset = minari.load_dataset(pointmaze_dataset)
    assert dataset.total_steps == 5_000
    episodes = list(dataset.iterate_episodes())
    assert len(episodes) == dataset.total_episodes > 20
    for episode, following in zip(episodes[:-1], episodes[1:], strict=True):
        assert episode.truncations[-1] and not episode.terminations.any()
        assert episode.infos["success"][-1] and episode.rewards[-1] == 1.0 and episode.rewards[:-1].sum() == 0
        # the next episode continues from where this one stopped, with the newly drawn goal
        np.testing.assert_array_equal(
            following.observations["achieved_goal"][0], episode.observations["achieved_goal"][-1]
        )
        np.testing.assert_array_equal(following.observations["desired_goal"][0], following.infos["goal"][1])
    assert set(episodes[0].infos) == {"success", "qpos", "qvel", "goal"}
    np.testing.assert_array_equal(episodes[0].infos["qpos"], episodes[0].observations["observation"][:, :2])
    env_spec = dataset.env_spec
    assert (env_spec.id, env_spec.kwargs["continuing_task"], env_spec.kwargs["reset_target"]) == (
        "PointMaze_UMaze-v3",
        True,
        True,
    )
    eval_spec = json.loads(dataset.storage.metadata["eval_env_spec"])
    assert eval_spec["kwargs"]["maze_map"] == POINTMAZE_EVAL_MAPS["umaze"]
    assert (eval_spec["kwargs"]["continuing_task"], eval_spec["kwargs"]["reset_target"]) == (True, False)
    assert np.abs(np.concatenate([e.actions for e in episodes])).max() <= 1.0


def test_collection_is_reproducible(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    first = collect.collect_pointmaze("umaze", steps=300, seed=3, dataset_id="test/pointmaze/a-v0")
    second = collect.collect_pointmaze("umaze", steps=300, seed=3, dataset_id="test/pointmaze/b-v0")
    actions = [np.concatenate([e.actions for e in d.iterate_episodes()]) for d in (first, second)]
    np.testing.assert_array_equal(*actions)


def test_existing_id_needs_force(pointmaze_dataset, monkeypatch, tmp_path):
    with pytest.raises(OfftuneError, match="already exists.*--force"):
        collect.collect_pointmaze("umaze", steps=10, dataset_id=pointmaze_dataset)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    collect.collect_pointmaze("umaze", steps=10, dataset_id="test/pointmaze/again-v0")
    rewritten = collect.collect_pointmaze("umaze", steps=20, dataset_id="test/pointmaze/again-v0", force=True)
    assert minari.load_dataset(rewritten.id).total_steps == 20


@pytest.mark.parametrize("algorithm", [stable_baselines3.SAC, stable_baselines3.TD3, stable_baselines3.PPO])
def test_sb3_policy_collection(algorithm, monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    path = tmp_path / f"{algorithm.__name__}_pendulum.zip"
    algorithm("MlpPolicy", "Pendulum-v1", seed=0, device="cpu").save(path)
    dataset = collect.collect_policy("Pendulum-v1", steps=250, seed=0, policy_path=path, noise=0.1)
    assert dataset.id == f"offtune/pendulum/{algorithm.__name__.lower()}-pendulum-v0"
    episodes = list(dataset.iterate_episodes())
    assert (
        [len(e) for e in episodes] == [200, 50]
        and episodes[0].truncations[-1]
        and episodes[1].truncations[-1]
    )
    actions = np.concatenate([e.actions for e in episodes])
    assert actions.shape == (250, 1) and np.abs(actions).max() <= 2.0


def test_random_collection_and_bad_inputs(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    dataset = collect.collect_policy("Pendulum-v1", steps=30, seed=0)
    assert dataset.id == "offtune/pendulum/random-v0" and dataset.total_steps == 30
    with pytest.raises(OfftuneError, match="not a Stable-Baselines3"):
        (tmp_path / "broken.zip").write_text("nope")
        collect.collect_policy("Pendulum-v1", steps=5, policy_path=tmp_path / "broken.zip")
    with pytest.raises(OfftuneError, match="does not exist"):
        collect.collect_policy("Pendulum-v1", steps=5, policy_path=tmp_path / "missing.zip")
    with pytest.raises(OfftuneError, match="cannot make environment"):
        collect.collect_policy("NoSuchEnv-v0", steps=5)
    pendulum_policy = tmp_path / "pendulum_sac.zip"
    stable_baselines3.SAC("MlpPolicy", "Pendulum-v1", seed=0, device="cpu").save(pendulum_policy)
    mismatch = r"takes observations \(3,\).*MountainCarContinuous-v0 has observations \(2,\)"
    with pytest.raises(OfftuneError, match=mismatch):
        collect.collect_policy("MountainCarContinuous-v0", steps=5, policy_path=pendulum_policy)
    assert sorted(minari.list_local_datasets()) == ["offtune/pendulum/random-v0"]
    with pytest.raises(OfftuneError, match="Discrete action space"):
        collect.collect_policy("CartPole-v1", steps=5)


def test_antmaze_stand_in_has_the_published_spec(antmaze_umaze_dataset):
    dataset = minari.load_dataset(antmaze_umaze_dataset)
    spec = dataset.env_spec
    assert spec.id == "AntMaze_UMaze-v4" and spec.max_episode_steps == 700
    assert spec.kwargs["maze_map"] == ANTMAZE_UMAZE_MAP
    assert (spec.kwargs["continuing_task"], spec.kwargs["reset_target"]) == (True, False)
    eval_spec = gym.envs.registration.EnvSpec.from_json(dataset.storage.metadata["eval_env_spec"])
    assert eval_spec.kwargs["maze_map"] == [
        [1, 1, 1, 1, 1],
        [1, 0, 0, "r", 1],
        [1, 0, 1, 1, 1],
        [1, 0, 0, "g", 1],
        [1, 1, 1, 1, 1],
    ]
    episode = next(dataset.iterate_episodes())
    assert set(episode.infos) == {"success", "qpos", "qvel", "goal"}
    assert episode.infos["qpos"].shape == (41, 15) and episode.infos["qvel"].shape == (41, 14)
    np.testing.assert_array_equal(episode.infos["qpos"][:, :2], episode.observations["achieved_goal"])
    assert dataset.observation_space["observation"].shape == (27,)
    assert not any(e.terminations.any() for e in dataset.iterate_episodes())


def test_malformed_ids_are_refused_and_stray_folders_do_not_break_listing(minari_root, pointmaze_dataset):
    with pytest.raises(OfftuneError, match="not a valid Minari dataset id"):
        collect.collect_pointmaze("umaze", steps=10, dataset_id="me/maze-noise0.5-v0")
    stray = minari_root / "me" / "bad-name0.5-v0" / "data"
    stray.mkdir(parents=True)
    (stray / "metadata.json").write_text("{}")
    try:
        assert pointmaze_dataset in local_ids()
    finally:
        shutil.rmtree(minari_root / "me")

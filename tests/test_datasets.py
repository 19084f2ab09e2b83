"""Dataset names, loading, task modes and score rules, on real Minari datasets in a temporary folder."""

from __future__ import annotations

import importlib.util
import json

import minari
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec

from offtune.buffers import collect, datasets
from offtune.buffers.datasets import DatasetInfo, flatten_observation, load
from offtune.buffers.mazes import ANTMAZE_UMAZE_MAP
from offtune.buffers.registry import resolve
from offtune.errors import OfftuneError


def _raw_episodes(dataset_id: str) -> list:
    return list(minari.load_dataset(dataset_id).iterate_episodes())


# --- registry ----------------------------------------------------------------------------------------------


def test_registry_maps_every_d4rl_family():
    expected = {
        "antmaze-umaze-v2": ("D4RL/antmaze/umaze-v1", "antmaze", "d4rl"),
        "antmaze-large-diverse-v2": ("D4RL/antmaze/large-diverse-v1", "antmaze", "d4rl"),
        "hopper-medium-v2": ("mujoco/hopper/medium-v0", "locomotion", None),
        "walker2d-expert-v2": ("mujoco/walker2d/expert-v0", "locomotion", None),
        "maze2d-umaze-v1": ("D4RL/pointmaze/umaze-v2", "pointmaze", "goal"),
        "pointmaze-large-v0": ("offtune/pointmaze/large-v0", "pointmaze", "goal"),
        "relocate-cloned-v1": ("D4RL/relocate/cloned-v2", "adroit", None),
        "kitchen-mixed-v0": ("D4RL/kitchen/mixed-v2", "kitchen", None),
    }
    for name, (minari_id, family, task_mode) in expected.items():
        entry = resolve(name)
        assert (entry.minari_id, entry.family, entry.task_mode) == (minari_id, family, task_mode)
    antmaze = [name for name in datasets.REGISTRY if name.startswith("antmaze-")]
    assert len(antmaze) == 6
    for env in ("hopper", "halfcheetah", "walker2d"):
        for level in ("medium", "expert", "medium-replay", "medium-expert"):
            assert f"{env}-{level}-v2" in datasets.REGISTRY
    for task in ("pen", "door", "hammer", "relocate"):
        for level in ("human", "cloned", "expert"):
            assert resolve(f"{task}-{level}-v1").minari_id == f"D4RL/{task}/{level}-v2"


def test_resolve_short_names_and_minari_ids():
    assert resolve("pointmaze-umaze").minari_id == "offtune/pointmaze/umaze-v0"
    assert resolve("antmaze-medium-play").name == "antmaze-medium-play-v2"
    assert resolve("D4RL/antmaze/umaze-v1").name == "antmaze-umaze-v2"
    other_version = resolve("D4RL/antmaze/umaze-v2")  # same dataset, another Minari version
    assert (other_version.minari_id, other_version.task_mode) == ("D4RL/antmaze/umaze-v2", "d4rl")
    unknown = resolve("someone/antmaze/custom-v3")
    assert (unknown.family, unknown.task_mode) == ("antmaze", None)


def test_misspelt_name_suggests_closest():
    with pytest.raises(OfftuneError, match="Did you mean: antmaze-umaze-v2"):
        resolve("antmaze-umaz-v2")


def test_score_rules():
    hopper = resolve("hopper-medium-v2").score_rule
    assert (hopper.ref_min, hopper.ref_max) == (-20.272305, 3234.3)
    assert hopper.score(3234.3) == pytest.approx(100.0) and hopper.score(-20.272305) == pytest.approx(0.0)
    cheetah, walker = resolve("halfcheetah-expert-v2").score_rule, resolve("walker2d-medium-v2").score_rule
    assert (cheetah.ref_min, cheetah.ref_max) == (-280.178953, 12135.0)
    assert (walker.ref_min, walker.ref_max) == (1.629008, 4592.3)
    assert resolve("kitchen-complete-v0").score_rule.score(2.0) == pytest.approx(50.0)
    assert resolve("antmaze-umaze-v2").score_rule.score(np.array([1.0, 0.0])).tolist() == [100.0, 0.0]
    minari_refs = {"ref_min_score": 1.0, "ref_max_score": 3.0}
    assert datasets._score_rule(resolve("x/y/z-v0"), minari_refs).score(2.0) == 50
    assert datasets._score_rule(resolve("x/y/z-v0"), {}).kind == "raw"


# --- observations ------------------------------------------------------------------------------------------


def test_flatten_observation_single_batch_nested():
    single = {"observation": np.arange(3.0), "achieved_goal": np.array([7.0, 8]), "x": {"z": np.array([9.0])}}
    flat = flatten_observation(single, ["achieved_goal", "observation", "x/z"])
    assert flat.dtype == np.float32 and flat.tolist() == [7, 8, 0, 1, 2, 9]
    batch = {"observation": np.ones((4, 3)), "desired_goal": np.zeros((4, 2))}
    assert flatten_observation(batch, ["observation", "desired_goal"]).shape == (4, 5)
    assert flatten_observation(np.ones((2, 11), np.float64), []).dtype == np.float32


# --- AntMaze -----------------------------------------------------------------------------------------------


def test_antmaze_d4rl_goal_positions(antmaze_umaze_dataset, monkeypatch, tmp_path):
    """D4RL's goal: umaze top-left of the collection maze; medium/large the eval map's g cell, which lies
    (20, 20) and (32, 24) from the start as in D4RL (rows grow toward -y here)."""
    assert load(antmaze_umaze_dataset).info.goal == [-4.0, 4.0]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    for maze, goal in (("medium", [10.0, -10.0]), ("large", [14.0, -12.0])):
        collect.write_antmaze_like(f"D4RL/antmaze/{maze}-play-v1", maze, episodes=1, steps=3)
        info = load(f"antmaze-{maze}-play-v2").info
        assert info.goal == goal
        assert info.max_episode_steps == 1000
        assert json.loads(info.eval_env_spec)["kwargs"]["maze_map"] == collect.ANTMAZE_EVAL_MAPS[maze]


def test_antmaze_umaze_d4rl_uses_the_collection_maze(antmaze_umaze_dataset):
    info = load(antmaze_umaze_dataset).info
    live = EnvSpec.from_json(info.eval_env_spec)
    assert live.id == "AntMaze_UMaze-v4" and live.max_episode_steps == 700
    assert live.kwargs["maze_map"] == ANTMAZE_UMAZE_MAP  # not Minari's mirrored eval map (#304)
    assert (info.task_mode, info.success_radius) == ("d4rl", 0.5)
    assert info.obs_keys == ["achieved_goal", "observation"]


def test_antmaze_d4rl_relabels_rewards_and_terminals(antmaze_umaze_dataset):
    data = load(antmaze_umaze_dataset)
    episodes = _raw_episodes(antmaze_umaze_dataset)
    raw_obs = np.concatenate([e.observations["achieved_goal"][:-1] for e in episodes])
    next_xy = np.concatenate([e.observations["achieved_goal"][1:] for e in episodes])
    assert data.observations.shape == (240, 29) and data.info.obs_dim == 29
    np.testing.assert_allclose(data.observations[:, :2], raw_obs, rtol=1e-6)
    np.testing.assert_allclose(data.next_observations[:, :2], next_xy, rtol=1e-6)
    expected = (np.linalg.norm(next_xy - np.array([-4.0, 4.0]), axis=1) <= 0.5).astype(np.float32)
    np.testing.assert_array_equal(data.rewards, expected)
    assert expected.sum() > 0 and expected.sum() < len(expected)
    np.testing.assert_array_equal(data.terminals, expected)
    assert data.episode_ends.sum() == 6
    # every episode ended in a time-limit style truncation; only goal transitions are terminal
    ends = np.flatnonzero(data.episode_ends)
    assert all(data.terminals[end] == data.rewards[end] for end in ends)
    assert data.info.score_rule.kind == "success"


def test_antmaze_goal_mode_keeps_minari_rewards(antmaze_umaze_dataset):
    data = load(antmaze_umaze_dataset, task_mode="goal")
    episodes = _raw_episodes(antmaze_umaze_dataset)
    rewards = np.concatenate([e.rewards for e in episodes])
    desired = np.concatenate([e.observations["desired_goal"][:-1] for e in episodes])
    assert data.observations.shape == (240, 31)
    np.testing.assert_allclose(data.observations[:, -2:], desired, rtol=1e-6)
    np.testing.assert_array_equal(data.rewards, rewards)
    assert rewards.sum() > 0
    np.testing.assert_array_equal(data.terminals, rewards == 1)
    assert data.info.goal is None and data.info.success_radius == 0.45
    eval_map = json.loads(data.info.eval_env_spec)["kwargs"]["maze_map"]
    assert eval_map == collect.ANTMAZE_EVAL_MAPS["umaze"]


def test_unknown_task_mode_and_task_mode_on_locomotion(antmaze_umaze_dataset, hopper_dataset):
    with pytest.raises(OfftuneError, match="d4rl or goal"):
        load(antmaze_umaze_dataset, task_mode="dense")
    with pytest.raises(OfftuneError, match="no task modes"):
        load(hopper_dataset, task_mode="goal")


# --- PointMaze ---------------------------------------------------------------------------------------------


def test_pointmaze_goal_mode(pointmaze_dataset):
    data = load("pointmaze-umaze")
    assert data.info.minari_id == pointmaze_dataset
    assert (data.info.task_mode, data.info.obs_dim) == ("goal", 6)
    assert data.info.obs_keys == ["observation", "desired_goal"]
    assert len(data) == 5_000 and data.info.max_episode_steps == 300
    np.testing.assert_array_equal(data.terminals, data.rewards == 1)
    ends = np.flatnonzero(data.episode_ends)
    # each episode is one goal reach: reward 1 exactly on its last transition (the last one is cut short)
    assert data.rewards[ends[:-1]].min() == 1.0 and data.rewards.sum() == len(ends) - 1
    assert data.episode_returns().tolist() == [1.0] * (len(ends) - 1) + [0.0]


def test_pointmaze_eval_goals(pointmaze_dataset, monkeypatch, tmp_path):
    assert load(pointmaze_dataset, task_mode="d4rl").info.goal == [-1.0, 1.0]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    for maze, goal in (("medium", [2.5, -2.5]), ("large", [3.5, -3.0])):
        collect.collect_pointmaze(maze, steps=20)
        data = load(f"pointmaze-{maze}", task_mode="d4rl")
        assert data.info.goal == goal and data.info.obs_dim == 4


def test_pointmaze_d4rl_mode_relabels_to_the_eval_goal(pointmaze_dataset):
    data = load(pointmaze_dataset, task_mode="d4rl")
    next_xy = np.concatenate([e.observations["achieved_goal"][1:] for e in _raw_episodes(pointmaze_dataset)])
    expected = np.linalg.norm(next_xy - np.array([-1.0, 1.0]), axis=1) <= 0.5
    np.testing.assert_array_equal(data.rewards, expected)
    np.testing.assert_array_equal(data.terminals, expected)


# --- locomotion and errors ---------------------------------------------------------------------------------


def test_locomotion_terminals_are_terminations_only(hopper_dataset):
    data = load("hopper-medium-v2")
    episodes = _raw_episodes(hopper_dataset)
    terminations = np.concatenate([e.terminations for e in episodes])
    truncations = np.concatenate([e.truncations for e in episodes])
    assert data.observations.shape == (2_000, 11) and data.actions.shape == (2_000, 3)
    np.testing.assert_array_equal(data.terminals, terminations)
    assert truncations.any() and not data.terminals[truncations].any()
    assert data.info.obs_keys == [] and data.info.score_rule.source.startswith("D4RL hopper")
    assert data.info.action_low == [-1.0] * 3 and data.info.max_episode_steps == 1000
    assert data.observations.dtype == np.float32 and data.terminals.dtype == np.float32


def test_missing_dataset_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(OfftuneError, match="offtune dataset download walker2d-expert-v2"):
        load("walker2d-expert-v2")
    with pytest.raises(OfftuneError, match="offtune dataset collect pointmaze-medium"):
        load("pointmaze-medium")
    with pytest.raises(OfftuneError, match="no Minari port.*hopper-medium-v2"):
        load("hopper-medium-replay-v2")
    with pytest.raises(OfftuneError, match="missing from .*nearest substitute halfcheetah-expert-v2"):
        load("halfcheetah-medium-expert-v2")


HAS_HF = importlib.util.find_spec("huggingface_hub") is not None


@pytest.mark.skipif(HAS_HF, reason="Minari's download extra is installed")
def test_download_without_the_hf_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with pytest.raises(OfftuneError, match=r"pip install offtune\[hf\]"):
        load("walker2d-expert-v2", download=True)


def test_medium_expert_is_combined_locally(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    collect.collect_policy("Hopper-v5", steps=300, seed=1, dataset_id="mujoco/hopper/medium-v0")
    collect.collect_policy("Hopper-v5", steps=200, seed=2, dataset_id="mujoco/hopper/expert-v0")
    data = load("hopper-medium-expert-v2")
    assert data.info.minari_id == "offtune/hopper/medium-expert-v0" and len(data) == 500
    assert data.info.score_rule == resolve("hopper-medium-v2").score_rule
    assert len(load("hopper-medium-expert-v2")) == 500  # the second load finds the combined dataset


def test_dataset_info_round_trips_through_json(antmaze_umaze_dataset):
    data = load(antmaze_umaze_dataset)
    restored = DatasetInfo.from_dict(json.loads(json.dumps(data.info.to_dict())))
    assert restored == data.info
    summary = datasets.describe(data)
    assert summary["steps"] == 240 and summary["episodes"] == 6 and summary["obs_dim"] == 29
    assert summary["score_rule"] == "success rate x 100"


def test_eval_env_spec_of_a_gymnasium_0_29_dataset_is_cleaned_as_minari_does():
    """Specs recorded under gymnasium 0.29 carry fields 1.x's EnvSpec lacks, in any position."""
    import gymnasium as gym

    spec = gym.spec("Pendulum-v1")
    legacy = json.loads(spec.to_json())
    legacy = {"autoreset": False, **legacy, "apply_api_compatibility": False}
    recorded = datasets.recorded_env_spec(json.dumps(legacy))
    assert recorded.to_json() == spec.to_json()
    assert gym.make(recorded).spec.id == "Pendulum-v1"


def test_collected_locomotion_data_is_scored_with_d4rl_reference_returns():
    """A hopper dataset written here under any id is scored like hopper-medium-v2: D4RL's references."""
    metadata = {"env_spec": json.dumps({"id": "Hopper-v5"})}
    rule = datasets._score_rule(resolve("me/hopper/sac-v0"), metadata)
    assert (rule.kind, rule.ref_min, rule.ref_max) == ("normalized", -20.272305, 3234.3)
    assert datasets._score_rule(resolve("me/hopper/sac-v0"), {"env_spec": json.dumps({"id": "Ant-v5"})}).kind == "raw"

"""``offtune.load_policy``: raw observation in, env action out, the same steps evaluation takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import offtune
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import Normalizer, RewardTransform
from offtune.errors import OfftuneError
from offtune.policies.checkpoint import save_checkpoint
from offtune.policies.config import config_to_dict
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.policy import scale_actions

LOW, HIGH = [-2.0, 0.0], [2.0, 1.0]


def _checkpoint(path, obs_keys: list[str], obs_dim: int) -> tuple[IQLAgent, Normalizer]:
    torch.manual_seed(0)
    config = IQLConfig(hidden_dims=(8, 8))
    agent = IQLAgent(obs_dim, 2, config)
    normalizer = Normalizer(np.linspace(-1, 1, obs_dim).astype(np.float32),
                            np.linspace(0.5, 2, obs_dim).astype(np.float32), 1e-3)
    info = DatasetInfo("toy", "toy/toy-v0", "pointmaze", "goal", obs_keys, obs_dim, 2, LOW, HIGH, "{}", "{}")
    save_checkpoint(path, {"algo": "iql", "config": config_to_dict(config), "dataset": info.to_dict(),
                           "normalizer": normalizer.to_dict(), "reward_transform": RewardTransform().to_dict(),
                           "agent": agent.state_dict(), "step": 7})
    return agent, normalizer


def _expected(agent: IQLAgent, normalizer: Normalizer, flat: np.ndarray) -> np.ndarray:
    """By hand: normalise, tanh-mean actor, map [-1, 1] onto [low, high]."""
    normalized = (flat - normalizer.mean) / (normalizer.std + normalizer.eps)
    with torch.no_grad():
        mean = agent.actor.mean_net(torch.as_tensor(normalized, dtype=torch.float32)).numpy()
    return np.asarray(LOW) + (mean + 1.0) * 0.5 * (np.asarray(HIGH) - np.asarray(LOW))


def test_dict_observations_are_flattened_in_checkpoint_order(tmp_path):
    agent, normalizer = _checkpoint(tmp_path / "ckpt.pt", ["observation", "desired_goal"], 6)
    policy = offtune.load_policy(tmp_path / "ckpt.pt")
    rng = np.random.default_rng(0)
    batch = {"achieved_goal": rng.normal(size=(5, 2)), "desired_goal": rng.normal(size=(5, 2)),
             "observation": rng.normal(size=(5, 4))}
    flat = np.concatenate([batch["observation"], batch["desired_goal"]], axis=1)
    actions = policy(batch)
    assert actions.shape == (5, 2) and actions.dtype == np.float32
    np.testing.assert_allclose(actions, _expected(agent, normalizer, flat), atol=1e-6)
    single = policy({key: value[3] for key, value in batch.items()})
    assert single.shape == (2,)
    np.testing.assert_allclose(single, actions[3], atol=1e-6)
    assert np.all(actions >= LOW) and np.all(actions <= HIGH)


def test_array_observations_one_or_a_batch(tmp_path):
    agent, normalizer = _checkpoint(tmp_path / "ckpt.pt", [], 3)
    policy = offtune.load_policy(tmp_path / "ckpt.pt")
    batch = np.array([[0.1, -0.2, 0.3], [1.0, 2.0, -3.0]])
    np.testing.assert_allclose(policy(batch), _expected(agent, normalizer, batch), atol=1e-6)
    np.testing.assert_allclose(policy(batch[1]), policy(batch)[1], atol=1e-6)
    assert "step 7" in repr(policy)


def test_wrong_observations_are_user_errors(tmp_path):
    _checkpoint(tmp_path / "dict.pt", ["observation", "desired_goal"], 6)
    _checkpoint(tmp_path / "flat.pt", [], 3)
    dict_policy, flat_policy = offtune.load_policy(tmp_path / "dict.pt"), offtune.load_policy(tmp_path / "flat.pt")
    with pytest.raises(OfftuneError, match="dict observations"):
        dict_policy(np.zeros(6))
    with pytest.raises(OfftuneError, match="lacks key 'desired_goal'"):
        dict_policy({"observation": np.zeros(4)})
    with pytest.raises(OfftuneError, match="not a dict"):
        flat_policy({"observation": np.zeros(3)})
    with pytest.raises(OfftuneError, match="size 3"):
        flat_policy(np.zeros(4))


def test_scale_actions_clips_then_maps_onto_the_bounds():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    np.testing.assert_allclose(scale_actions(np.array([[-1.0, 1.0], [0.0, 0.0], [3.0, -3.0]]), low, high),
                               [[-2.0, 1.0], [0.0, 0.5], [2.0, 0.0]])

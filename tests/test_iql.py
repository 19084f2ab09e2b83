"""IQL: losses on tiny fixed inputs, the official update order, the actor-lr schedule, exact resume."""

from __future__ import annotations

import copy
import io
import math

import agent_checks
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch, ReplayBuffer
from offtune.policies.iql import (
    GaussianActor,
    IQLAgent,
    IQLConfig,
    advantage_weights,
    critic_target,
    expectile_loss,
)

OBS, ACT = 3, 2


def small_agent(**overrides) -> IQLAgent:
    torch.manual_seed(0)
    return IQLAgent(OBS, ACT, IQLConfig(hidden_dims=(16, 16), **overrides))


def random_batch(size: int = 8, seed: int = 1) -> Batch:
    return agent_checks.random_batch(OBS, ACT, size, seed)


def test_expectile_loss_weights_tau_above_and_one_minus_tau_below():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # 0.7·4 + 0.3·1 + 0.7·0.25 + 0.3·9 = 5.975, averaged over 4
    assert expectile_loss(diff, 0.7).item() == pytest.approx(5.975 / 4)
    assert expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * (4 + 1 + 0.25 + 9) / 4)


def test_advantage_weights_exponentiate_and_clip_at_100():
    weights = advantage_weights(torch.tensor([0.0, 0.1, 1.0, 2.0, -1.0]), beta=3.0, max_weight=100.0)
    expected = [1.0, math.exp(0.3), math.exp(3.0), 100.0, math.exp(-3.0)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)


def test_critic_target_masks_terminal_bootstrap():
    targets = critic_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), 0.9)
    assert targets.tolist() == pytest.approx([10.0, 2.0])


def test_gaussian_actor_is_unsquashed_with_clipped_state_independent_std():
    torch.manual_seed(0)
    actor = GaussianActor(OBS, ACT, (8,), dropout=0.0, log_std_min=-5.0, log_std_max=2.0)
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([5.0, -0.5]))
    observations, actions = torch.randn(4, OBS), torch.rand(4, ACT) * 2 - 1
    mean, std = actor(observations)
    assert std.tolist() == pytest.approx([math.exp(2.0), math.exp(-0.5)])
    assert torch.allclose(mean, torch.tanh(actor.mean_net[:-1](observations)))
    expected = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    assert torch.allclose(actor.log_prob(observations, actions), expected, atol=1e-6)


def test_update_follows_the_official_order():
    """V on target Q; actor with target Q and the updated V; critic target from the updated V."""
    agent = small_agent(expectile=0.8, beta=2.0)
    batch = random_batch()
    s, a, r, s2, d = batch
    before = copy.deepcopy(agent)
    metrics = agent.update(batch)

    q_hat = before.target_critic(s, a).min(0).values
    expected_value_loss = expectile_loss(q_hat - before.value(s).squeeze(-1), 0.8)
    assert metrics["value_loss"].item() == pytest.approx(expected_value_loss.item(), rel=1e-5)

    updated_v = agent.value(s).squeeze(-1)  # V moved once, then stayed fixed for the actor and critic
    weights = torch.exp(2.0 * (q_hat - updated_v)).clamp(max=100.0)
    expected_actor_loss = -(weights * before.actor.log_prob(s, a)).mean()
    assert metrics["actor_loss"].item() == pytest.approx(expected_actor_loss.item(), rel=1e-5)

    y = r + 0.99 * (1 - d) * agent.value(s2).squeeze(-1)
    q1, q2 = before.critic(s, a)
    expected_critic_loss = ((q1 - y) ** 2 + (q2 - y) ** 2).mean()
    assert metrics["critic_loss"].item() == pytest.approx(expected_critic_loss.item(), rel=1e-5)

    for target, old_target, online in zip(
        agent.target_critic.parameters(), before.target_critic.parameters(), agent.critic.parameters(), strict=True
    ):
        assert torch.allclose(target, 0.995 * old_target + 0.005 * online, atol=1e-7)


def test_cosine_actor_lr_offline_then_constant_online():
    agent = small_agent(actor_lr=1e-3)
    agent.on_offline_start(4)
    batch = random_batch()
    used = []
    for _ in range(6):
        agent.update(batch)
        used.append(agent.actor_optimizer.param_groups[0]["lr"])
    expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * min(t, 4) / 4)) for t in range(6)]
    assert used == pytest.approx(expected, abs=1e-12)
    assert used[-1] == 0.0

    agent.on_online_start()
    for _ in range(3):
        agent.update(batch)
        assert agent.actor_optimizer.param_groups[0]["lr"] == 1e-3
    assert agent.value_optimizer.param_groups[0]["lr"] == agent.critic_optimizer.param_groups[0]["lr"] == 3e-4


def test_constant_actor_lr_when_cosine_is_off():
    agent = small_agent(cosine_actor_lr=False)
    agent.on_offline_start(4)
    for _ in range(3):
        agent.update(random_batch())
    assert agent.actor_optimizer.param_groups[0]["lr"] == 3e-4


def test_act_explore_and_exported_actor():
    agent = small_agent(actor_dropout=0.1)
    observations = torch.randn(64, OBS)
    deterministic = agent.act(observations)
    assert torch.equal(deterministic, agent.act(observations))  # dropout is off when acting
    exported = agent.actor_module()
    assert [type(m) for m in exported] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Tanh]
    assert torch.allclose(exported(observations), deterministic)
    explored = agent.explore(observations)
    assert explored.shape == (64, ACT) and explored.abs().max() <= 1.0
    assert not torch.equal(explored, deterministic)
    assert agent.actor.training  # acting restores the training mode


def test_state_dict_round_trip_resumes_bit_exactly():
    agent = small_agent(actor_dropout=0.1)
    agent.on_offline_start(10)
    batches = [random_batch(seed=k) for k in range(8)]
    for batch in batches[:4]:
        agent.update(batch)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    torch.manual_seed(123)
    resumed = IQLAgent(OBS, ACT, IQLConfig(hidden_dims=(16, 16), actor_dropout=0.1))
    resumed.load_state_dict(state)
    for step, batch in enumerate(batches[4:]):
        torch.manual_seed(step)
        expected = agent.update(batch)
        torch.manual_seed(step)
        got = resumed.update(batch)
        assert all(torch.equal(expected[k], got[k]) for k in expected)
    agent_checks.assert_same(agent.state_dict(), resumed.state_dict())


def test_short_run_lowers_critic_loss():
    buffer = ReplayBuffer(OBS, ACT, agent_checks.learnable_data(OBS, ACT), seed=0)
    agent = IQLAgent(OBS, ACT, IQLConfig(hidden_dims=(32, 32), discount=0.9))
    agent.on_offline_start(200)
    losses = torch.stack([agent.update(buffer.sample(64))["critic_loss"] for _ in range(200)])
    assert losses[-25:].mean() < 0.5 * losses[:25].mean()

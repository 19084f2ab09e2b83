"""IQL: losses on tiny fixed inputs, the official update order, the actor-lr schedule, exact resume."""

from __future__ import annotations

import copy
import io
import math

import agent_checks
import fixed_nets
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
    policy_log_prob,
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


# A batch of three transitions and networks set by hand (``fixed_nets``): every quantity below is an affine
# map of s and a, so the expected losses are written from these numbers alone. The target critics differ
# from the online ones, so a loss that reads the wrong one gets a different value.
S, A, R = [0.5, -1.0, 1.5], [0.2, -0.6, 0.9], [1.0, -0.5, 2.0]
S2, D = [1.0, 0.0, -0.5], [0.0, 1.0, 0.0]


def online_q(s: float, a: float) -> tuple[float, float]:
    return s + a, 0.5 * s - a


def target_q(s: float, a: float) -> tuple[float, float]:
    return s + a + 0.5, 0.5 * s - a + 1.0


def fixed_agent(**overrides) -> IQLAgent:
    """obs 1, action 1: Q = online_q, Q̄ = target_q, V(s) = 0.5 s + 0.2, π(a|s) = N(tanh(0.5 s - 0.1), e^-1)."""
    agent = IQLAgent(1, 1, IQLConfig(hidden_dims=(2, 2), **overrides))
    fixed_nets.affine_(agent.critic, [[[1.0, 1.0]], [[0.5, -1.0]]], [[0.0], [0.0]])
    fixed_nets.affine_(agent.target_critic, [[[1.0, 1.0]], [[0.5, -1.0]]], [[0.5], [1.0]])
    fixed_nets.affine_(agent.value, [[[0.5]]], [[0.2]])
    fixed_nets.affine_(agent.actor.mean_net, [[[0.5]]], [[-0.1]])
    with torch.no_grad():
        agent.actor.log_std.fill_(-0.5)
    return agent


def fixed_batch() -> Batch:
    column = lambda values: torch.tensor(values).unsqueeze(-1)  # noqa: E731
    return Batch(column(S), column(A), torch.tensor(R), column(S2), torch.tensor(D))


def gaussian_log_density(x: float, mean: float, std: float) -> float:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def test_gaussian_actor_is_unsquashed_with_clipped_state_independent_std():
    agent = fixed_agent()
    observations = torch.tensor([[0.5], [-1.0]])
    mean, std = agent.actor(observations)
    assert mean.squeeze(-1).tolist() == pytest.approx([math.tanh(0.15), math.tanh(-0.6)], rel=1e-5)
    assert std.tolist() == pytest.approx([math.exp(-0.5)])
    # An action beyond tanh's range keeps a finite density: the Gaussian is not squashed (no Jacobian).
    log_prob = policy_log_prob(*agent.actor(observations), torch.tensor([[0.2], [-1.5]]))
    expected = [gaussian_log_density(0.2, math.tanh(0.15), math.exp(-0.5)),
                gaussian_log_density(-1.5, math.tanh(-0.6), math.exp(-0.5))]
    assert log_prob.tolist() == pytest.approx(expected, rel=1e-5)
    assert agent.act(observations).squeeze(-1).tolist() == pytest.approx([math.tanh(0.15), math.tanh(-0.6)], rel=1e-5)

    wide = GaussianActor(1, 2, (4,), dropout=0.0, log_std_min=-5.0, log_std_max=2.0)
    with torch.no_grad():
        wide.log_std.copy_(torch.tensor([5.0, -7.0]))
    assert wide(observations)[1].tolist() == pytest.approx([math.exp(2.0), math.exp(-5.0)])


def test_update_by_hand_follows_the_official_order():
    """V on the target Q̄; actor with Q̄ and the updated V; critic target from the updated V(s')."""
    agent = fixed_agent(expectile=0.8, beta=2.0, value_lr=0.1, cosine_actor_lr=False)
    before = copy.deepcopy(agent)
    metrics = agent.update(fixed_batch())

    # 1. q̂ = min Q̄(s, a) = [min(1.2, 1.05), min(-1.1, 1.1), min(2.9, 0.85)]; V(s) = [0.45, -0.3, 0.95];
    #    q̂ - V = [0.6, -0.8, -0.1] weighted 0.8 above V and 0.2 below.
    q_hat = [min(target_q(s, a)) for s, a in zip(S, A, strict=True)]
    assert q_hat == pytest.approx([1.05, -1.1, 0.85])
    assert metrics["value_loss"].item() == pytest.approx((0.8 * 0.36 + 0.2 * 0.64 + 0.2 * 0.01) / 3, rel=1e-5)

    # V took exactly one Adam step on that loss.
    value = copy.deepcopy(before.value)
    optimizer = torch.optim.Adam(value.parameters(), lr=0.1)
    observations = fixed_batch().observations
    expectile_loss(torch.tensor(q_hat) - value(observations).squeeze(-1), 0.8).backward()
    optimizer.step()
    for stepped, updated in zip(value.parameters(), agent.value.parameters(), strict=True):
        torch.testing.assert_close(stepped, updated, rtol=0, atol=1e-6)
    new_v = agent.value(observations).squeeze(-1).tolist()
    new_v_next = agent.value(torch.tensor(S2).unsqueeze(-1)).squeeze(-1).tolist()
    assert max(abs(v - (0.5 * s + 0.2)) for v, s in zip(new_v, S, strict=True)) > 0.1  # V really moved

    # 2. w = min(exp(β (q̂ - V'(s))), 100); L_π = -mean(w · log N(a; tanh(0.5 s - 0.1), e^-0.5)).
    weights = [min(math.exp(2.0 * (q - v)), 100.0) for q, v in zip(q_hat, new_v, strict=True)]
    log_probs = [gaussian_log_density(a, math.tanh(0.5 * s - 0.1), math.exp(-0.5)) for s, a in zip(S, A, strict=True)]
    expected_actor = -sum(w * lp for w, lp in zip(weights, log_probs, strict=True)) / 3
    assert metrics["actor_loss"].item() == pytest.approx(expected_actor, rel=1e-5)

    # 3. y = r + 0.99 (1 - d) V'(s'); Q = online_q(s, a) = [(0.7, 0.05), (-1.6, 0.1), (2.4, -0.15)].
    targets = [r + 0.99 * (1 - d) * v for r, d, v in zip(R, D, new_v_next, strict=True)]
    expected_critic = sum(
        (q1 - y) ** 2 + (q2 - y) ** 2 for (q1, q2), y in zip(map(online_q, S, A), targets, strict=True)
    ) / 3
    assert metrics["critic_loss"].item() == pytest.approx(expected_critic, rel=1e-5)

    # 4. Q̄ ← 0.005 Q + 0.995 Q̄ with the stepped critic.
    for target, old_target, online in zip(
        agent.target_critic.parameters(), before.target_critic.parameters(), agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(target, 0.995 * old_target + 0.005 * online, rtol=0, atol=1e-6)
    assert not all(
        torch.equal(new, old) for new, old in zip(agent.critic.parameters(), before.critic.parameters(), strict=True)
    )


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

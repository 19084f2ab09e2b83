"""SPOT's update on a three-transition batch with networks set by hand, against losses written from their
affine maps: the TD3 target from the target actor and target critics (which differ from the online ones),
the Q-normalised actor loss with λ·neg_log_beta, the actor's gradient and both Polyak updates."""

from __future__ import annotations

import copy
import math

import fixed_nets
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.policies.spot import SPOTAgent, SPOTConfig

S, A, R = [0.5, -1.0, 1.5], [0.2, -0.6, 0.9], [1.0, -0.5, 2.0]
S2, D = [1.0, 0.0, -0.5], [0.0, 1.0, 0.0]
NOISE = 3.0
"""Every ``randn_like`` draw: target-policy noise 0.2 · 3 = 0.6, clipped to 0.5."""
LAM, BETA = 0.3, 0.5
LATENT_MEAN, LATENT_LOG_STD, DECODED = 0.5, -1.0, 0.5
KL = -0.5 * (1 + 2 * LATENT_LOG_STD - LATENT_MEAN**2 - math.exp(2 * LATENT_LOG_STD))
"""KL(N(0.5, e^-2) ‖ N(0, 1)) of each latent dimension."""


def q_online(s: float, a: float) -> tuple[float, float]:
    return 0.8 * s + 1.2 * a - 0.1, -0.5 * s + 0.7 * a + 0.2


def q_target(s: float, a: float) -> tuple[float, float]:
    q1, q2 = q_online(s, a)
    return q1 + 0.3, q2 - 0.4


def actor(s: float) -> float:
    return math.tanh(0.6 * s - 0.2)


def target_actor(s: float) -> float:
    return math.tanh(-0.4 * s + 0.3)


def fixed_agent() -> SPOTAgent:
    """critic_lr 0 keeps Q fixed for the actor step; the VAE always encodes to (0.5, e^-1) and decodes 0.5."""
    config = SPOTConfig(hidden_dims=(2, 2), vae_hidden_dim=4, vae_steps=0, batch_size=3, policy_freq=1,
                        actor_dropout=0.0, lam=LAM, vae_kl_weight=BETA, critic_lr=0.0)
    agent = SPOTAgent(1, 1, config)
    fixed_nets.affine_(agent.actor, [[[0.6]]], [[-0.2]])
    fixed_nets.affine_(agent.target_actor, [[[-0.4]]], [[0.3]])
    fixed_nets.affine_(agent.critic, [[[0.8, 1.2]], [[-0.5, 0.7]]], [[-0.1], [0.2]])
    fixed_nets.affine_(agent.target_critic, [[[0.8, 1.2]], [[-0.5, 0.7]]], [[0.2], [-0.2]])
    encoder_head, decoder_head = fixed_nets.linears(agent.vae.encoder)[-1], fixed_nets.linears(agent.vae.decoder)[-1]
    with torch.no_grad():
        encoder_head.weight.zero_()
        encoder_head.bias.copy_(torch.tensor([LATENT_MEAN] * 2 + [LATENT_LOG_STD] * 2))
        decoder_head.weight.zero_()
        decoder_head.bias.fill_(math.atanh(DECODED))
    agent.prepare(lambda size: None, lambda step, metrics: None)
    return agent


def fixed_batch() -> Batch:
    column = lambda values: torch.tensor(values).unsqueeze(-1)  # noqa: E731
    return Batch(column(S), column(A), torch.tensor(R), column(S2), torch.tensor(D))


@pytest.fixture
def updated(monkeypatch: pytest.MonkeyPatch) -> tuple[SPOTAgent, SPOTAgent, dict[str, torch.Tensor]]:
    """(agent before, agent after, metrics) of one update with fixed noise."""
    agent = fixed_agent()
    before = copy.deepcopy(agent)
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.full_like(t, NOISE))
    monkeypatch.setattr(torch, "randn", lambda *shape, **kwargs: torch.zeros(*shape))
    return before, agent, agent.update(fixed_batch())


def test_critic_target_from_the_smoothed_target_actor_and_target_critics(updated):
    _, _, metrics = updated
    # a' = clip(π̄(s') + clip(0.6, ±0.5), ±1); y = r + 0.99 (1 - d) min Q̄(s', a').
    next_actions = [min(target_actor(s2) + 0.5, 1.0) for s2 in S2]
    targets = [r + 0.99 * (1 - d) * min(q_target(s2, a2))
               for r, d, s2, a2 in zip(R, D, S2, next_actions, strict=True)]
    expected = sum(
        ((q_online(s, a)[i] - y) ** 2 for s, a, y in zip(S, A, targets, strict=True) for i in range(2))
    ) / 3
    assert metrics["critic_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_actor_loss_is_normalised_q_plus_lambda_neg_log_beta(updated):
    _, _, metrics = updated
    actions = [actor(s) for s in S]
    q_pi = [q_online(s, a)[0] for s, a in zip(S, actions, strict=True)]
    assert min(q_pi) < 0 < max(q_pi), "mixed signs, so mean |Q| differs from |mean Q|"
    neg_log_beta = [(DECODED - a) ** 2 + BETA * KL for a in actions]
    q_term = -(sum(q_pi) / 3) / (sum(map(abs, q_pi)) / 3)
    assert metrics["q_pi"].item() == pytest.approx(sum(q_pi) / 3, rel=1e-5)
    assert metrics["neg_log_beta"].item() == pytest.approx(sum(neg_log_beta) / 3, rel=1e-5)
    assert metrics["actor_loss"].item() == pytest.approx(q_term + LAM * sum(neg_log_beta) / 3, rel=1e-5)


def test_actor_gradient_has_a_detached_normaliser_and_flows_through_the_vae(updated):
    before, agent, _ = updated
    states = torch.tensor(S).unsqueeze(-1)
    pi = before.actor(states).squeeze(-1)
    q1 = 0.8 * states.squeeze(-1) + 1.2 * pi - 0.1
    loss = -q1.mean() / q1.abs().mean().detach() + LAM * ((DECODED - pi).square() + BETA * KL).mean()
    expected = torch.autograd.grad(loss, list(before.actor.parameters()))
    for got, want in zip((p.grad for p in agent.actor.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_both_targets_move_by_polyak_after_the_actor_step(updated):
    before, agent, _ = updated
    pairs: tuple[tuple[nn.Module, nn.Module, nn.Module], ...] = (
        (agent.target_critic, before.target_critic, agent.critic),
        (agent.target_actor, before.target_actor, agent.actor),
    )
    for target, old_target, online in pairs:
        for new, old, live in zip(target.parameters(), old_target.parameters(), online.parameters(), strict=True):
            torch.testing.assert_close(new, 0.995 * old + 0.005 * live, rtol=0, atol=1e-6)
    assert not all(torch.equal(new, old) for new, old in zip(agent.actor.parameters(), before.actor.parameters(),
                                                             strict=True))

"""SPOT: the VAE density estimate and the normalised actor loss by hand, TD3 timing, λ cooling, exact resume."""

from __future__ import annotations

import copy
import io
import math

import agent_checks
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch, ReplayBuffer
from offtune.policies.networks import soft_update
from offtune.policies.spot import (
    ConditionalVAE,
    SPOTAgent,
    SPOTConfig,
    normalized_actor_loss,
    target_actions,
)

OBS, ACT = 3, 2


def small_config(**overrides) -> SPOTConfig:
    return SPOTConfig(hidden_dims=(16, 16), vae_hidden_dim=16, vae_steps=20, batch_size=8, **overrides)


def small_agent(**overrides) -> SPOTAgent:
    torch.manual_seed(0)
    return SPOTAgent(OBS, ACT, small_config(**overrides))


def random_batch(size: int = 8, seed: int = 1) -> Batch:
    return agent_checks.random_batch(OBS, ACT, size, seed)


def prepared_agent(**overrides) -> SPOTAgent:
    agent = small_agent(**overrides)
    agent.prepare(lambda n: random_batch(n, seed=99), lambda step, metrics: None)
    return agent


def constant_vae(latent_mean: float, latent_log_std: float, decoded: list[float]) -> ConditionalVAE:
    """A VAE whose encoder always outputs (μ_z, log σ_z) and whose decoder always outputs ``decoded``."""
    vae = ConditionalVAE(OBS, ACT, 2 * ACT, 8)
    with torch.no_grad():
        encoder_head, decoder_head = vae.encoder[-1], vae.decoder[-2]
        encoder_head.weight.zero_()
        encoder_head.bias.copy_(torch.tensor([latent_mean] * 2 * ACT + [latent_log_std] * 2 * ACT))
        decoder_head.weight.zero_()
        decoder_head.bias.copy_(torch.atanh(torch.tensor(decoded)))
    return vae


def test_neg_log_beta_is_mean_reconstruction_plus_beta_mean_kl():
    vae = constant_vae(0.5, -1.0, [0.5, 0.0])
    observations, actions = torch.randn(1, OBS), torch.tensor([[0.2, -0.4]])
    # reconstruction: ((0.5 - 0.2)² + (0 + 0.4)²) / 2 = 0.125, whatever z is;
    # KL per latent dim: -½ (1 + 2·(-1) - 0.25 - e^{-2})
    kl = -0.5 * (1 - 2 - 0.25 - math.exp(-2))
    for samples in (1, 5):
        value = vae.neg_log_beta(observations, actions, kl_weight=0.5, samples=samples)
        assert value.tolist() == pytest.approx([0.125 + 0.5 * kl], rel=1e-5)


def test_importance_weighted_estimate_is_exact_when_the_encoder_is_the_prior():
    vae = constant_vae(0.0, 0.0, [0.5, 0.0])
    observations, actions = torch.randn(1, OBS), torch.tensor([[0.2, -0.4]])
    # q(z|s, a) = p(z), so -log π_β = -Σ_d log N(a_d; dec_d, β/4) for every L
    sigma = math.sqrt(0.5 / 4)
    log_p = sum(-0.5 * (e / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi) for e in (0.3, 0.4))
    for samples in (1, 7):
        value = vae.neg_log_beta_iwae(observations, actions, kl_weight=0.5, samples=samples)
        assert value.tolist() == pytest.approx([-log_p], rel=1e-5)


def test_vae_training_loss_mean_reduced_as_official():
    vae = constant_vae(0.5, -1.0, [0.5, 0.0])
    observations = torch.randn(2, OBS)
    actions = torch.tensor([[0.2, -0.4], [0.5, 1.0]])
    loss, reconstruction, kl = vae.loss(observations, actions, kl_weight=0.5)
    assert reconstruction.item() == pytest.approx((0.09 + 0.16 + 0.0 + 1.0) / 4)
    assert kl.item() == pytest.approx(-0.5 * (1 - 2 - 0.25 - math.exp(-2)), rel=1e-6)
    assert loss.item() == pytest.approx(reconstruction.item() + 0.5 * kl.item(), rel=1e-6)


def test_normalized_actor_loss_value_and_gradient():
    q_pi = torch.tensor([1.0, -3.0], requires_grad=True)
    neg_log_beta = torch.tensor([0.5, 1.5])
    loss = normalized_actor_loss(q_pi, neg_log_beta, lam=0.1, q_normalization=True)
    assert loss.item() == pytest.approx(1.0 / 2.0 + 0.1 * 1.0)  # -mean(Q) = 1, mean|Q| = 2
    loss.backward()
    assert q_pi.grad.tolist() == pytest.approx([-0.25, -0.25])  # the denominator is detached
    plain = normalized_actor_loss(q_pi.detach(), neg_log_beta, lam=0.1, q_normalization=False)
    assert plain.item() == pytest.approx(1.0 + 0.1)


def test_actor_step_loss_uses_updated_critic_and_frozen_vae():
    agent = prepared_agent(policy_freq=1, lam=0.3, actor_dropout=0.0)
    batch = random_batch()
    before = copy.deepcopy(agent)
    torch.manual_seed(5)
    metrics = agent.update(batch)

    torch.manual_seed(5)
    torch.randn_like(batch.actions)  # the target-policy noise drawn first in the update
    pi = before.actor(batch.observations)
    q_pi = agent.critic(batch.observations, pi)[0]  # the critic stepped before the actor
    neg_log_beta = before.vae.neg_log_beta(batch.observations, pi, 0.5, 1)
    expected = -q_pi.mean() / q_pi.abs().mean() + 0.3 * neg_log_beta.mean()
    assert metrics["actor_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(agent.vae.parameters(), before.vae.parameters(), strict=True))


def test_critic_target_uses_clipped_target_policy_noise():
    agent = prepared_agent(policy_noise=0.2, noise_clip=0.5, actor_dropout=0.0)
    batch = random_batch()
    before = copy.deepcopy(agent)
    torch.manual_seed(3)
    metrics = agent.update(batch)

    torch.manual_seed(3)
    noise = (torch.randn_like(batch.actions) * 0.2).clamp(-0.5, 0.5)
    next_actions = (before.target_actor(batch.next_observations) + noise).clamp(-1.0, 1.0)
    next_q = before.target_critic(batch.next_observations, next_actions).min(0).values
    y = batch.rewards + 0.99 * (1 - batch.dones) * next_q
    q1, q2 = before.critic(batch.observations, batch.actions)
    expected = ((q1 - y) ** 2).mean() + ((q2 - y) ** 2).mean()
    assert metrics["critic_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_target_noise_is_clipped_then_actions_are_clipped():
    torch.manual_seed(0)
    around_zero = target_actions(torch.zeros(10_000, ACT), policy_noise=100.0, noise_clip=0.5)
    assert around_zero.abs().max() == 0.5 and (around_zero.abs() == 0.5).float().mean() > 0.9
    near_edge = target_actions(torch.full((10_000, ACT), 0.9), policy_noise=100.0, noise_clip=0.5)
    assert near_edge.max() == 1.0 and near_edge.min() == pytest.approx(0.4)


def test_soft_update_value():
    target, source = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(2.0)
        for p in source.parameters():
            p.fill_(4.0)
    soft_update(target, source, 0.005)
    assert all(torch.allclose(p, torch.full_like(p, 2.01)) for p in target.parameters())


def test_actor_and_targets_move_only_every_policy_freq_steps():
    agent = prepared_agent(policy_freq=2)
    batch = random_batch()
    start = copy.deepcopy(agent)

    agent.update(batch)  # critic only
    assert not all(torch.equal(a, b) for a, b in zip(agent.critic.parameters(), start.critic.parameters(), strict=True))
    for live, old in ((agent.actor, start.actor), (agent.target_actor, start.target_actor),
                      (agent.target_critic, start.target_critic)):
        assert all(torch.equal(a, b) for a, b in zip(live.parameters(), old.parameters(), strict=True))

    agent.update(batch)  # critic, actor, then both targets
    assert not all(torch.equal(a, b) for a, b in zip(agent.actor.parameters(), start.actor.parameters(), strict=True))
    for target, old, online in ((agent.target_critic, start.target_critic, agent.critic),
                                (agent.target_actor, start.target_actor, agent.actor)):
        for t, o, p in zip(target.parameters(), old.parameters(), online.parameters(), strict=True):
            assert torch.allclose(t, 0.995 * o + 0.005 * p, atol=1e-7)


def test_lambda_cools_linearly_to_its_floor_and_online_discount_switches():
    agent = small_agent(lam=0.25, lam_end=0.2, online_discount=0.995)
    assert agent.lam == 0.25 and agent.discount == 0.99
    agent.anneal(0.7)
    agent.updates = 7
    agent.on_online_start()
    assert agent.lam == 0.25 and agent.discount == 0.995
    assert agent.updates == 0, "the actor's policy_freq cycle restarts online"
    expected = {0.0: 0.25, 0.5: 0.125, 0.8: 0.05, 0.95: 0.05, 1.0: 0.05}
    for progress, lam in expected.items():
        agent.anneal(progress)
        assert agent.lam == pytest.approx(lam)
    assert small_agent().discount == 0.99


def test_prepare_trains_then_freezes_the_vae():
    agent = small_agent()
    reports: list[tuple[int, dict]] = []
    agent.prepare(lambda n: random_batch(n, seed=99), lambda step, metrics: reports.append((step, metrics)))
    assert [step for step, _ in reports] == list(range(1, 21))
    assert {"vae_loss", "vae_reconstruction", "vae_kl"} <= reports[0][1].keys()
    assert reports[-1][1]["vae_loss"] < reports[0][1]["vae_loss"]
    assert agent.vae_optimizer is None and not any(p.requires_grad for p in agent.vae.parameters())
    assert "vae_optimizer" not in agent.state_dict()


def test_act_explore_and_exported_actor():
    agent = small_agent(actor_dropout=0.1)
    observations = torch.randn(256, OBS)
    deterministic = agent.act(observations)
    assert torch.equal(deterministic, agent.act(observations))
    exported = agent.actor_module()
    assert [type(m) for m in exported] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear, nn.Tanh]
    assert torch.allclose(exported(observations), deterministic)
    explored = agent.explore(observations)
    assert explored.abs().max() <= 1.0
    assert 0 < (explored - deterministic).abs().max() <= 1.0
    assert agent.actor.training
    assert agent.target_actor.training  # as the official code, the target actor keeps its dropout


def test_exploration_noise_is_unclipped_by_default_as_the_official_code():
    torch.manual_seed(0)
    observations = torch.randn(4096, OBS)
    unclipped = small_agent(actor_dropout=0.0, actor_head_init=1e-3, exploration_noise=0.3)
    noise = unclipped.explore(observations) - unclipped.act(observations)  # π(s) ≈ 0: no action clipping
    assert noise.std().item() == pytest.approx(0.3, rel=0.03)
    assert (noise.abs() > 0.5).float().mean().item() == pytest.approx(0.096, abs=0.01)  # P(|N(0, 0.3)| > 0.5)
    clipped = small_agent(actor_dropout=0.0, actor_head_init=1e-3, exploration_noise=0.3, exploration_noise_clip=0.5)
    assert (clipped.explore(observations) - clipped.act(observations)).abs().max().item() <= 0.5 + 1e-3


def state_round_trip(agent: SPOTAgent) -> dict:
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_dict_round_trip_resumes_bit_exactly_in_both_stages():
    agent = small_agent(lam=0.1, online_discount=0.995)
    sample = lambda n: random_batch(n, seed=99)  # noqa: E731
    agent.vae_updates = agent.config.vae_steps - 5  # interrupted inside the VAE stage
    torch.manual_seed(7)
    resumed = SPOTAgent(OBS, ACT, small_config(lam=0.1, online_discount=0.995))
    resumed.load_state_dict(state_round_trip(agent))
    for candidate in (agent, resumed):
        torch.manual_seed(0)
        candidate.prepare(sample, lambda step, metrics: None)
    agent_checks.assert_same(agent.state_dict(), resumed.state_dict())

    batches = [random_batch(seed=k) for k in range(10)]
    for batch in batches[:3]:
        agent.update(batch)
    agent.on_online_start()
    agent.anneal(0.3)
    agent.update(batches[3])  # the restarted cycle's critic-only step: the next update also trains the actor
    torch.manual_seed(11)
    resumed = SPOTAgent(OBS, ACT, small_config(lam=0.1, online_discount=0.995))
    resumed.load_state_dict(state_round_trip(agent))
    assert resumed.vae_optimizer is None and resumed.lam == agent.lam and resumed.discount == 0.995
    for step, batch in enumerate(batches[4:]):
        torch.manual_seed(step)
        expected = agent.update(batch)
        torch.manual_seed(step)
        got = resumed.update(batch)
        assert all(torch.equal(expected[k], got[k]) for k in expected)
    agent_checks.assert_same(agent.state_dict(), resumed.state_dict())


def test_short_run_lowers_critic_loss():
    buffer = ReplayBuffer(OBS, ACT, agent_checks.learnable_data(OBS, ACT), seed=0)
    agent = SPOTAgent(OBS, ACT, SPOTConfig(hidden_dims=(32, 32), vae_hidden_dim=32, vae_steps=50, discount=0.9,
                                           batch_size=64, lam=0.1))
    agent.prepare(buffer.sample, lambda step, metrics: None)
    losses = torch.stack([agent.update(buffer.sample(64))["critic_loss"] for _ in range(200)])
    assert losses[-25:].mean() < 0.5 * losses[:25].mean()

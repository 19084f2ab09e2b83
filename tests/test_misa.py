"""MISA: tanh-Gaussian log-probs, the MI bound's critic term per variant, α and Lagrange losses by hand,
gradient isolation between the networks, exact resume, and a short run that fits the TD targets."""

from __future__ import annotations

import io
import math

import agent_checks
import numpy as np
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.errors import OfftuneError
from offtune.policies.config import apply_overrides
from offtune.policies.misa import (
    MISAAgent,
    MISAConfig,
    alpha_loss,
    critic_at_states,
    lagrange_losses,
    make_critic,
    mi_penalty,
    tanh_gaussian_log_prob,
)

OBS, ACT = 4, 2
CPU = torch.device("cpu")


def small_config(**overrides) -> MISAConfig:
    """Small networks and a short HMC chain: the same code paths, fast."""
    settings = dict(hidden_dims=(32, 32), n_actions=6, hmc_burnin_steps=2, hmc_num_samples=4)
    return MISAConfig(**{**settings, **overrides})


def small_agent(seed: int = 0, **overrides) -> MISAAgent:
    torch.manual_seed(seed)
    return MISAAgent(OBS, ACT, small_config(**overrides), CPU)


def random_batch(size: int = 16, seed: int = 1) -> Batch:
    return agent_checks.random_batch(OBS, ACT, size, seed)


def saved(state: dict) -> dict:
    """Round-trip through torch.save / torch.load(weights_only=True), as a checkpoint does."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def log_sum_exp(values: np.ndarray, axis: int) -> np.ndarray:
    top = values.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(values - top).sum(axis=axis, keepdims=True))).squeeze(axis)


# ------------------------------------------------------------------------------------ log-probabilities


def test_tanh_gaussian_log_prob_matches_an_independent_formula():
    mean = np.array([[0.3, -1.2], [2.0, 0.0]])
    log_std = np.array([[-1.0, 0.5], [-4.0, 1.5]])
    pre_tanh = np.array([[0.1, -2.0], [8.0, -0.7]])
    std = np.exp(log_std)
    gaussian = -0.5 * ((pre_tanh - mean) / std) ** 2 - np.log(std * math.sqrt(2 * math.pi))
    # d tanh(u)/du = sech²(u) = 1/cosh²(u)
    expected = (gaussian + 2 * np.log(np.cosh(pre_tanh))).sum(-1)
    got = tanh_gaussian_log_prob(*(torch.tensor(x) for x in (pre_tanh, mean, log_std)))
    assert np.allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)

    # The same density written in terms of the action a = tanh(u): log N(atanh a) − log(1 − a²).
    action = np.tanh(pre_tanh[0])
    direct = (gaussian[0] - np.log(1 - action**2)).sum()
    from_action = tanh_gaussian_log_prob(torch.atanh(torch.tensor(action)), torch.tensor(mean[0]),
                                         torch.tensor(log_std[0]))
    assert math.isclose(from_action.item(), direct, rel_tol=1e-10)


# ------------------------------------------------------------------------------- MI bound, per variant

Q_SAMPLES = np.array(
    [
        [[0.5, 1.0, -0.3, 2.0], [0.0, 0.1, 0.2, 0.3], [-1.0, -2.0, 0.5, 0.0]],
        [[1.5, 0.0, 0.3, 0.2], [0.4, -0.1, 0.9, 1.3], [-0.5, 2.5, 0.1, -0.2]],
    ]
)  # (critics 2, states 3, samples 4)
Q_DATA = np.array([[0.7, -0.2, 0.4], [1.1, 0.6, -0.3]])


def penalty(variant: str, **options) -> np.ndarray:
    return mi_penalty(torch.tensor(Q_SAMPLES), torch.tensor(Q_DATA), variant, **options).numpy()


def test_misa_penalty_is_the_per_state_log_partition_shifted_by_log_batch_size():
    batch_size = Q_DATA.shape[1]
    d = log_sum_exp(Q_SAMPLES, -1) - math.log(batch_size) - Q_DATA
    assert np.allclose(penalty("misa"), d.mean(-1), rtol=1e-12)
    no_norm = log_sum_exp(Q_SAMPLES, -1) - Q_DATA
    assert np.allclose(penalty("misa", log_k_norm=False), no_norm.mean(-1), rtol=1e-12)
    # Temperature T: T·logsumexp((Q − c)/T).
    tempered = 2.0 * log_sum_exp((Q_SAMPLES - math.log(batch_size)) / 2.0, -1) - Q_DATA
    assert np.allclose(penalty("misa", temperature=2.0), tempered.mean(-1), rtol=1e-12)


def test_add_positive_puts_the_dataset_action_into_the_log_sum_exp():
    with_data = np.concatenate([Q_SAMPLES, Q_DATA[..., None]], axis=-1)
    d = log_sum_exp(with_data, -1) - math.log(3) - Q_DATA
    assert np.allclose(penalty("misa", add_positive=True), d.mean(-1), rtol=1e-12)
    d_dv = log_sum_exp(with_data, -1) - math.log(5) - Q_DATA
    assert np.allclose(penalty("dv", add_positive=True), log_sum_exp(d_dv, -1) - math.log(3), rtol=1e-12)


def test_dv_penalty_takes_the_log_partition_over_the_whole_batch():
    d = log_sum_exp(Q_SAMPLES, -1) - math.log(4) - Q_DATA
    assert np.allclose(penalty("dv"), log_sum_exp(d, -1) - math.log(3), rtol=1e-12)


def test_nwj_penalty_is_e_to_the_minus_one_times_the_mean_exponential():
    d = log_sum_exp(Q_SAMPLES, -1) - math.log(4) - Q_DATA
    assert np.allclose(penalty("nwj"), np.exp(d - 1).mean(-1), rtol=1e-12)
    # For a fixed critic the bounds are ordered NWJ ≤ DV (Jensen): the NWJ penalty is the larger one.
    assert np.all(penalty("nwj") >= penalty("dv") - 1e-12)


def test_ba_has_no_critic_term():
    assert np.array_equal(penalty("ba"), np.zeros(2))


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(OfftuneError, match="misa, dv, nwj, ba"):
        MISAConfig(variant="infonce")
    with pytest.raises(OfftuneError, match="Did you mean: dv"):
        apply_overrides(MISAConfig(), {"variant": "dvv"})
    with pytest.raises(OfftuneError, match="valid: misa, dv, nwj, ba"):
        mi_penalty(torch.zeros(2, 3, 4), torch.zeros(2, 3), "mine")


# ---------------------------------------------------------------------------------- α and Lagrange α′


def test_alpha_loss_value_and_gradient():
    log_alpha = torch.tensor(0.3, requires_grad=True)
    log_pi = torch.tensor([-1.0, -2.0, 0.5], requires_grad=True)
    loss = alpha_loss(log_alpha, log_pi, target_entropy=-2.0)
    # −0.3 · mean(log π − 2) = −0.3 · (−8.5 / 3)
    assert math.isclose(loss.item(), 0.85, rel_tol=1e-6)
    loss.backward()
    assert math.isclose(log_alpha.grad.item(), 8.5 / 3, rel_tol=1e-6)
    assert log_pi.grad is None


def test_lagrange_losses_value_and_gradients():
    log_alpha_prime = torch.tensor(1.0, requires_grad=True)
    penalty_values = torch.tensor([4.0, 2.5], requires_grad=True)
    critic_penalty, multiplier_loss = lagrange_losses(log_alpha_prime, penalty_values, 5.0, 3.0)
    e = math.e
    assert torch.allclose(critic_penalty, torch.tensor([5 * e, -2.5 * e]))
    # −½ Σ α′·γ₁·(Pᵢ − g) = −½ · e · 5 · (1 − 0.5)
    assert math.isclose(multiplier_loss.item(), -1.25 * e, rel_tol=1e-6)
    (critic_grad,) = torch.autograd.grad(critic_penalty.sum(), penalty_values, retain_graph=True)
    assert torch.allclose(critic_grad, torch.full((2,), 5 * e))
    (multiplier_grad,) = torch.autograd.grad(multiplier_loss, log_alpha_prime)
    # dα′/dlog α′ = α′, so the gradient equals the loss; negative: gradient descent raises α′ while the
    # mean penalty (3.25) exceeds the gap (3).
    assert math.isclose(multiplier_grad.item(), -1.25 * e, rel_tol=1e-6)
    clipped, _ = lagrange_losses(torch.tensor(20.0), torch.tensor([4.0]), 1.0, 3.0)
    assert clipped.item() == 1e6


@pytest.mark.parametrize("gap, direction", [(100.0, -1.0), (-100.0, 1.0)])
def test_lagrange_multiplier_moves_by_one_adam_step_towards_the_gap(gap, direction):
    agent = small_agent(use_lagrange=True, target_action_gap=gap, unbiased_grad=False)
    metrics = agent.update(random_batch())
    # Adam's first step moves a scalar by lr·g/(|g| + ε) ≈ lr against the gradient's sign.
    assert math.isclose(agent.log_alpha_prime.item(), 1.0 + direction * agent.config.critic_lr, rel_tol=1e-6)
    assert math.isclose(metrics["alpha_prime"].item(), math.e, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------- networks


def test_critic_at_states_equals_the_plain_critic_forward():
    torch.manual_seed(0)
    for layer_norm in (False, True):
        critic = make_critic(OBS, ACT, small_config(layer_norm=layer_norm))
        observations, actions = torch.randn(5, OBS), torch.rand(5, 7, ACT) * 2 - 1
        q_at = critic_at_states(critic, observations)
        assert torch.allclose(q_at(actions[:, 0]), critic(observations, actions[:, 0]), atol=1e-6)
        repeated = observations.unsqueeze(1).expand(-1, 7, -1).reshape(35, OBS)
        expected = critic(repeated, actions.reshape(35, ACT)).view(2, 5, 7)
        assert torch.allclose(q_at(actions), expected, atol=1e-6)


def test_policy_layout_initial_spread_and_deterministic_actor():
    agent = small_agent()
    policy = agent.actor_module()
    assert [type(m) for m in policy.trunk] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert isinstance(policy.mean_head, nn.Linear) and policy.mean_head.out_features == ACT
    observations = torch.randn(9, OBS)
    mean, log_std = policy.distribution(observations)
    # Official init: small output layer, so log σ starts near m·0 + b = −1.
    assert torch.allclose(log_std, torch.full_like(log_std, -1.0), atol=0.1)
    expected = torch.tanh(policy.mean_head(policy.trunk(observations)).clamp(-9, 9))
    assert torch.equal(agent.act(observations), expected)
    assert torch.equal(policy(observations), expected)
    sampled = agent.explore(observations)
    assert sampled.shape == (9, ACT) and not torch.equal(sampled, expected) and sampled.abs().max() <= 1


# ------------------------------------------------------------------------------------------ update


def grads_after_update(agent: MISAAgent, batch: Batch, seed: int) -> tuple[list, list]:
    torch.manual_seed(seed)
    agent.update(batch)
    policy = [p.grad.clone() for p in agent.policy.parameters()]
    critic = [p.grad.clone() for p in agent.critic.parameters()]
    return policy, critic


def test_each_network_gets_only_its_own_losss_gradient():
    batch = random_batch()
    reference = small_agent()
    state = saved(reference.state_dict())
    policy_grads, critic_grads = grads_after_update(reference, batch, seed=5)

    heavier_penalty = small_agent(seed=1)
    heavier_penalty.load_state_dict(state)
    heavier_penalty.min_q_weight = 50.0  # only the critic loss changes
    policy_b, critic_b = grads_after_update(heavier_penalty, batch, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(policy_grads, policy_b, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(critic_grads, critic_b, strict=True))

    heavier_likelihood = small_agent(seed=2)
    heavier_likelihood.load_state_dict(state)
    heavier_likelihood.bc_weight = 7.0  # only the policy loss changes
    policy_c, critic_c = grads_after_update(heavier_likelihood, batch, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(critic_grads, critic_c, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(policy_grads, policy_c, strict=True))
    assert all(p.requires_grad for p in heavier_likelihood.critic.parameters())


def test_metrics_are_detached_scalars_and_hmc_runs_offline_only_by_default():
    agent = small_agent()
    metrics = agent.update(random_batch())
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    assert 0.0 <= metrics["hmc_accept_rate"].item() <= 1.0
    # Four adaptation steps, each × or ÷ 1.01, from step size 1.
    exponent = math.log(metrics["hmc_step_size"].item()) / math.log(1.01)
    assert round(exponent) in (-4, -2, 0, 2, 4) and abs(exponent - round(exponent)) < 1e-3
    agent.on_online_start()
    assert "hmc_accept_rate" not in agent.update(random_batch())
    keeps = small_agent(unbiased_online=True)
    keeps.on_online_start()
    assert "hmc_accept_rate" in keeps.update(random_batch())
    ba = small_agent(variant="ba").update(random_batch())
    assert "hmc_accept_rate" not in ba and ba["mi_penalty"].item() == 0.0


def test_anneal_cools_gamma2_to_a_fifth_and_keeps_gamma1_by_default():
    agent = small_agent()
    agent.anneal(0.5)
    assert (agent.min_q_weight, agent.bc_weight) == (5.0, 0.25)
    agent.anneal(0.95)
    assert agent.min_q_weight == 5.0 and math.isclose(agent.bc_weight, 0.1)
    both = small_agent(min_q_weight_end=0.2)
    both.anneal(0.5)
    assert (both.min_q_weight, both.bc_weight) == (2.5, 0.25)
    both.anneal(0.95)
    assert math.isclose(both.min_q_weight, 1.0) and math.isclose(both.bc_weight, 0.1)
    restored = small_agent(seed=3)
    restored.load_state_dict(saved(both.state_dict()))
    assert math.isclose(restored.min_q_weight, 1.0) and math.isclose(restored.bc_weight, 0.1)
    actor_kept = small_agent(bc_weight_end=1.0, min_q_weight_end=0.5)
    actor_kept.anneal(0.9)
    assert actor_kept.min_q_weight == 2.5 and actor_kept.bc_weight == 0.5


@pytest.mark.parametrize("overrides", [{}, {"use_lagrange": True, "add_positive": True, "layer_norm": True}])
def test_state_dict_round_trip_gives_a_bit_identical_next_update(overrides):
    batch = random_batch()
    agent = small_agent(**overrides)
    for step in range(2):
        torch.manual_seed(step)
        agent.update(batch)
    state = saved(agent.state_dict())
    clone = small_agent(seed=9, **overrides)
    clone.load_state_dict(state)
    torch.manual_seed(42)
    expected = agent.update(batch)
    torch.manual_seed(42)
    got = clone.update(batch)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    for name in ("policy", "critic", "target_critic"):
        mine, theirs = getattr(agent, name).state_dict(), getattr(clone, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(agent.log_alpha, clone.log_alpha)
    assert torch.equal(agent.log_alpha_prime, clone.log_alpha_prime)


def test_short_run_fits_the_td_targets():
    torch.manual_seed(0)
    size = 256
    observations = torch.randn(size, OBS)
    data = Batch(
        observations,
        torch.rand(size, ACT) * 1.8 - 0.9,
        torch.sin(2.0 * observations[:, 0]) + observations[:, 1],
        torch.randn(size, OBS),
        torch.ones(size),  # terminal: the TD target is the reward, so the fit is measurable
    )
    agent = MISAAgent(OBS, ACT, small_config(hidden_dims=(64, 64)), CPU)
    losses = []
    for _ in range(150):
        index = torch.randint(0, size, (64,))
        losses.append(agent.update(Batch(*(field[index] for field in data)))["td_loss"].item())
    assert np.mean(losses[-15:]) < 0.5 * np.mean(losses[:15])

"""MISA: tanh-Gaussian log-probs, the MI bound's critic term per variant, α and Lagrange losses by hand; one
whole update by hand on fixed networks (TD target, penalty, policy terms and gradient, the HMC target);
the HMC acceptance metric, gradient isolation between the networks, exact resume, and a short run that
fits the TD targets."""

from __future__ import annotations

import copy
import io
import math

import agent_checks
import fixed_nets
import numpy as np
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.errors import OfftuneError
from offtune.policies import hmc
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


def fixed_policy(agent: MISAAgent) -> None:
    """μ(s) = 0.5 s and log σ(s) = 1 · 0.2 s - 1 (the trainable scale m = 1 and offset b = -1 of the init)."""
    policy = agent.policy
    fixed_nets.pass_through_(fixed_nets.linears(policy.trunk), 1)
    fixed_nets.head_(policy.mean_head, [[[0.5]]], [[0.0]])
    fixed_nets.head_(policy.log_std_head, [[[0.2]]], [[0.0]])


def test_policy_layout_clips_and_acts_with_tanh_of_the_mean():
    agent = small_agent()
    policy = agent.actor_module()
    assert [type(m) for m in policy.trunk] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert isinstance(policy.mean_head, nn.Linear) and policy.mean_head.out_features == ACT
    # Official init: small output layer, so log σ starts near m·0 + b = −1.
    _, log_std = policy.distribution(torch.randn(9, OBS))
    assert torch.allclose(log_std, torch.full_like(log_std, -1.0), atol=0.1)

    agent = MISAAgent(1, 1, small_config(hidden_dims=(2, 2)), CPU)
    fixed_policy(agent)
    torch.manual_seed(0)
    sampled = agent.explore(torch.tensor([[0.5], [-1.0]]).expand(1000, 2, 1))
    assert sampled.abs().max() < 1
    # A sample is tanh(μ + σ ε): its atanh has mean μ = 0.5 s and standard deviation σ = exp(0.2 s - 1).
    pre_tanh = torch.atanh(sampled.squeeze(-1))
    assert pre_tanh.mean(0).tolist() == pytest.approx([0.25, -0.5], abs=0.03)
    assert pre_tanh.std(0).tolist() == pytest.approx([math.exp(-0.9), math.exp(-1.2)], rel=0.05)

    with torch.no_grad():
        agent.policy.log_std_scale.fill_(10.0)  # log σ = 10 · 0.2 s - 1 = 2 s - 1
    observations = torch.tensor([[0.5], [-1.0], [20.0], [-3.0]])
    mean, log_std = agent.policy.distribution(observations)
    assert mean.squeeze(-1).tolist() == pytest.approx([0.25, -0.5, 9.0, -1.5], rel=1e-6)  # μ clipped at 9
    assert log_std.squeeze(-1).tolist() == pytest.approx([0.0, -3.0, 2.0, -5.0], abs=1e-6)  # log σ to [-5, 2]
    deterministic = [math.tanh(0.25), math.tanh(-0.5), math.tanh(9.0), math.tanh(-1.5)]
    assert agent.act(observations).squeeze(-1).tolist() == pytest.approx(deterministic, rel=1e-6)


# --------------------------------------------------------------------------------- update by hand

# Three transitions, one state and one action dimension; a = 1.0 is clipped to 0.999 first.
S, A, R = [0.5, -1.0, 1.5], [0.3, -0.95, 1.0], [1.0, -0.5, 2.0]
S2, D = [1.0, 0.0, -0.5], [0.0, 1.0, 0.0]
CLIPPED_A = [0.3, -0.95, 0.999]
POLICY_NOISE = 0.5
"""Every ``randn_like`` draw of the update (ã and a'' noise)."""
LOG_PARTITION_NOISE = [-1.0, 0.2, 1.3, -0.4]
"""The K = 4 noise values of the log-partition samples, the same for each state."""
HMC_SAMPLES = [[0.1, -0.5, 0.8], [0.4, -0.9, 0.95]]
"""What the patched sampler returns: 2 samples for each of the 3 states."""
LOG_ALPHA = 0.2


def q_online(s: float, a: float) -> tuple[float, float]:
    return 0.5 * s + a + 0.1, -0.3 * s + 0.8 * a - 0.2


def q_target(s: float, a: float) -> tuple[float, float]:
    q1, q2 = q_online(s, a)
    return q1 + 0.4, q2 - 0.3


def fixed_misa() -> MISAAgent:
    config = small_config(hidden_dims=(2, 2), n_actions=4, hmc_num_samples=2, hmc_burnin_steps=3,
                          hmc_leapfrog_steps=4, hmc_step_size=0.7, hmc_adaptation_steps=1)
    agent = MISAAgent(1, 1, config, CPU)
    fixed_policy(agent)
    fixed_nets.affine_(agent.critic, [[[0.5, 1.0]], [[-0.3, 0.8]]], [[0.1], [-0.2]])
    fixed_nets.affine_(agent.target_critic, [[[0.5, 1.0]], [[-0.3, 0.8]]], [[0.5], [-0.5]])
    with torch.no_grad():
        agent.log_alpha.fill_(LOG_ALPHA)
    return agent


def fixed_batch() -> Batch:
    column = lambda values: torch.tensor(values).unsqueeze(-1)  # noqa: E731
    return Batch(column(S), column(A), torch.tensor(R), column(S2), torch.tensor(D))


def mean_and_log_std(s: float) -> tuple[float, float]:
    return 0.5 * s, 0.2 * s - 1.0


def log_pi(s: float, action: float) -> float:
    """log π(a|s) of the tanh-Gaussian: log N(atanh a; μ, σ) - log(1 - a²)."""
    mean, log_std = mean_and_log_std(s)
    z = (math.atanh(action) - mean) / math.exp(log_std)
    return -0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi) - math.log(1 - action * action)


def sample_action(s: float, noise: float) -> float:
    mean, log_std = mean_and_log_std(s)
    return math.tanh(mean + math.exp(log_std) * noise)


DENSITY_PROBES = [0.2, -0.7, 1.0]
"""Actions (one per state) at which the patched sampler evaluates the target density it is given."""


class PatchedSampler:
    """Stands in for ``hmc.sample``: records its arguments and the target density at ``DENSITY_PROBES``
    (while the critics still hold the weights the update samples with), returns ``HMC_SAMPLES``."""

    def __call__(self, log_density, initial_states, **settings) -> hmc.HMCSamples:
        self.initial_states, self.settings = initial_states, settings
        self.probed = log_density(torch.tensor(DENSITY_PROBES).unsqueeze(-1)).tolist()
        samples = torch.tensor(HMC_SAMPLES).unsqueeze(-1)
        return hmc.HMCSamples(samples, torch.tensor(0.25), torch.tensor(0.7))


@pytest.fixture
def fixed_noise(monkeypatch: pytest.MonkeyPatch) -> PatchedSampler:
    """Deterministic policy noise and a sampler that returns known chains, for one update."""

    def randn(*shape, **kwargs):
        assert shape == (3, 4, 1)
        return torch.tensor(LOG_PARTITION_NOISE).view(1, 4, 1).expand(shape).clone()

    sampler = PatchedSampler()
    monkeypatch.setattr(torch, "randn_like", lambda t: torch.full_like(t, POLICY_NOISE))
    monkeypatch.setattr(torch, "randn", randn)
    monkeypatch.setattr(hmc, "sample", sampler)
    return sampler


def log_sum_exp_1d(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_critic_update_by_hand(fixed_noise):
    agent = fixed_misa()
    before = copy.deepcopy(agent)
    metrics = agent.update(fixed_batch())

    # y = r + 0.99 (1 - d) min Q̄(s', a''), a'' = tanh(μ(s') + σ(s') · 0.5), from the *target* critics.
    targets = [r + 0.99 * (1 - d) * min(q_target(s2, sample_action(s2, POLICY_NOISE)))
               for r, d, s2 in zip(R, D, S2, strict=True)]
    td = [sum((q_online(s, a)[i] - y) ** 2 for s, a, y in zip(S, CLIPPED_A, targets, strict=True)) / 3
          for i in range(2)]
    # Penalty: logsumexp_j Qᵢ(s, a_j) - log B - Qᵢ(s, a), a_j = tanh(μ(s) + σ(s) n_j) at the *current* s.
    gaps = [
        [log_sum_exp_1d([q_online(s, sample_action(s, n))[i] for n in LOG_PARTITION_NOISE]) - math.log(3)
         - q_online(s, a)[i] for s, a in zip(S, CLIPPED_A, strict=True)]
        for i in range(2)
    ]
    penalties = [sum(g) / 3 for g in gaps]
    assert metrics["td_loss"].item() == pytest.approx(sum(td) / 2, rel=1e-5)
    assert metrics["mi_penalty"].item() == pytest.approx(sum(penalties) / 2, rel=1e-5)
    assert metrics["critic_loss"].item() == pytest.approx((sum(td) + 5.0 * sum(penalties)) / 2, rel=1e-5)
    q_data = [q for s, a in zip(S, CLIPPED_A, strict=True) for q in q_online(s, a)]
    assert metrics["q_data"].item() == pytest.approx(sum(q_data) / 6, rel=1e-5)

    for target, old_target, online in zip(
        agent.target_critic.parameters(), before.target_critic.parameters(), agent.critic.parameters(), strict=True
    ):
        torch.testing.assert_close(target, 0.995 * old_target + 0.005 * online, rtol=0, atol=1e-6)


def expected_policy_loss(policy: nn.Module) -> torch.Tensor:
    """γ₂ · mean(α log π(ã|s) - log π(a|s)) - mean(min Q(s, ã)) + w_u · mean log π(a'|s), differentiable in
    ``policy``'s parameters through μ(s) and log σ(s) (so its gradient can be compared with the update's)."""
    states = torch.tensor(S, dtype=torch.float64).unsqueeze(-1)
    mean, log_std = (x.double().squeeze(-1) for x in policy.distribution(states.float()))
    states = states.squeeze(-1)

    def log_prob(actions: torch.Tensor) -> torch.Tensor:
        z = (torch.atanh(actions) - mean) * torch.exp(-log_std)
        return -0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - actions.square())

    pre_tanh = mean + torch.exp(log_std) * POLICY_NOISE
    new_actions = torch.tanh(pre_tanh)
    log_pi_new = -0.5 * POLICY_NOISE**2 - log_std - 0.5 * math.log(2 * math.pi) - torch.log(1 - new_actions.square())
    bc = (math.exp(LOG_ALPHA) * log_pi_new - log_prob(torch.tensor(CLIPPED_A, dtype=torch.float64))).mean()
    q = torch.minimum(0.5 * states + new_actions + 0.1, -0.3 * states + 0.8 * new_actions - 0.2)
    improved = torch.stack([log_prob(torch.tensor(row, dtype=torch.float64)) for row in HMC_SAMPLES])
    return 0.5 * bc - q.mean() + 0.1 * improved.mean()


def test_policy_update_by_hand(fixed_noise):
    agent = fixed_misa()
    before = copy.deepcopy(agent)
    metrics = agent.update(fixed_batch())

    new_actions = [sample_action(s, POLICY_NOISE) for s in S]
    log_pi_new = [log_pi(s, a) for s, a in zip(S, new_actions, strict=True)]
    log_pi_data = [log_pi(s, a) for s, a in zip(S, CLIPPED_A, strict=True)]
    bc = sum(math.exp(LOG_ALPHA) * new - data for new, data in zip(log_pi_new, log_pi_data, strict=True)) / 3
    q_term = sum(min(q_online(s, a)) for s, a in zip(S, new_actions, strict=True)) / 3
    hmc_term = sum(log_pi(s, a) for row in HMC_SAMPLES for s, a in zip(S, row, strict=True)) / 6
    assert metrics["log_pi"].item() == pytest.approx(sum(log_pi_new) / 3, rel=1e-5)
    assert metrics["bc_loss"].item() == pytest.approx(bc, rel=1e-4)
    assert metrics["policy_loss"].item() == pytest.approx(0.5 * bc - q_term + 0.1 * hmc_term, rel=1e-4)
    # L_α = -log α · mean(log π(ã|s) + H), H = -|A| = -1.
    assert agent.target_entropy == -1.0
    assert metrics["alpha_loss"].item() == pytest.approx(-LOG_ALPHA * (sum(log_pi_new) / 3 - 1.0), rel=1e-5)
    assert metrics["alpha"].item() == pytest.approx(math.exp(LOG_ALPHA), rel=1e-6)
    assert metrics["hmc_acceptance"].item() == 0.25

    # The policy's gradient is that of this loss alone, through μ and log σ of every term.
    expected = torch.autograd.grad(expected_policy_loss(before.policy), list(before.policy.parameters()),
                                   allow_unused=True)
    for got, want in zip((p.grad for p in agent.policy.parameters()), expected, strict=True):
        torch.testing.assert_close(got, torch.zeros_like(got) if want is None else want, rtol=1e-4, atol=1e-6)


def test_hmc_targets_pi_times_exp_q_from_the_dataset_actions(fixed_noise):
    agent = fixed_misa()
    agent.update(fixed_batch())
    assert fixed_noise.initial_states.squeeze(-1).tolist() == pytest.approx(CLIPPED_A, rel=1e-6)
    assert fixed_noise.settings == dict(num_results=2, num_burnin_steps=3, num_leapfrog_steps=4, step_size=0.7,
                                        num_adaptation_steps=1, step=hmc.transition)
    # log p(a|s) = log N(atanh a; μ, σ) - log(1 - a²) + min Q(s, a), up to a per-state constant; 0 outside (-1, 1).
    got = fixed_noise.probed
    for s, a, value in zip(S[:2], DENSITY_PROBES[:2], got[:2], strict=True):
        mean, log_std = mean_and_log_std(s)
        z = (math.atanh(a) - mean) / math.exp(log_std)
        assert value == pytest.approx(-0.5 * z * z - math.log(1 - a * a) + min(q_online(s, a)), rel=1e-5)
    assert got[2] == -math.inf


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
    # int(0.8 × 2 burn-in steps) = 1 adaptation step: × or ÷ 1.01 from step size 1.
    exponent = math.log(metrics["hmc_step_size"].item()) / math.log(1.01)
    assert round(exponent) in (-1, 1) and abs(exponent - round(exponent)) < 1e-3
    agent.on_online_start()
    assert "hmc_acceptance" not in agent.update(random_batch())
    keeps = small_agent(unbiased_online=True)
    keeps.on_online_start()
    assert "hmc_acceptance" in keeps.update(random_batch())
    ba = small_agent(variant="ba").update(random_batch())
    assert "hmc_acceptance" not in ba and ba["mi_penalty"].item() == 0.0


@pytest.mark.parametrize("step_size, low, high", [(1e-4, 0.95, 1.0), (1e3, 0.0, 0.0)])
def test_hmc_acceptance_is_the_share_of_accepted_proposals(step_size, low, high):
    """Tiny leapfrog steps keep H almost constant (nearly all accepted); huge ones leave (-1, 1) (none)."""
    agent = small_agent(hmc_step_size=step_size)
    metrics = agent.update(random_batch())
    assert low <= metrics["hmc_acceptance"].item() <= high
    assert metrics["hmc_acceptance"].device == metrics["policy_loss"].device


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

"""Hamiltonian Monte Carlo: leapfrog, Metropolis ratio and whole chains by hand, a known Gaussian, support
rejection, step-size adaptation."""

from __future__ import annotations

import math

import torch

from offtune.policies import hmc


def gaussian_1d(mean: float, variance: float):
    def log_density(x: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (x - mean).square() / variance).sum(-1)

    return log_density


def two_leapfrog_steps(x: float, p: float, step: float, grad) -> tuple[float, float]:
    """Half kick, drift, full kick, drift, half kick."""
    p = p + 0.5 * step * grad(x)
    x = x + step * p
    p = p + step * grad(x)
    x = x + step * p
    return x, p + 0.5 * step * grad(x)


def test_leapfrog_and_accept_ratio_by_hand():
    mean, variance, step, x0, p0 = 1.0, 2.0, 0.3, 0.5, 1.0

    def log_p(x):
        return -0.5 * (x - mean) ** 2 / variance

    def grad(x):
        return -(x - mean) / variance

    x2, p2 = two_leapfrog_steps(x0, p0, step, grad)
    expected_ratio = (-log_p(x0) + 0.5 * p0**2) - (-log_p(x2) + 0.5 * p2**2)

    log_density = gaussian_1d(mean, variance)
    x = torch.tensor([[x0]], dtype=torch.float64)
    momentum = torch.tensor([[p0]], dtype=torch.float64)
    log_prob, gradient = hmc.value_and_grad(log_density, x)
    assert math.isclose(gradient.item(), grad(x0), rel_tol=1e-12)
    new_x, new_p, new_log_prob, new_grad, finite = hmc.leapfrog(log_density, x, momentum, gradient, step, 2)
    assert math.isclose(new_x.item(), x2, rel_tol=1e-12)
    assert math.isclose(new_p.item(), p2, rel_tol=1e-12)
    assert math.isclose(new_log_prob.item(), log_p(x2), rel_tol=1e-12)
    assert math.isclose(new_grad.item(), grad(x2), rel_tol=1e-12)
    assert finite.item()
    ratio = hmc.log_accept_ratio(log_prob, momentum, new_log_prob, new_p, finite)
    assert math.isclose(ratio.item(), expected_ratio, rel_tol=1e-10)


def test_chains_by_hand_with_the_same_random_draws():
    """Every step re-done in floats from the same momenta and uniforms: the carried state, log density and
    gradient, the Metropolis decision, the adapted step size, the kept samples and the acceptance count."""
    mean, variance, chains, burnin, results, adaptation = 0.3, 0.2, 16, 2, 4, 2

    def log_p(x: float) -> float:
        return -0.5 * (x - mean) ** 2 / variance

    def grad(x: float) -> float:
        return -(x - mean) / variance

    start = torch.linspace(-2.0, 2.0, chains, dtype=torch.float64).unsqueeze(-1)
    torch.manual_seed(3)
    result = hmc.sample(gaussian_1d(mean, variance), start, num_results=results, num_burnin_steps=burnin,
                        num_leapfrog_steps=2, step_size=0.9, num_adaptation_steps=adaptation)

    torch.manual_seed(3)
    states, step, kept, accepted = start.squeeze(-1).tolist(), 0.9, [], 0
    for index in range(burnin + results):
        momenta = torch.randn(chains, dtype=torch.float64).tolist()
        uniforms = torch.rand(chains, dtype=torch.float64).tolist()
        probabilities = []
        for chain, (x, p, u) in enumerate(zip(states, momenta, uniforms, strict=True)):
            new_x, new_p = two_leapfrog_steps(x, p, step, grad)
            ratio = (-log_p(x) + 0.5 * p * p) - (-log_p(new_x) + 0.5 * new_p * new_p)
            probabilities.append(min(1.0, math.exp(ratio)))
            if math.log(u) < ratio:
                states[chain] = new_x
                accepted += index >= burnin
        if index < adaptation:
            step = step * 1.01 if sum(probabilities) / chains > 0.75 else step / 1.01
        if index >= burnin:
            kept.append(list(states))
    assert 0 < accepted < chains * results, "the draws must both accept and reject"
    assert torch.allclose(result.samples.squeeze(-1), torch.tensor(kept, dtype=torch.float64), rtol=0, atol=1e-12)
    assert math.isclose(result.accept_rate.item(), accepted / (chains * results), rel_tol=1e-12)
    assert math.isclose(result.step_size.item(), step, rel_tol=1e-12)


def test_trajectory_through_a_hole_in_the_support_is_rejected():
    """A NaN/-inf anywhere on the path rejects, as TFP does when the official tanh log-prob turns NaN."""

    def log_density(x: torch.Tensor) -> torch.Tensor:
        inner = -0.5 * x.square().sum(-1)
        hole = ((x - 1.0).abs() < 0.1).all(-1)
        return torch.where(hole, torch.full_like(inner, -torch.inf), inner)

    x = torch.tensor([[0.5]], dtype=torch.float64)
    momentum = torch.tensor([[1.0]], dtype=torch.float64)
    log_prob, gradient = hmc.value_and_grad(log_density, x)
    # With gradient -x the first drift lands at 0.5 + 0.5 * (1 - 0.25 * 0.5) = 0.9375, inside the hole.
    *_, final_log_prob, _, finite = hmc.leapfrog(log_density, x, momentum, gradient, 0.5, 2)
    assert torch.isfinite(final_log_prob).item() and not finite.item()
    ratio = hmc.log_accept_ratio(log_prob, momentum, final_log_prob, momentum, finite)
    assert ratio.item() == -math.inf


def test_samples_match_a_known_gaussian():
    torch.manual_seed(0)
    mean = torch.tensor([0.5, -1.0])
    precision = torch.linalg.inv(torch.tensor([[0.25, 0.1], [0.1, 1.0]]))

    def log_density(x: torch.Tensor) -> torch.Tensor:
        centred = x - mean
        return -0.5 * ((centred @ precision) * centred).sum(-1)

    result = hmc.sample(
        log_density,
        torch.zeros(2000, 2),
        num_results=40,
        num_burnin_steps=30,
        num_leapfrog_steps=3,
        step_size=0.4,
        num_adaptation_steps=20,
    )
    samples = result.samples.reshape(-1, 2)
    assert result.samples.shape == (40, 2000, 2) and not result.samples.requires_grad
    assert torch.allclose(samples.mean(0), mean, atol=0.015)
    covariance = torch.cov(samples.T)
    assert torch.allclose(covariance, torch.tensor([[0.25, 0.1], [0.1, 1.0]]), atol=0.03)
    assert 0.5 < result.accept_rate.item() <= 1.0


def test_out_of_support_proposals_are_rejected_and_step_size_shrinks():
    torch.manual_seed(0)

    def uniform_box(x: torch.Tensor) -> torch.Tensor:
        inside = (x.abs() < 1.0).all(-1)
        flat = 0.0 * x.sum(-1)
        return torch.where(inside, flat, torch.full_like(flat, -torch.inf))

    start = torch.rand(64, 3) * 0.2 - 0.1
    result = hmc.sample(
        uniform_box, start, num_results=5, num_burnin_steps=5, num_leapfrog_steps=2, step_size=50.0,
        num_adaptation_steps=4,
    )
    assert torch.equal(result.samples, start.expand(5, -1, -1))
    assert result.accept_rate.item() == 0.0
    assert math.isclose(result.step_size.item(), 50.0 / 1.01**4, rel_tol=1e-6)


def test_small_steps_are_accepted_and_step_size_grows():
    torch.manual_seed(0)
    result = hmc.sample(
        gaussian_1d(0.0, 1.0), torch.zeros(256, 1), num_results=3, num_burnin_steps=5, num_leapfrog_steps=2,
        step_size=0.01, num_adaptation_steps=4,
    )
    assert result.accept_rate.item() > 0.99
    assert math.isclose(result.step_size.item(), 0.01 * 1.01**4, rel_tol=1e-6)

"""Hamiltonian Monte Carlo in torch, for many independent chains at once, without host syncs.

MISA's unbiased-gradient term needs samples from p(a|s) ∝ π(a|s)·exp(Q(s, a)) for every state of the
batch; the official code draws them with TensorFlow Probability's ``HamiltonianMonteCarlo`` inside
``SimpleStepSizeAdaptation`` and ``sample_chain``. This module reproduces that kernel:

- the state is ``(chains, dim)``, one independent chain per row, each with its own Metropolis test;
- momentum p ~ N(0, I), kinetic energy ½|p|², leapfrog with a half momentum step at both ends;
- a proposal whose trajectory meets a non-finite log density (or NaN) is rejected — in the official
  code an action outside (-1, 1) makes the tanh log-probability NaN, which TFP turns into a rejection;
- one scalar step size shared by all chains, adapted during the first ``num_adaptation_steps`` steps:
  multiplied by ``1 + rate`` when the mean acceptance probability over the chains exceeds the target,
  divided by it otherwise (TFP's defaults: target 0.75, rate 0.01);
- ``num_burnin_steps`` steps are discarded, then ``num_results`` consecutive states are returned.

Every loop has a fixed trip count and every decision is a tensor ``where``, so nothing waits for the
device. Gradients w.r.t. the state come from ``torch.autograd.grad`` on the summed log densities (the
chains are independent, so the sum's gradient is each chain's own gradient). One HMC step
(:func:`transition`) is a pure function of tensors, which MISA's compiled update compiles as one graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

LogDensity = Callable[[torch.Tensor], torch.Tensor]
"""Maps states ``(chains, dim)`` to unnormalised log densities ``(chains,)``; -inf outside the support."""


class HMCSamples(NamedTuple):
    samples: torch.Tensor
    """``(num_results, chains, dim)``, detached."""
    accept_rate: torch.Tensor
    """Share of accepted proposals over the kept (post-burn-in) steps, a scalar tensor."""
    step_size: torch.Tensor
    """The step size after adaptation, a scalar tensor."""


def value_and_grad(log_density: LogDensity, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x) per chain and ∂ log p / ∂x, both detached (``torch.func`` while compiling: Dynamo cannot
    trace ``torch.autograd.grad``)."""
    if torch.compiler.is_compiling():
        def summed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            log_prob = log_density(x)
            return log_prob.sum(), log_prob

        grad, log_prob = torch.func.grad(summed, has_aux=True)(states)
        return log_prob.detach(), grad
    with torch.enable_grad():
        states = states.detach().requires_grad_(True)
        log_prob = log_density(states)
        (grad,) = torch.autograd.grad(log_prob.sum(), states)
    return log_prob.detach(), grad


def leapfrog(
    log_density: LogDensity,
    states: torch.Tensor,
    momentum: torch.Tensor,
    grad: torch.Tensor,
    step_size: torch.Tensor | float,
    num_steps: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_steps`` leapfrog steps from ``(states, momentum)`` with ∂ log p at ``states`` given.

    Returns the proposal, its momentum, log density and gradient, and whether every position on the
    trajectory had a finite log density.
    """
    momentum = momentum + 0.5 * step_size * grad
    finite = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    for index in range(num_steps):
        states = states + step_size * momentum
        log_prob, grad = value_and_grad(log_density, states)
        finite = finite & torch.isfinite(log_prob)
        momentum_step = step_size if index < num_steps - 1 else 0.5 * step_size
        momentum = momentum + momentum_step * grad
    return states, momentum, log_prob, grad, finite


def log_accept_ratio(
    log_prob: torch.Tensor,
    momentum: torch.Tensor,
    proposed_log_prob: torch.Tensor,
    proposed_momentum: torch.Tensor,
    finite: torch.Tensor,
) -> torch.Tensor:
    """log of the Metropolis ratio exp(H(x, p) − H(x′, p′)), H = −log p(x) + ½|p|²; -inf if rejected."""
    current_energy = -log_prob + 0.5 * momentum.square().sum(-1)
    proposed_energy = -proposed_log_prob + 0.5 * proposed_momentum.square().sum(-1)
    ratio = current_energy - proposed_energy
    return torch.where(finite & ~torch.isnan(ratio), ratio, torch.full_like(ratio, -torch.inf))


class ChainState(NamedTuple):
    """Where every chain is between two HMC steps, with what the next step reuses."""

    states: torch.Tensor
    log_prob: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor
    """The shared step size, a scalar tensor."""


def transition(
    log_density: LogDensity,
    chain: ChainState,
    num_leapfrog_steps: int,
    adapt: bool,
    target_accept_prob: float = 0.75,
    adaptation_rate: float = 0.01,
) -> tuple[ChainState, torch.Tensor]:
    """One HMC step of every chain (momentum, leapfrog, Metropolis test; step-size adaptation when
    ``adapt``); returns the new chain state and the share of chains that accepted.

    A pure function of tensors, so ``torch.compile`` can make the whole step, leapfrog loop included, one graph.
    """
    states, log_prob, grad, step = chain
    momentum = torch.randn_like(states)
    proposal, proposal_momentum, proposal_log_prob, proposal_grad, finite = leapfrog(
        log_density, states, momentum, grad, step, num_leapfrog_steps
    )
    log_ratio = log_accept_ratio(log_prob, momentum, proposal_log_prob, proposal_momentum, finite)
    accept = torch.rand_like(log_ratio).log() < log_ratio
    states = torch.where(accept.unsqueeze(-1), proposal, states)
    log_prob = torch.where(accept, proposal_log_prob, log_prob)
    grad = torch.where(accept.unsqueeze(-1), proposal_grad, grad)
    if adapt:
        mean_accept_prob = log_ratio.clamp(max=0.0).exp().mean()
        grow = mean_accept_prob.log() > math.log(target_accept_prob)
        step = torch.where(grow, step * (1.0 + adaptation_rate), step / (1.0 + adaptation_rate))
    return ChainState(states, log_prob, grad, step), accept.to(states.dtype).mean()


Transition = Callable[[LogDensity, ChainState, int, bool], tuple[ChainState, torch.Tensor]]


def sample(
    log_density: LogDensity,
    initial_states: torch.Tensor,
    num_results: int,
    num_burnin_steps: int,
    num_leapfrog_steps: int,
    step_size: float,
    num_adaptation_steps: int,
    step: Transition = transition,
) -> HMCSamples:
    """Run ``initial_states.shape[0]`` chains for ``num_burnin_steps + num_results`` HMC steps.

    ``step`` is :func:`transition` or a compiled copy of it (MISA's compiled update).
    """
    states = initial_states.detach()
    log_prob, grad = value_and_grad(log_density, states)
    chain = ChainState(states, log_prob, grad, torch.full((), float(step_size), dtype=states.dtype,
                                                           device=states.device))
    samples = states.new_empty((num_results, *states.shape))
    accepted_total = states.new_zeros(())
    for index in range(num_burnin_steps + num_results):
        chain, accepted = step(log_density, chain, num_leapfrog_steps, index < num_adaptation_steps)
        if index >= num_burnin_steps:
            samples[index - num_burnin_steps] = chain.states
            accepted_total = accepted_total + accepted
    return HMCSamples(samples, accepted_total / max(num_results, 1), chain.step_size)

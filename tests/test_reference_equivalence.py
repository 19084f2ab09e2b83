"""offtune's IQL and SPOT compute the same losses as the plain reference code on the same weights and batches.

The throughput benchmark compares the two; this makes sure the speed is not bought with different math.
Weights go from offtune to the reference (ensemble member i of the batched critic becomes critic i), then
both take a few gradient steps on the same batches with the same random seed, and every loss must agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.networks import EnsembleLinear
from offtune.policies.spot import SPOTAgent, SPOTConfig

_spec = importlib.util.spec_from_file_location(
    "benchmarks_reference", Path(__file__).resolve().parents[1] / "benchmarks" / "reference.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

OBS_DIM, ACTION_DIM, BATCH = 11, 3, 64


def linears(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]


@torch.no_grad()
def copy_linear(target: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    target.weight.copy_(weight)
    target.bias.copy_(bias)


@torch.no_grad()
def copy_mlp(target: nn.Module, source: nn.Module) -> None:
    """Plain Linear stacks, layer by layer."""
    pairs = list(zip(linears(target), linears(source), strict=True))
    for dst, src in pairs:
        copy_linear(dst, src.weight, src.bias)


@torch.no_grad()
def copy_ensemble(targets: list[nn.Module], source: nn.Module) -> None:
    """Member i of offtune's batched critic (weights (members, in, out)) into the i-th separate critic."""
    for member, target in enumerate(targets):
        for dst, src in zip(linears(target), linears(source), strict=True):
            copy_linear(dst, src.weight[member].T, src.bias[member, 0])


def batches(count: int, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(count):
        result.append(
            Batch(
                torch.tensor(rng.normal(size=(BATCH, OBS_DIM)), dtype=torch.float32),
                torch.tensor(rng.uniform(-0.99, 0.99, size=(BATCH, ACTION_DIM)), dtype=torch.float32),
                torch.tensor(rng.normal(size=BATCH), dtype=torch.float32),
                torch.tensor(rng.normal(size=(BATCH, OBS_DIM)), dtype=torch.float32),
                torch.tensor(rng.uniform(size=BATCH) < 0.2, dtype=torch.float32),
            )
        )
    return result


def as_reference(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The reference's layout: rewards and not-done masks of shape (B, 1)."""
    return (batch.observations, batch.actions, batch.rewards[:, None], batch.next_observations,
            1.0 - batch.dones[:, None])


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("expectile, beta", [(0.7, 3.0), (0.9, 10.0)])
def test_iql_losses_match_reference(expectile: float, beta: float) -> None:
    torch.manual_seed(0)
    config = IQLConfig(expectile=expectile, beta=beta, cosine_actor_lr=False)
    agent = IQLAgent(OBS_DIM, ACTION_DIM, config)
    plain = reference.ReferenceIQL(OBS_DIM, ACTION_DIM, expectile=expectile, beta=beta)
    copy_mlp(plain.value, agent.value)
    copy_mlp(plain.actor.net, agent.actor.mean_net)
    with torch.no_grad():
        plain.actor.log_std.copy_(agent.actor.log_std)
    copy_ensemble([plain.q1, plain.q2], agent.critic)
    copy_ensemble([plain.q1_target, plain.q2_target], agent.target_critic)

    for batch in batches(4):
        ours = agent.update(batch)
        theirs = plain.train(as_reference(batch))
        for name in ("value_loss", "actor_loss", "critic_loss"):
            close(ours[name], theirs[name])


@pytest.mark.parametrize("lam", [0.0, 0.25, 1.0])
def test_spot_losses_match_reference(lam: float) -> None:
    torch.manual_seed(0)
    config = SPOTConfig(lam=lam, actor_dropout=0.0, vae_steps=0)
    agent = SPOTAgent(OBS_DIM, ACTION_DIM, config)
    agent.prepare(lambda size: None, lambda step, metrics: None)
    plain = reference.ReferenceSPOT(OBS_DIM, ACTION_DIM, lambd=lam, actor_dropout=0.0)
    for target, source in ((plain.actor, agent.actor), (plain.actor_target, agent.target_actor)):
        copy_mlp(target, source)
    copy_ensemble([plain.q1, plain.q2], agent.critic)
    copy_ensemble([plain.q1_target, plain.q2_target], agent.target_critic)
    encoder, decoder = linears(agent.vae.encoder), linears(agent.vae.decoder)
    latent = agent.vae.latent_dim
    for dst, src in ((plain.vae.e1, encoder[0]), (plain.vae.e2, encoder[1]), (plain.vae.d1, decoder[0]),
                     (plain.vae.d2, decoder[1]), (plain.vae.d3, decoder[2])):
        copy_linear(dst, src.weight, src.bias)
    head = encoder[2]
    copy_linear(plain.vae.mean, head.weight[:latent], head.bias[:latent])
    copy_linear(plain.vae.log_std, head.weight[latent:], head.bias[latent:])

    actor_steps = 0
    for step, batch in enumerate(batches(6), start=1):
        torch.manual_seed(step)
        ours = agent.update(batch)
        torch.manual_seed(step)
        theirs = plain.train(as_reference(batch))
        close(ours["critic_loss"], theirs["critic_loss"])
        if "actor_loss" in theirs:
            actor_steps += 1
            close(ours["actor_loss"], theirs["actor_loss"])
            close(ours["neg_log_beta"], theirs["neg_log_beta"])
    assert actor_steps == 3

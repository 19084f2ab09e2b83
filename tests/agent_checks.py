"""Shared pieces of the algorithm tests: reproducible batches and exact state comparison."""

from __future__ import annotations

import torch

from offtune.buffers.replay import Batch


def random_batch(obs_dim: int, action_dim: int, size: int, seed: int) -> Batch:
    """A batch drawn from a generator seeded with ``seed``; about 30% terminal transitions."""
    generator = torch.Generator().manual_seed(seed)
    return Batch(
        torch.randn(size, obs_dim, generator=generator),
        torch.rand(size, action_dim, generator=generator) * 2 - 1,
        torch.randn(size, generator=generator),
        torch.randn(size, obs_dim, generator=generator),
        (torch.rand(size, generator=generator) < 0.3).float(),
    )


def learnable_data(obs_dim: int, action_dim: int, count: int = 512) -> Batch:
    """Transitions whose reward and next state are simple functions of the state, so critics can fit them."""
    torch.manual_seed(0)
    observations = torch.randn(count, obs_dim)
    return Batch(
        observations,
        torch.tanh(observations[:, :action_dim]),
        observations.sum(-1),
        observations + 0.1 * torch.randn(count, obs_dim),
        torch.zeros(count),
    )


def assert_same(a, b) -> None:
    """Recursive exact equality of nested state (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b

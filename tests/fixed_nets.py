"""Hand-set weights that make a small ReLU/ELU network compute a known affine function of its input.

The hidden layers pass their input through unchanged, shifted by ``OFFSET`` so that every unit stays in the
identity part of ReLU and ELU (inputs must exceed -``OFFSET``); the head reads the shifted copy and undoes
the shift. A test can then write a loss down by hand from the affine maps it chose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from offtune.policies.networks import EnsembleLinear

OFFSET = 4.0


def linears(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | EnsembleLinear)]


def _kernel(layer: nn.Module) -> list[torch.Tensor]:
    """The (out, in) weight matrix of each member, as views that can be written in place."""
    if isinstance(layer, EnsembleLinear):
        return [layer.weight[member].T for member in range(layer.members)]
    return [layer.weight]


def _biases(layer: nn.Module) -> list[torch.Tensor]:
    if isinstance(layer, EnsembleLinear):
        return [layer.bias[member, 0] for member in range(layer.members)]
    return [layer.bias]


@torch.no_grad()
def pass_through_(hidden: Sequence[nn.Module], in_dim: int) -> None:
    """Hidden layers that output (x + OFFSET, 0, ...): the first adds the offset, the others copy."""
    for index, layer in enumerate(hidden):
        for weight, bias in zip(_kernel(layer), _biases(layer), strict=True):
            weight.zero_()
            bias.zero_()
            weight[:in_dim, :in_dim] = torch.eye(in_dim)
            if index == 0:
                bias[:in_dim] = OFFSET


@torch.no_grad()
def head_(layer: nn.Module, weights: Sequence[Sequence[Sequence[float]]], biases: Sequence[Sequence[float]]) -> None:
    """A head reading pass-through features: member m outputs ``weights[m] @ x + biases[m]``."""
    for weight, bias, w, b in zip(_kernel(layer), _biases(layer), weights, biases, strict=True):
        w = torch.tensor(w, dtype=weight.dtype)
        weight.zero_()
        weight[:, : w.shape[1]] = w
        bias.copy_(torch.tensor(b, dtype=bias.dtype) - OFFSET * w.sum(1))


def affine_(net: nn.Module, weights: Sequence[Sequence[Sequence[float]]], biases: Sequence[Sequence[float]]) -> None:
    """Make an MLP (plain or ensemble) compute member m: x -> ``weights[m] @ x + biases[m]``."""
    *hidden, head = linears(net)
    pass_through_(hidden, len(weights[0][0]))
    head_(head, weights, biases)

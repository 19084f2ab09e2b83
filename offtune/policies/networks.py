"""Shared building blocks: plain MLPs, an ensemble MLP that runs twin critics as one batched network,
and Polyak averaging done with fused foreach kernels.

Networks are ``nn.Sequential`` of ``Linear``/activation (or ``EnsembleLinear``) so that exporters can
walk them layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU, "tanh": nn.Tanh}
IN_PLACE = (nn.ReLU, nn.ELU)


def make_activation(name: str) -> nn.Module:
    """The named activation; ReLU and ELU work in place, saving a (batch, width) tensor per hidden layer.

    Safe in our stacks: the tensor they overwrite is the fresh output of the layer before, which no
    backward formula needs (ReLU's and ELU's own backward read their result).
    """
    cls = ACTIVATIONS[name]
    return cls(inplace=True) if issubclass(cls, IN_PLACE) else cls()


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "relu",
    layer_norm: bool = False,
    dropout: float = 0.0,
    dropout_before_activation: bool = False,
) -> nn.Sequential:
    """Linear -> [LayerNorm] -> activation (-> Dropout) per hidden layer, then a Linear head."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if layer_norm:
            layers.append(nn.LayerNorm(size))
        if dropout > 0 and dropout_before_activation:
            layers.append(nn.Dropout(dropout))
        layers.append(make_activation(activation))
        if dropout > 0 and not dropout_before_activation:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied as one batched matmul.

    Input ``(members, batch, in)`` or ``(batch, in)`` (broadcast to every member); output
    ``(members, batch, out)``. Each member is initialised like ``nn.Linear``.
    """

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        return f"members={self.members}, in_dim={self.in_dim}, out_dim={self.out_dim}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm with separate affine parameters per ensemble member."""

    def __init__(self, members: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, size))
        self.bias = nn.Parameter(torch.zeros(members, 1, size))
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, (self.size,)) * self.weight + self.bias


def ensemble_mlp(
    members: int,
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "relu",
    layer_norm: bool = False,
) -> nn.Sequential:
    """An MLP of ``members`` independent copies evaluated together: ``(batch, in) -> (members, batch, out)``."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers.append(EnsembleLinear(members, width, size))
        if layer_norm:
            layers.append(EnsembleLayerNorm(members, size))
        layers.append(make_activation(activation))
        width = size
    layers.append(EnsembleLinear(members, width, out_dim))
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """Q(s, a) for ``members`` critics at once: returns ``(members, batch)``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (256, 256),
        members: int = 2,
        activation: str = "relu",
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.net = ensemble_mlp(members, obs_dim + action_dim, hidden, 1, activation, layer_norm)

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([observations, actions], dim=-1)
        return self.net(inputs).squeeze(-1)

    def member(self, index: int, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Qᵢ(s, a) of one critic alone, ``(batch,)``: a loss that reads one critic (TD3's actor reads Q₁)
        pays for that one only, forward and backward."""
        hidden = torch.cat([observations, actions], dim=-1)
        for layer in self.net:
            if isinstance(layer, EnsembleLinear):
                hidden = torch.addmm(layer.bias[index], hidden, layer.weight[index])
            elif isinstance(layer, EnsembleLayerNorm):
                hidden = nn.functional.layer_norm(hidden, (layer.size,)) * layer.weight[index] + layer.bias[index]
            else:
                hidden = layer(hidden)
        return hidden.squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging target <- tau * source + (1 - tau) * target, one fused kernel per dtype."""
    target_params = list(target.parameters())
    source_params = list(source.parameters())
    torch._foreach_lerp_(target_params, source_params, tau)


FUSED_ADAM_DEVICES = ("cuda", "cpu")


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with the fastest kernel the device offers: fused (one kernel per step) on CUDA and CPU, foreach elsewhere.

    On CPU the fused kernel takes a third of the time of the foreach one for our networks; it computes the
    same update, rounded differently in the last bit.
    """
    params = list(params)
    fused = bool(params) and params[0].device.type in FUSED_ADAM_DEVICES
    return torch.optim.Adam(params, lr=lr, fused=fused, foreach=not fused)


def _layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, EnsembleLinear))]


@torch.no_grad()
def orthogonal_init_(net: nn.Module, gain: float = math.sqrt(2.0)) -> None:
    """Orthogonal kernels (per ensemble member) and zero biases, like Flax's ``orthogonal(gain)`` Dense."""
    for layer in _layers(net):
        if isinstance(layer, EnsembleLinear):
            for member in range(layer.members):
                nn.init.orthogonal_(layer.weight[member], gain)
        else:
            nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)


@torch.no_grad()
def uniform_head_init_(net: nn.Module, bound: float) -> None:
    """Weights and bias of the last linear layer drawn from U(-bound, bound) (TD3-style small heads)."""
    head = _layers(net)[-1]
    nn.init.uniform_(head.weight, -bound, bound)
    nn.init.uniform_(head.bias, -bound, bound)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """Elementwise log N(x; mean, std²), without ``torch.distributions``' validation (it syncs the host)."""
    log_std = math.log(std) if isinstance(std, float) else torch.log(std)
    return -0.5 * ((x - mean) / std) ** 2 - log_std - 0.5 * math.log(2.0 * math.pi)


MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase)
"""Layers whose output depends on ``train()``/``eval()``."""


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Switch dropout off while acting, then restore each module's previous mode.

    Modules in training mode with no dropout are left as they are: switching a module's mode walks all its
    layers, which costs as much as a 256-wide forward, once per online step.
    """
    switched = [m for m in modules if m.training and any(isinstance(x, MODE_DEPENDENT) for x in m.modules())]
    for module in switched:
        module.eval()
    try:
        yield
    finally:
        for module in switched:
            module.train()

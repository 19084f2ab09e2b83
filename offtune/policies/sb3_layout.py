"""offtune's networks in Stable-Baselines3's layout: which tensor becomes which SB3 parameter.

Three steps, each a few functions: read an agent's actor and critics as plain Linear layers in the order SB3
stacks them (:class:`ActorLayers`, :class:`CriticLayers`); fold the dataset normaliser and the observation
key order into the layers that read observations (:func:`feature_columns`, :func:`fold_input_layer`); and
name every tensor as SB3's policy ``state_dict`` does (:func:`sb3_state_dict`). The worked examples in
:mod:`offtune.policies.sb3` follow one actor of each kind through these steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError, suggest
from offtune.policies.checkpoint import LoadedAgent
from offtune.policies.networks import EnsembleLinear

# The modules of SB3's policies that an export fills (prefixes of ``model.policy.state_dict()`` keys).
TD3_ACTOR = "actor.mu"
TD3_ACTOR_TARGET = "actor_target.mu"
SAC_LATENT = "actor.latent_pi"
SAC_MEAN = "actor.mu"
SAC_LOG_STD = "actor.log_std"
CRITIC = "critic"
CRITIC_TARGET = "critic_target"


class Layer(NamedTuple):
    """A linear layer in ``nn.Linear`` layout: weight (out, in) and bias (out,), float64 on the CPU."""

    weight: torch.Tensor
    bias: torch.Tensor


@dataclass
class ActorLayers:
    """An actor as SB3 lays it out: hidden Linears (each followed by ReLU), the mean head, and for a
    stochastic actor the log-std head; ``target`` is TD3's target actor (the same layers when there is none)."""

    hidden: list[Layer]
    mean: Layer
    log_std: Layer | None = None
    target: list[Layer] | None = None


@dataclass
class CriticLayers:
    """Every critic member (and target member) as a list of Linears, ReLU between them."""

    members: list[list[Layer]]
    targets: list[list[Layer]]

    @property
    def hidden_sizes(self) -> list[int]:
        return [layer.weight.shape[0] for layer in self.members[0][:-1]]


# --- offtune's networks, read as SB3 lays them out ---------------------------------------------------------


def _linear(module: nn.Linear) -> Layer:
    return Layer(module.weight.detach().double().cpu().clone(), module.bias.detach().double().cpu().clone())


def _relu_mlp(modules: Iterable[nn.Module], what: str) -> tuple[list[Layer], bool]:
    """The Linears of a Linear-ReLU-Linear-... chain, and whether a ReLU closes it.

    Dropout is skipped (it is the identity when acting); anything else is what SB3's MLP cannot hold.
    """
    layers: list[Layer] = []
    closed = True
    for module in modules:
        if isinstance(module, nn.Dropout):
            continue
        if isinstance(module, nn.Linear) and closed:
            layers.append(_linear(module))
            closed = False
        elif isinstance(module, nn.ReLU) and not closed:
            closed = True
        else:
            raise OfftuneError(
                f"{what} has a {type(module).__name__} layer, but SB3's MLPs are Linear layers with one ReLU "
                "between them; SB3 cannot hold this network (train without it to export)"
            )
    return layers, closed


def _tanh_mlp(module: nn.Module, what: str) -> list[Layer]:
    """Linears of Linear-ReLU-...-Linear-Tanh (TD3's ``actor.mu``)."""
    modules = list(module)
    if not modules or not isinstance(modules[-1], nn.Tanh):
        raise OfftuneError(f"{what} does not end with tanh; SB3's actors squash with tanh")
    layers, closed = _relu_mlp(modules[:-1], what)
    if closed or not layers:
        raise OfftuneError(f"{what} does not end with a Linear before its tanh; SB3 cannot hold it")
    return layers


def _iql_actor(agent: Any) -> ActorLayers:
    """tanh(μ(s)) with a state-independent log σ: SB3 ``log_std`` = zero weights, bias = clipped log σ."""
    *hidden, mean = _tanh_mlp(agent.actor_module(), "IQL's actor")
    actor = agent.actor
    log_std = actor.log_std.detach().double().cpu().clamp(actor.log_std_min, actor.log_std_max)
    latent_width = mean.weight.shape[1]
    no_weights = torch.zeros(len(log_std), latent_width, dtype=torch.float64)
    return ActorLayers(hidden, mean, Layer(no_weights, log_std))


def _spot_actor(agent: Any) -> ActorLayers:
    """A deterministic tanh MLP, with its own Polyak target actor."""
    *hidden, mean = _tanh_mlp(agent.actor_module(), "SPOT's actor")
    target = _tanh_mlp(agent.target_actor, "SPOT's target actor")
    return ActorLayers(hidden, mean, None, target)


def _misa_actor(agent: Any) -> ActorLayers:
    """Trunk, mean head, and log σ = scale · head(h) + offset folded into one Linear."""
    policy = agent.actor_module()
    hidden, closed = _relu_mlp(policy.trunk, "MISA's policy trunk")
    if hidden and not closed:
        raise OfftuneError("MISA's policy trunk does not end with ReLU; SB3's latent_pi does")
    scale = policy.log_std_scale.detach().double().cpu()
    offset = policy.log_std_offset.detach().double().cpu()
    head = _linear(policy.log_std_head)
    return ActorLayers(hidden, _linear(policy.mean_head), Layer(scale * head.weight, scale * head.bias + offset))


ACTORS = {"iql": _iql_actor, "spot": _spot_actor, "misa": _misa_actor}


def _member_layer(layer: EnsembleLinear, member: int) -> Layer:
    """One member of an ensemble Linear in ``nn.Linear`` layout: its (in, out) weight transposed."""
    weight = layer.weight[member].detach().double().cpu().T.clone()
    return Layer(weight, layer.bias[member, 0].detach().double().cpu())


def _ensemble_layers(net: nn.Sequential) -> tuple[list[list[Layer]], str | None]:
    """Per member, the Linears of an ensemble ReLU MLP; or the reason SB3's critics cannot hold it."""
    linears: list[EnsembleLinear] = []
    for module in net:
        if isinstance(module, EnsembleLinear):
            linears.append(module)
        elif not isinstance(module, nn.ReLU):
            return [], f"its critics have {type(module).__name__} layers, while SB3 gives critics the actor's ReLU"
    return [[_member_layer(layer, member) for layer in linears] for member in range(linears[0].members)], None


def critic_layers(agent: Any) -> tuple[CriticLayers | None, str | None]:
    """The twin critics and their targets, or None and why SB3 cannot hold them."""
    members, reason = _ensemble_layers(agent.critic.net)
    if reason is not None:
        return None, reason
    targets, _ = _ensemble_layers(agent.target_critic.net)
    return CriticLayers(members, targets), None


# --- the normaliser and observation layout, folded into the input layers ------------------------------------

Fold = Callable[[Layer], Layer]
"""Turns a Linear that reads offtune's normalised flat observation into one that reads SB3's raw features."""


def feature_columns(observation_space: spaces.Space, obs_keys: list[str], obs_dim: int) -> np.ndarray:
    """For each input SB3's features extractor yields, the column of offtune's flat observation it holds
    (-1 for a key offtune does not read, which gets zero weights)."""
    if isinstance(observation_space, spaces.Dict):
        if not obs_keys:
            raise OfftuneError("the env gives dict observations, but the checkpoint was trained on flat ones")
        sizes: dict[str, int] = {}
        for key, subspace in observation_space.spaces.items():
            if not isinstance(subspace, spaces.Box) or subspace.dtype == np.uint8:
                raise OfftuneError(
                    f"observation key '{key}' is a {type(subspace).__name__} space; SB3's MultiInputPolicy "
                    "flattens only float vector keys into the layout offtune can map (nested dicts, images "
                    "and discrete keys cannot be exported)"
                )
            sizes[key] = int(np.prod(subspace.shape))
        for key in obs_keys:
            if key not in sizes:
                raise OfftuneError(f"the checkpoint reads observation key '{key}', which the env lacks."
                                   f"{suggest(key, sizes)}")
        offsets, start = {}, 0
        for key in obs_keys:
            offsets[key], start = start, start + sizes[key]
        if start != obs_dim:
            raise OfftuneError(f"the env's keys {', '.join(obs_keys)} hold {start} numbers, the checkpoint {obs_dim}")
        columns = [
            np.arange(offsets[key], offsets[key] + size) if key in offsets else np.full(size, -1)
            for key, size in sizes.items()
        ]
        return np.concatenate(columns)
    if not isinstance(observation_space, spaces.Box) or observation_space.dtype == np.uint8:
        raise OfftuneError(f"SB3 export needs a float Box or Dict observation space, not {observation_space}")
    if obs_keys:
        raise OfftuneError(f"the checkpoint reads dict keys {', '.join(obs_keys)}, but the env gives flat arrays")
    if int(np.prod(observation_space.shape)) != obs_dim:
        raise OfftuneError(f"the env's observations have {int(np.prod(observation_space.shape))} numbers, the "
                           f"checkpoint's {obs_dim}")
    return np.arange(obs_dim)


def fold_input_layer(layer: Layer, normalizer: Normalizer, columns: np.ndarray, obs_dim: int) -> Layer:
    """Fold (x - μ)/(σ + ε) into the first Linear and lay its observation columns out in SB3's order.

    Columns past ``obs_dim`` (a critic's action inputs) are kept as they are: SB3 feeds critics the
    action in [-1, 1], as offtune does.
    """
    weight, bias = layer
    mean = torch.as_tensor(normalizer.mean, dtype=torch.float64)
    scale = torch.as_tensor(normalizer.std, dtype=torch.float64) + float(normalizer.eps)
    observation_weight = weight[:, :obs_dim] / scale
    folded_bias = bias - observation_weight @ mean
    index = torch.as_tensor(columns)
    used = index >= 0
    sb3_weight = torch.zeros(weight.shape[0], len(columns), dtype=torch.float64)
    sb3_weight[:, used] = observation_weight[:, index[used]]
    return Layer(torch.cat([sb3_weight, weight[:, obs_dim:]], dim=1), folded_bias)


def input_fold(loaded: LoadedAgent, observation_space: spaces.Space) -> Fold:
    """The fold for this checkpoint in this env (checking first that the env's observations fit it)."""
    info = loaded.info
    columns = feature_columns(observation_space, list(info.obs_keys), info.obs_dim)
    return functools.partial(fold_input_layer, normalizer=loaded.normalizer, columns=columns, obs_dim=info.obs_dim)


def fold_actor(actor: ActorLayers, fold: Fold) -> ActorLayers:
    """The actor with ``fold`` applied to whichever Linears read the observation."""
    target = [fold(actor.target[0]), *actor.target[1:]] if actor.target is not None else None
    if actor.hidden:
        return ActorLayers([fold(actor.hidden[0]), *actor.hidden[1:]], actor.mean, actor.log_std, target)
    log_std = fold(actor.log_std) if actor.log_std is not None else None
    return ActorLayers([], fold(actor.mean), log_std, target)


def fold_critics(critics: CriticLayers, fold: Fold) -> CriticLayers:
    """Every member's and target member's first Linear folded (its action columns stay as they are)."""
    return CriticLayers([[fold(m[0]), *m[1:]] for m in critics.members],
                        [[fold(m[0]), *m[1:]] for m in critics.targets])


# --- SB3's parameter names ---------------------------------------------------------------------------------


def _mlp_linear(prefix: str, number: int) -> str:
    """The module name of the ``number``-th Linear (from 0) in a Sequential built by SB3's ``create_mlp``.

    ``create_mlp`` puts an activation after every Linear but the last, so Linears sit at 0, 2, 4, ...
    """
    return f"{prefix}.{2 * number}"


def _q_network(prefix: str, member: int) -> str:
    """SB3's name of critic member ``member`` (``qf0``, ``qf1``, ...) under ``critic`` or ``critic_target``."""
    return f"{prefix}.qf{member}"


def _linear_state(module: str, layer: Layer) -> dict[str, torch.Tensor]:
    """The state-dict entries of one ``nn.Linear`` named ``module``, in SB3's float32."""
    return {f"{module}.weight": layer.weight.float(), f"{module}.bias": layer.bias.float()}


def _mlp_state(prefix: str, layers: list[Layer]) -> dict[str, torch.Tensor]:
    """The state-dict entries of a ``create_mlp`` Sequential holding ``layers``."""
    state: dict[str, torch.Tensor] = {}
    for number, layer in enumerate(layers):
        state.update(_linear_state(_mlp_linear(prefix, number), layer))
    return state


def sb3_state_dict(sb3_algo: str, actor: ActorLayers, critics: CriticLayers | None) -> dict[str, torch.Tensor]:
    """The policy state-dict entries (SB3 names) this export sets, already folded and reordered."""
    state: dict[str, torch.Tensor] = {}
    if sb3_algo == "td3":
        state.update(_mlp_state(TD3_ACTOR, [*actor.hidden, actor.mean]))
        state.update(_mlp_state(TD3_ACTOR_TARGET, actor.target or [*actor.hidden, actor.mean]))
    else:
        state.update(_mlp_state(SAC_LATENT, actor.hidden))
        state.update(_linear_state(SAC_MEAN, actor.mean))
        state.update(_linear_state(SAC_LOG_STD, actor.log_std))
    if critics is not None:
        for prefix, members in ((CRITIC, critics.members), (CRITIC_TARGET, critics.targets)):
            for member, layers in enumerate(members):
                state.update(_mlp_state(_q_network(prefix, member), layers))
    return state

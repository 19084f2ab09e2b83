"""Export a checkpoint as a Stable-Baselines3 TD3 or SAC zip, written by SB3's own ``save``.

The zip holds only SB3's own classes and stock torch layers, so ``TD3.load`` / ``SAC.load`` open it where
offtune is not installed. How offtune's networks become SB3's:

- **Normalisation.** The dataset normaliser (x - μ)/(σ + ε) is folded into the first Linear of the actor
  and of every critic: W' = W / (σ + ε) column-wise and b' = b - W'μ, so the zip needs no wrapper.
- **Observation layout.** SB3 reads the env's own observation space. For dict observations its
  ``MultiInputPolicy`` (``CombinedExtractor``) concatenates every key in the space's order, while offtune
  concatenates ``obs_keys`` in its own order; the first-layer columns are rearranged to SB3's order and
  the keys offtune does not read get zero columns.
- **Actors.** A tanh MLP (SPOT; IQL's and MISA's means) is TD3's ``actor.mu``. For SAC the hidden layers
  go to ``latent_pi``, the mean head to ``mu`` and log σ to ``log_std``: IQL's state-independent vector as
  the bias of a zero-weight layer, MISA's scaled head with its scale and offset folded in. SAC's
  deterministic action tanh(mu) is then exact for IQL; MISA clips μ to [-9, 9] before tanh, which SB3
  does not, and tanh(9) is within 3e-8 of 1, so the actions agree to that.
- **Critics.** offtune's twin critics are one batched ensemble: member i becomes ``qf{i}`` (the weight
  transposed to ``nn.Linear``'s (out, in)) and the target critics become ``critic_target``, so SB3 can
  keep training. SB3 gives actor and critics one activation and plain Linear layers, so critics that
  differ (MISA's ELU critics, LayerNorm) stay as SB3 initialised them, and the export says so.

Anything in the actor that SB3's MLP cannot hold raises :class:`OfftuneError`. After saving, the zip is
loaded back with SB3 and its deterministic actions are compared with offtune's; a mismatch deletes it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError, suggest
from offtune.policies.checkpoint import LoadedAgent
from offtune.policies.networks import EnsembleLinear
from offtune.policies.policy import Policy

SB3_ALGOS = ("td3", "sac")
DEFAULT_SB3_ALGO = {"iql": "sac", "spot": "td3", "misa": "sac"}
PARITY_TOLERANCE = 1e-5
"""Largest accepted |SB3 action - offtune action| per unit of half the action range."""

Layer = tuple[torch.Tensor, torch.Tensor]
"""A linear layer in ``nn.Linear`` layout: weight (out, in) and bias (out,), float64 on the CPU."""


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
        return [weight.shape[0] for weight, _ in self.members[0][:-1]]


@dataclass
class SB3Export:
    """What an export wrote and how faithful it is."""

    path: Path
    sb3_algo: str
    policy: str
    policy_kwargs: dict[str, Any]
    hyperparameters: dict[str, Any]
    critics: bool
    max_action_error: float
    notes: list[str] = field(default_factory=list)

    @property
    def sb3_class(self) -> str:
        return self.sb3_algo.upper()


def _linear(module: nn.Linear) -> Layer:
    return module.weight.detach().double().cpu().clone(), module.bias.detach().double().cpu().clone()


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
    layers = _tanh_mlp(agent.actor_module(), "IQL's actor")
    width = layers[-1][0].shape[1]
    log_std = agent.actor.log_std.detach().double().cpu().clamp(agent.actor.log_std_min, agent.actor.log_std_max)
    return ActorLayers(layers[:-1], layers[-1], (torch.zeros(len(log_std), width, dtype=torch.float64), log_std))


def _spot_actor(agent: Any) -> ActorLayers:
    """A deterministic tanh MLP, with its own Polyak target actor."""
    layers = _tanh_mlp(agent.actor_module(), "SPOT's actor")
    target = _tanh_mlp(agent.target_actor, "SPOT's target actor")
    return ActorLayers(layers[:-1], layers[-1], None, target)


def _misa_actor(agent: Any) -> ActorLayers:
    """Trunk, mean head, and log σ = scale · head(h) + offset folded into one Linear."""
    policy = agent.actor_module()
    hidden, closed = _relu_mlp(policy.trunk, "MISA's policy trunk")
    if hidden and not closed:
        raise OfftuneError("MISA's policy trunk does not end with ReLU; SB3's latent_pi does")
    scale = policy.log_std_scale.detach().double().cpu()
    offset = policy.log_std_offset.detach().double().cpu()
    weight, bias = _linear(policy.log_std_head)
    return ActorLayers(hidden, _linear(policy.mean_head), (scale * weight, scale * bias + offset))


ACTORS = {"iql": _iql_actor, "spot": _spot_actor, "misa": _misa_actor}


def _ensemble_layers(net: nn.Sequential) -> tuple[list[list[Layer]], str | None]:
    """Per member, the Linears of an ensemble ReLU MLP; or the reason SB3's critics cannot hold it."""
    linears: list[EnsembleLinear] = []
    for module in net:
        if isinstance(module, EnsembleLinear):
            linears.append(module)
        elif not isinstance(module, nn.ReLU):
            return [], f"its critics have {type(module).__name__} layers, while SB3 gives critics the actor's ReLU"
    members = []
    for member in range(linears[0].members):
        members.append([
            (layer.weight[member].detach().double().cpu().T.clone(), layer.bias[member, 0].detach().double().cpu())
            for layer in linears
        ])
    return members, None


def critic_layers(agent: Any) -> tuple[CriticLayers | None, str | None]:
    """The twin critics and their targets, or None and why SB3 cannot hold them."""
    members, reason = _ensemble_layers(agent.critic.net)
    if reason is not None:
        return None, reason
    targets, _ = _ensemble_layers(agent.target_critic.net)
    return CriticLayers(members, targets), None


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
    return torch.cat([sb3_weight, weight[:, obs_dim:]], dim=1), folded_bias


def _sequential_state(prefix: str, layers: list[Layer]) -> dict[str, torch.Tensor]:
    """State-dict entries of SB3's ``create_mlp`` Sequential: Linears at indices 0, 2, 4, ..."""
    state = {}
    for index, (weight, bias) in enumerate(layers):
        state[f"{prefix}.{2 * index}.weight"] = weight.float()
        state[f"{prefix}.{2 * index}.bias"] = bias.float()
    return state


def sb3_state_dict(sb3_algo: str, actor: ActorLayers, critics: CriticLayers | None) -> dict[str, torch.Tensor]:
    """The policy state-dict entries (SB3 names) this export sets, already folded and reordered."""
    state: dict[str, torch.Tensor] = {}
    if sb3_algo == "td3":
        state.update(_sequential_state("actor.mu", [*actor.hidden, actor.mean]))
        state.update(_sequential_state("actor_target.mu", actor.target or [*actor.hidden, actor.mean]))
    else:
        state.update(_sequential_state("actor.latent_pi", actor.hidden))
        for name, (weight, bias) in (("mu", actor.mean), ("log_std", actor.log_std)):
            state[f"actor.{name}.weight"], state[f"actor.{name}.bias"] = weight.float(), bias.float()
    if critics is not None:
        for prefix, members in (("critic", critics.members), ("critic_target", critics.targets)):
            for index, layers in enumerate(members):
                state.update(_sequential_state(f"{prefix}.qf{index}", layers))
    return state


def _hyperparameters(loaded: LoadedAgent, sb3_algo: str, actor: ActorLayers) -> dict[str, Any]:
    """SB3 constructor arguments that keep the zip honest if someone trains it further in SB3."""
    from stable_baselines3.common.noise import NormalActionNoise

    config, algo = loaded.config, loaded.algo
    action_dim = loaded.info.action_dim
    params: dict[str, Any] = {"gamma": config.discount, "batch_size": config.batch_size, "learning_starts": 0}
    params.update(learning_rate=config.actor_lr, tau=config.target_update_rate)
    if sb3_algo == "td3":
        if algo == "spot":
            params.update(policy_delay=config.policy_freq, target_policy_noise=config.policy_noise,
                          target_noise_clip=config.noise_clip)
            sigma = np.full(action_dim, config.exploration_noise)
        elif algo == "iql":
            sigma = config.exploration_temperature * actor.log_std[1].exp().numpy()
        else:
            sigma = None
        if sigma is not None:
            params["action_noise"] = NormalActionNoise(np.zeros(action_dim), np.asarray(sigma, dtype=np.float64))
    elif algo == "misa":
        agent = loaded.agent
        alpha = float(agent.log_alpha.detach().exp()) * config.alpha_multiplier
        params["ent_coef"] = f"auto_{alpha:.6g}" if config.automatic_entropy else config.alpha_multiplier
        params["target_entropy"] = float(agent.target_entropy)
    return params


class _SpacesOnly(gym.Env):
    """The spaces SB3 sizes its networks from; SB3 never steps or resets it while exporting."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space


def probe_observations(observation_space: spaces.Space, obs_keys: list[str], normalizer: Normalizer,
                       count: int = 64, seed: int = 0) -> Any:
    """A batch of raw observations around the dataset statistics (μ + σ z), for the parity self-test;
    keys offtune does not read are sampled from the space."""
    rng = np.random.default_rng(seed)
    flat = normalizer.mean + normalizer.std * rng.standard_normal((count, len(normalizer.mean)))
    if not isinstance(observation_space, spaces.Dict):
        return flat.reshape(count, *observation_space.shape).astype(observation_space.dtype)
    observation_space.seed(seed)
    batch = {key: np.stack([subspace.sample() for _ in range(count)]) for key, subspace in observation_space.items()}
    start = 0
    for key in obs_keys:
        subspace = observation_space[key]
        size = int(np.prod(subspace.shape))
        batch[key] = flat[:, start:start + size].reshape(count, *subspace.shape).astype(subspace.dtype)
        start += size
    return batch


def _check_action_space(action_space: spaces.Space, loaded: LoadedAgent) -> None:
    info = loaded.info
    if not isinstance(action_space, spaces.Box) or int(np.prod(action_space.shape)) != info.action_dim:
        raise OfftuneError(f"the env's action space {action_space} does not match the checkpoint's "
                           f"{info.action_dim} continuous actions")
    if not (np.allclose(np.ravel(action_space.low), info.action_low)
            and np.allclose(np.ravel(action_space.high), info.action_high)):
        raise OfftuneError("the env's action bounds differ from the dataset's, which the checkpoint was trained on")


def resolve_sb3_algo(algo: str, sb3_algo: str | None) -> str:
    """The SB3 class for a checkpoint: the natural one by default, or the one asked for if it fits."""
    if algo not in ACTORS:
        raise OfftuneError(f"no SB3 export for algorithm '{algo}'")
    if sb3_algo is None:
        return DEFAULT_SB3_ALGO[algo]
    sb3_algo = sb3_algo.lower()
    if sb3_algo not in SB3_ALGOS:
        raise OfftuneError(f"unknown SB3 algorithm '{sb3_algo}'; choose td3 or sac.{suggest(sb3_algo, SB3_ALGOS)}")
    if algo == "spot" and sb3_algo == "sac":
        raise OfftuneError("SPOT's actor is deterministic, and SAC needs the state-dependent standard deviation "
                           "SPOT never learns; export it as td3")
    return sb3_algo


def _fold_actor(actor: ActorLayers, fold) -> ActorLayers:
    """The actor with ``fold`` applied to whichever Linears read the observation."""
    target = [fold(actor.target[0]), *actor.target[1:]] if actor.target is not None else None
    if actor.hidden:
        return ActorLayers([fold(actor.hidden[0]), *actor.hidden[1:]], actor.mean, actor.log_std, target)
    log_std = fold(actor.log_std) if actor.log_std is not None else None
    return ActorLayers([], fold(actor.mean), log_std, target)


@dataclass
class SB3Model:
    """An SB3 model holding a checkpoint's networks, before it is saved."""

    model: Any
    sb3_algo: str
    policy: str
    policy_kwargs: dict[str, Any]
    hyperparameters: dict[str, Any]
    critics: bool
    notes: list[str]


def build_sb3_model(
    loaded: LoadedAgent,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    sb3_algo: str | None = None,
) -> SB3Model:
    """A stock SB3 TD3/SAC for the env's own spaces, with the checkpoint's weights mapped into it."""
    from stable_baselines3 import SAC, TD3

    sb3_algo = resolve_sb3_algo(loaded.algo, sb3_algo)
    _check_action_space(action_space, loaded)
    info, normalizer = loaded.info, loaded.normalizer
    columns = feature_columns(observation_space, list(info.obs_keys), info.obs_dim)

    def fold(layer: Layer) -> Layer:
        return fold_input_layer(layer, normalizer, columns, info.obs_dim)

    actor = _fold_actor(ACTORS[loaded.algo](loaded.agent), fold)
    if sb3_algo == "sac" and actor.log_std is None:
        raise OfftuneError(f"{loaded.algo}'s actor has no standard deviation for SAC; export it as td3")
    critics, reason = critic_layers(loaded.agent)
    notes: list[str] = []
    if loaded.algo == "misa":
        notes.append("MISA clips its mean to [-9, 9] before tanh and SB3 does not: actions agree within 3e-8")
    if sb3_algo == "sac" and loaded.algo == "iql":
        notes.append("deterministic actions are exact; SB3 samples tanh(N(mu, sigma)) where IQL samples "
                     "N(tanh mu, sigma)")
    if sb3_algo == "td3" and actor.target is None:
        notes.append(f"{loaded.algo.upper()} has no target actor: SB3's actor_target is a copy of the actor")
    actor_sizes = [weight.shape[0] for weight, _ in actor.hidden]
    net_arch: Any = actor_sizes
    n_critics = 2
    if critics is None:
        notes.append(f"critics not exported: {reason}; the zip holds SB3's freshly initialised critics")
    else:
        critics = CriticLayers([[fold(m[0]), *m[1:]] for m in critics.members],
                               [[fold(m[0]), *m[1:]] for m in critics.targets])
        if critics.hidden_sizes != actor_sizes:
            net_arch = {"pi": actor_sizes, "qf": critics.hidden_sizes}
        n_critics = len(critics.members)
    policy_kwargs = {"net_arch": net_arch, "n_critics": n_critics}
    policy_name = "MultiInputPolicy" if isinstance(observation_space, spaces.Dict) else "MlpPolicy"
    hyperparameters = _hyperparameters(loaded, sb3_algo, actor)
    sb3_class = TD3 if sb3_algo == "td3" else SAC
    model = sb3_class(policy_name, _SpacesOnly(observation_space, action_space), policy_kwargs=policy_kwargs,
                      device="cpu", **hyperparameters)
    state = model.policy.state_dict()
    updates = sb3_state_dict(sb3_algo, actor, critics)
    unknown = sorted(set(updates) - set(state))
    if unknown:
        raise OfftuneError(f"SB3's {sb3_algo.upper()} has no parameters named {', '.join(unknown)}")
    state.update(updates)
    model.policy.load_state_dict(state)
    return SB3Model(model, sb3_algo, policy_name, policy_kwargs, _describe(hyperparameters), critics is not None,
                    notes)


def export_sb3(
    loaded: LoadedAgent,
    path: str | Path,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    sb3_algo: str | None = None,
) -> SB3Export:
    """Write ``loaded``'s policy (and critics, where SB3 can hold them) as an SB3 zip at ``path``.

    ``observation_space`` and ``action_space`` are the live env's own (dict observations unflattened).
    The zip is written beside ``path``, loaded back with SB3 and compared with offtune's actions, and only
    then renamed to ``path`` (``.zip`` is appended when missing, as SB3 does).
    """
    built = build_sb3_model(loaded, observation_space, action_space, sb3_algo)
    path = Path(path)
    if path.suffix != ".zip":
        path = path.with_name(path.name + ".zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".zip", dir=path.parent)
    os.close(handle)
    try:
        built.model.save(temporary)
        reloaded = type(built.model).load(temporary, device="cpu")
        error = parity_error(reloaded, Policy(loaded), observation_space)
        if not error <= PARITY_TOLERANCE:
            raise OfftuneError(f"the SB3 model's actions differ from offtune's by {error:.2g} (relative to the "
                               "action range); no zip was written")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return SB3Export(path, built.sb3_algo, built.policy, built.policy_kwargs, built.hyperparameters, built.critics,
                     error, built.notes)


def parity_error(model: Any, policy: Policy, observation_space: spaces.Space) -> float:
    """Largest |SB3 - offtune| deterministic action on probe observations, per unit of half the range."""
    observations = probe_observations(observation_space, policy.obs_keys, policy.loaded.normalizer)
    sb3_actions = model.predict(observations, deterministic=True)[0]
    half_range = np.maximum(0.5 * (policy.action_high - policy.action_low), 1e-12)
    return float(np.max(np.abs(sb3_actions - policy(observations)) / half_range))


def _describe(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """JSON-able view of the constructor arguments (the action noise as its σ)."""
    described = dict(hyperparameters)
    if "action_noise" in described:
        described["action_noise"] = {"normal_sigma": described["action_noise"]._sigma.tolist()}
    return described

"""Export a checkpoint as a Stable-Baselines3 TD3 or SAC zip, written by SB3's own ``save``.

The zip holds only SB3's own classes and stock torch layers, so ``TD3.load`` / ``SAC.load`` open it where
offtune is not installed. What every export does:

- **Normalisation.** The dataset normaliser (x - μ)/(σ + ε) is folded into the first Linear of the actor
  and of every critic: W' = W / (σ + ε) column-wise and b' = b - W'μ, so the zip needs no wrapper.
- **Observation layout.** SB3 reads the env's own observation space. For dict observations its
  ``MultiInputPolicy`` (``CombinedExtractor``) concatenates every key in the space's order, while offtune
  concatenates ``obs_keys`` in its own order; the first-layer columns are rearranged to SB3's order and
  the keys offtune does not read get zero columns.
- **Critics.** offtune's twin critics are one batched ensemble (``EnsembleLinear`` weights are
  (member, in, out)): member i becomes ``qf{i}`` with its weight transposed to ``nn.Linear``'s (out, in),
  and the target critics become ``critic_target``, so SB3 can keep training. SB3 gives actor and critics
  one activation and plain Linear layers, so critics that differ (MISA's ELU critics, LayerNorm) stay as
  SB3 initialised them, and the export says so.

Worked examples, one per actor type, with two hidden layers of 256. "Linear k" counts an offtune network's
Linears from 1 (Dropout and activations are not counted); SB3's ``create_mlp`` alternates Linear and ReLU,
so its k-th Linear is the module at index 2(k - 1), which is why SB3's keys read ``.0``, ``.2``, ``.4``.

**IQL on antmaze-umaze-v2 → SAC** (the default). IQL's actor is tanh(μ(s)) with one learned log σ for
every state. offtune reads achieved_goal (2) + observation (27) = 29 numbers; SB3 feeds achieved_goal,
desired_goal, observation = 31::

    actor.mean_net Linear 1 (256×29), folded  → actor.latent_pi.0.weight (256×31; columns 2-3, desired_goal,
                                                 are zero because IQL does not read it) and .bias
    actor.mean_net Linear 2 (256×256)         → actor.latent_pi.2.weight / .bias
    actor.mean_net Linear 3 (8×256), μ        → actor.mu.weight / .bias
    clamp(actor.log_std, -5, 2), shape (8,)   → actor.log_std.bias; actor.log_std.weight = zeros (8×256)
    critic.net Linear k, member i             → critic.qf{i}.{2(k-1)}.weight = W[i]ᵀ, .bias = b[i]
    target_critic.net Linear k, member i      → critic_target.qf{i}.{2(k-1)}.weight / .bias

SAC's log σ is a Linear on the latent features; a zero weight turns it into IQL's state-independent vector.
SAC's deterministic action tanh(mu(latent_pi(s))) is then IQL's tanh(μ(s)) exactly (SAC samples
tanh(N(mu, σ)) where IQL samples N(tanh μ, σ), and the export notes it). IQL's value network V(s) has no
place in SB3 and is left out; exported as TD3 instead, IQL's Linears 1-3 fill ``actor.mu`` as SPOT's do.

**SPOT on hopper-medium-v2 → TD3** (SAC is refused: SPOT learns no σ). SPOT's actor already is TD3's
deterministic Linear-ReLU-Linear-ReLU-Linear-Tanh, so it maps layer for layer::

    actor Linear k (Linear 1 folded, 256×11)  → actor.mu.{2(k-1)}.weight / .bias
    target_actor Linear k                     → actor_target.mu.{2(k-1)}.weight / .bias
    critic, target_critic                     → critic.qf{i}, critic_target.qf{i}, as for IQL

SPOT's target policy smoothing and delayed actor updates are TD3's, so ``policy_freq``, ``policy_noise``,
``noise_clip`` and ``exploration_noise`` become ``policy_delay``, ``target_policy_noise``,
``target_noise_clip`` and ``action_noise``. The VAE (SPOT's density estimate) only shapes training and is
left out.

**MISA on a PointMaze dataset (goal mode) → SAC** (the default). MISA's actor is tanh(N(μ(s), σ(s))) with a
log σ head, SAC's own shape. offtune reads observation (4) + desired_goal (2) = 6 numbers; SB3 feeds
achieved_goal, desired_goal, observation = 8::

    policy.trunk Linear 1 (256×6), folded     → actor.latent_pi.0.weight (256×8; columns 0-1 zero, 2-3 from
                                                 offtune's columns 4-5, 4-7 from its 0-3) and .bias
    policy.trunk Linear 2                     → actor.latent_pi.2.weight / .bias
    policy.mean_head                          → actor.mu.weight / .bias
    scale · log_std_head(h) + offset          → actor.log_std.weight = scale · W, .bias = scale · b + offset

SB3's ``log_std`` is one plain Linear, so MISA's two learned scalars are folded into it. MISA clips μ to
[-9, 9] before tanh and SB3 does not; tanh(9) is within 3e-8 of 1, so the actions agree to that. MISA's
critics are ELU networks, so they are not exported (see Critics); MISA's α becomes SB3's ``ent_coef``.

Anything in the actor that SB3's MLP cannot hold raises :class:`OfftuneError`. After saving, the zip is
loaded back with SB3 and its deterministic actions are compared with offtune's; a mismatch deletes it.

The mapping itself (reading the networks, folding, SB3's names) is :mod:`offtune.policies.sb3_layout`;
this module checks that an export fits, sizes and builds the SB3 model, injects the weights and saves.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError, suggest
from offtune.policies.checkpoint import LoadedAgent
from offtune.policies.policy import Policy
from offtune.policies.sb3_layout import (
    ACTORS,
    ActorLayers,
    CriticLayers,
    critic_layers,
    fold_actor,
    fold_critics,
    input_fold,
    sb3_state_dict,
)

SB3_ALGOS = ("td3", "sac")
DEFAULT_SB3_ALGO = {"iql": "sac", "spot": "td3", "misa": "sac"}
PARITY_TOLERANCE = 1e-5
"""Largest accepted |SB3 action - offtune action| per unit of half the action range."""
REWARD_TRANSFORM_KEY = "offtune_reward_transform"
"""The model attribute, saved in the zip's ``data`` and restored by ``load``, that records the reward
transform ({scale, shift, name}: r -> scale * r + shift) the critics were trained on."""


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
    reward_transform: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def sb3_class(self) -> str:
        return self.sb3_algo.upper()

    def rewards(self) -> str:
        """Which rewards the critics were trained on, in words: SB3 would go on training them on raw rewards."""
        scale, shift, name = (self.reward_transform[key] for key in ("scale", "shift", "name"))
        whose = "critics" if self.critics else "offtune's critics (not in the zip)"
        if scale == 1.0 and shift == 0.0:
            return f"{whose} trained on untransformed rewards r"
        sign = "-" if shift < 0 else "+"
        return (f"{whose} trained on rewards r -> {scale:.6g}*r {sign} {abs(shift):.6g} ({name}), recorded in the "
                f"zip as {REWARD_TRANSFORM_KEY}; SB3's raw rewards differ")


# --- building the SB3 model --------------------------------------------------------------------------------


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


def _check_action_space(action_space: spaces.Space, loaded: LoadedAgent) -> None:
    info = loaded.info
    if not isinstance(action_space, spaces.Box) or int(np.prod(action_space.shape)) != info.action_dim:
        raise OfftuneError(f"the env's action space {action_space} does not match the checkpoint's "
                           f"{info.action_dim} continuous actions")
    if not (np.allclose(np.ravel(action_space.low), info.action_low)
            and np.allclose(np.ravel(action_space.high), info.action_high)):
        raise OfftuneError("the env's action bounds differ from the dataset's, which the checkpoint was trained on")


def _validate(loaded: LoadedAgent, action_space: spaces.Space, sb3_algo: str | None) -> str:
    """The SB3 algorithm to export as, once the checkpoint's algorithm and the env's actions allow it."""
    sb3_algo = resolve_sb3_algo(loaded.algo, sb3_algo)
    _check_action_space(action_space, loaded)
    return sb3_algo


def _folded_networks(
    loaded: LoadedAgent, observation_space: spaces.Space, sb3_algo: str
) -> tuple[ActorLayers, CriticLayers | None, str | None]:
    """The actor and critics in SB3's layout with the normaliser folded in; for critics SB3 cannot hold,
    None and the reason."""
    fold = input_fold(loaded, observation_space)
    actor = fold_actor(ACTORS[loaded.algo](loaded.agent), fold)
    if sb3_algo == "sac" and actor.log_std is None:
        raise OfftuneError(f"{loaded.algo}'s actor has no standard deviation for SAC; export it as td3")
    critics, reason = critic_layers(loaded.agent)
    if critics is None:
        return actor, None, reason
    return actor, fold_critics(critics, fold), None


def network_sizes(actor: ActorLayers, critics: CriticLayers | None) -> dict[str, Any]:
    """SB3's ``policy_kwargs`` for networks shaped like offtune's: hidden widths (one list when actor and
    critics agree, ``pi``/``qf`` lists when not) and the number of critics (SB3's 2 when none are exported)."""
    actor_sizes = [layer.weight.shape[0] for layer in actor.hidden]
    if critics is None:
        return {"net_arch": actor_sizes, "n_critics": 2}
    if critics.hidden_sizes == actor_sizes:
        return {"net_arch": actor_sizes, "n_critics": len(critics.members)}
    return {"net_arch": {"pi": actor_sizes, "qf": critics.hidden_sizes}, "n_critics": len(critics.members)}


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
            sigma = config.exploration_temperature * actor.log_std.bias.exp().numpy()
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


def _notes(algo: str, sb3_algo: str, actor: ActorLayers, critics_left_out: str | None) -> list[str]:
    """Where the zip differs from the checkpoint, in words for the export's output."""
    notes: list[str] = []
    if algo == "misa":
        notes.append("MISA clips its mean to [-9, 9] before tanh and SB3 does not: actions agree within 3e-8")
    if sb3_algo == "sac" and algo == "iql":
        notes.append("deterministic actions are exact; SB3 samples tanh(N(mu, sigma)) where IQL samples "
                     "N(tanh mu, sigma)")
    if sb3_algo == "td3" and actor.target is None:
        notes.append(f"{algo.upper()} has no target actor: SB3's actor_target is a copy of the actor")
    if critics_left_out is not None:
        notes.append(f"critics not exported: {critics_left_out}; the zip holds SB3's freshly initialised critics")
    return notes


def _policy_name(observation_space: spaces.Space) -> str:
    return "MultiInputPolicy" if isinstance(observation_space, spaces.Dict) else "MlpPolicy"


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


def _stock_model(sb3_algo: str, observation_space: spaces.Space, action_space: spaces.Space,
                 policy_kwargs: dict[str, Any], hyperparameters: dict[str, Any]) -> Any:
    """A freshly initialised SB3 TD3 or SAC for the env's own spaces."""
    from stable_baselines3 import SAC, TD3

    sb3_class = TD3 if sb3_algo == "td3" else SAC
    return sb3_class(_policy_name(observation_space), _SpacesOnly(observation_space, action_space),
                     policy_kwargs=policy_kwargs, device="cpu", **hyperparameters)


def _record_reward_transform(model: Any, loaded: LoadedAgent) -> dict[str, Any]:
    """Store the checkpoint's reward transform on the model, where SB3's ``save`` writes it into the zip."""
    transform = {key: loaded.checkpoint["reward_transform"][key] for key in ("scale", "shift", "name")}
    setattr(model, REWARD_TRANSFORM_KEY, transform)
    return transform


def _inject_weights(model: Any, updates: dict[str, torch.Tensor]) -> None:
    """Load ``updates`` into the SB3 policy; a name SB3 lacks is a layout error, never silently dropped."""
    state = model.policy.state_dict()
    unknown = sorted(set(updates) - set(state))
    if unknown:
        raise OfftuneError(f"SB3's {type(model).__name__} has no parameters named {', '.join(unknown)}")
    state.update(updates)
    model.policy.load_state_dict(state)


@dataclass
class SB3Model:
    """An SB3 model holding a checkpoint's networks, before it is saved."""

    model: Any
    sb3_algo: str
    policy: str
    policy_kwargs: dict[str, Any]
    hyperparameters: dict[str, Any]
    critics: bool
    reward_transform: dict[str, Any]
    notes: list[str]


def build_sb3_model(
    loaded: LoadedAgent,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    sb3_algo: str | None = None,
) -> SB3Model:
    """A stock SB3 TD3/SAC for the env's own spaces, with the checkpoint's weights mapped into it.

    In steps: check that the export fits, fold the normaliser into offtune's networks laid out as SB3's,
    size SB3's networks like them, build the stock model, inject the weights, and record the reward transform.
    """
    sb3_algo = _validate(loaded, action_space, sb3_algo)
    actor, critics, critics_left_out = _folded_networks(loaded, observation_space, sb3_algo)
    policy_kwargs = network_sizes(actor, critics)
    hyperparameters = _hyperparameters(loaded, sb3_algo, actor)
    model = _stock_model(sb3_algo, observation_space, action_space, policy_kwargs, hyperparameters)
    _inject_weights(model, sb3_state_dict(sb3_algo, actor, critics))
    return SB3Model(model, sb3_algo, _policy_name(observation_space), policy_kwargs, _describe(hyperparameters),
                    critics is not None, _record_reward_transform(model, loaded),
                    _notes(loaded.algo, sb3_algo, actor, critics_left_out))


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
                     error, built.reward_transform, built.notes)


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

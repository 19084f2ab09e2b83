"""SPOT: Supported Policy Optimization (Wu et al., NeurIPS 2022), as thuml/SPOT does it.

Stage 0 (``prepare``): a conditional VAE learns the behaviour density, then is frozen for good:
    encoder concat(s, a) -> 750 -> 750 (ReLU) -> μ_z, log σ_z ∈ [-4, 15], latent 2|A|;
    decoder concat(s, z) -> 750 -> 750 (ReLU) -> tanh;  Adam 1e-3, ``vae_steps`` iterations;
    L_VAE = mean((dec(s, z) - a)²) + β · (-½ · mean(1 + log σ_z² - μ_z² - σ_z²)),  z = μ_z + σ_z ε, β = 0.5.

Then TD3 with a support penalty, one gradient step per batch (s, a, r, s', d):
    critic: a' = clip(π̄(s') + clip(N(0, 0.2), ±0.5), ±1);  y = r + γ (1 - d) min(Q̄₁, Q̄₂)(s', a');
            L_Q = mean((Q₁ - y)²) + mean((Q₂ - y)²)
    actor (every ``policy_freq`` = 2 steps):
            L_π = -mean(Q₁(s, π(s))) / mean|Q₁(s, π(s))|.detach() + λ · mean(neg_log_beta(s, π(s)))
            where neg_log_beta(s, a) = mean over L samples and action dims of (dec(s, z) - a)²
                                        + β · KL(q(z|s, a) ‖ N(0, I)) averaged over latent dims,
            an affine function of -ELBO (the published λ values assume these means); with ``iwae`` it is
            -log of the importance-weighted estimate over L samples (decoder std √(β/4)). Gradients
            flow through the frozen VAE into π(s).
    targets: Q̄ and π̄ Polyak-averaged (0.005) only on actor steps.

The target actor keeps dropout active when it picks a' (the official code deep-copies the actor in training
mode and never switches the copy to eval), and so does this port. Online, λ cools linearly
(``anneal``) and the discount may switch (``online_discount``); optimiser states carry over, as the
official fine-tuning reloads them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.policies.config import at_least, within
from offtune.policies.networks import (
    Critic,
    adam,
    eval_mode,
    gaussian_log_prob,
    mlp,
    soft_update,
    uniform_head_init_,
)
from offtune.policies.steps import CompiledUpdate, descend, init_adam_state


@dataclass
class SPOTConfig:
    """SPOT hyper-parameters; defaults are the official gym-locomotion ones (``configs/offline/*.yml``).

    λ (``lam``) is per dataset in the official configs; :func:`offtune.policies.presets.preset` sets it.
    """

    batch_size: int = 256
    discount: float = 0.99
    hidden_dims: tuple[int, ...] = (256, 256)
    reward_transform: str = "identity"
    normalize_observations: bool = True
    dataset_action_clip: float = 0.0
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    target_update_rate: float = 0.005
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    actor_dropout: float = 0.1
    """Dropout after each hidden Linear of the actor, before the ReLU (0 on AntMaze)."""
    actor_head_init: float | None = None
    """U(±x) init of the actor's last layer (AntMaze 1e-3); None keeps PyTorch's default."""
    critic_head_init: float | None = None
    """U(±x) init of the critics' last layer (AntMaze 3e-3); None keeps PyTorch's default."""
    lam: float = 1.0
    """λ, the weight of the support penalty (the official command-line default; presets set it per task)."""
    lam_end: float = 0.2
    """Online, λ_t = λ · max(lam_end, 1 - progress)."""
    q_normalization: bool = True
    """Divide the Q term by the detached mean |Q| (False is the official ``--without_Q_norm``)."""
    online_discount: float | None = None
    """Discount for the online phase (0.995 on the large AntMazes); None keeps ``discount``."""
    exploration_noise: float = 0.1
    exploration_noise_clip: float | None = None
    """Online actions are clip(π(s) + N(0, exploration_noise), ±1), the noise cut at ±exploration_noise_clip when
    set. None is the official code (thuml/SPOT finetune: ``action = (policy.select_action(state) +
    np.random.normal(0, max_action * args.expl_noise, size=action_dim)).clip(-max_action, max_action)``);
    CORL clips the noise at ±0.5."""
    vae_steps: int = 100_000
    vae_lr: float = 1e-3
    vae_hidden_dim: int = 750
    vae_latent_dim: int | None = None
    """None means 2 · |A|."""
    vae_kl_weight: float = 0.5
    """β of the VAE loss and of neg_log_beta."""
    num_samples: int = 1
    """L, the latent samples per state-action in neg_log_beta."""
    iwae: bool = False
    """Use the importance-weighted estimate of -log π_β instead of the mean-reduced ELBO."""

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "hidden_dims", "policy_freq", "vae_hidden_dim", "vae_latent_dim", "num_samples")
        at_least(self, 0, "vae_steps", "actor_lr", "critic_lr", "vae_lr", "policy_noise", "noise_clip", "lam",
                 "exploration_noise", "exploration_noise_clip", "vae_kl_weight")
        within(self, 0.0, 1.0, "discount", "online_discount", "target_update_rate", "actor_dropout", "lam_end",
               "dataset_action_clip")


class ConditionalVAE(nn.Module):
    """q(z|s, a) and p(a|s, z) with ``networks.mlp`` trunks; the encoder's one head holds μ_z and log σ_z."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = mlp(obs_dim + action_dim, (hidden_dim, hidden_dim), 2 * latent_dim)
        self.decoder = mlp(obs_dim + latent_dim, (hidden_dim, hidden_dim), action_dim).append(nn.Tanh())

    def encode(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ_z and log σ_z (clamped to [-4, 15] as the official code, for numerical stability)."""
        mean, log_std = self.encoder(torch.cat([observations, actions], -1)).chunk(2, dim=-1)
        return mean, log_std.clamp(-4.0, 15.0)

    def decode(self, observations: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([observations, latents], -1))

    def _sample(self, observations, actions, samples: int):
        """L reparameterised latents per pair: (μ_z, log σ_z) of shape (B, Z), z and dec(s, z) of (B, L, ·)."""
        mean, log_std = self.encode(observations, actions)
        shape = (mean.shape[0], samples, mean.shape[1])
        latents = mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * torch.randn(shape, device=mean.device)
        repeated = observations.unsqueeze(1).expand(-1, samples, -1)
        return mean, log_std, latents, self.decode(repeated, latents)

    def loss(self, observations: torch.Tensor, actions: torch.Tensor, kl_weight: float):
        """Training loss mean((dec - a)²) + β · KL, both averaged over the batch and their dimensions."""
        mean, log_std, _, reconstruction = self._sample(observations, actions, 1)
        reconstruction_loss = (reconstruction.squeeze(1) - actions).square().mean()
        kl = kl_to_standard_normal(mean, log_std).mean()
        return reconstruction_loss + kl_weight * kl, reconstruction_loss, kl

    def neg_log_beta(
        self, observations: torch.Tensor, actions: torch.Tensor, kl_weight: float, samples: int
    ) -> torch.Tensor:
        """Per pair: mean over samples and action dims of (dec(s, z) - a)² + β · KL averaged over latents."""
        mean, log_std, _, reconstruction = self._sample(observations, actions, samples)
        reconstruction_error = (reconstruction - actions.unsqueeze(1)).square().mean(dim=(1, 2))
        return reconstruction_error + kl_weight * kl_to_standard_normal(mean, log_std).mean(-1)

    def neg_log_beta_iwae(
        self, observations: torch.Tensor, actions: torch.Tensor, kl_weight: float, samples: int
    ) -> torch.Tensor:
        """-log((1/L) Σ_l p(a|s, z_l) p(z_l) / q(z_l|s, a)), decoder N(dec(s, z), β/4), z_l ~ q(z|s, a)."""
        mean, log_std, latents, reconstruction = self._sample(observations, actions, samples)
        log_p_a = gaussian_log_prob(actions.unsqueeze(1), reconstruction, math.sqrt(kl_weight / 4)).sum(-1)
        log_p_z = gaussian_log_prob(latents, torch.zeros_like(latents), 1.0).sum(-1)
        log_q_z = gaussian_log_prob(latents, mean.unsqueeze(1), log_std.exp().unsqueeze(1)).sum(-1)
        log_weights = log_p_a + log_p_z - log_q_z
        return -(torch.logsumexp(log_weights, dim=1) - math.log(samples))


def kl_to_standard_normal(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Elementwise -½ (1 + log σ² - μ² - σ²) = KL(N(μ, σ²) ‖ N(0, 1)) per latent dimension."""
    return -0.5 * (1.0 + 2.0 * log_std - mean.square() - (2.0 * log_std).exp())


def target_actions(target_actions_mean: torch.Tensor, policy_noise: float, noise_clip: float) -> torch.Tensor:
    """TD3 target policy smoothing: clip(π̄(s') + clip(N(0, policy_noise), ±noise_clip), ±1)."""
    noise = (torch.randn_like(target_actions_mean) * policy_noise).clamp(-noise_clip, noise_clip)
    return (target_actions_mean + noise).clamp(-1.0, 1.0)


def normalized_actor_loss(
    q_pi: torch.Tensor, neg_log_beta: torch.Tensor, lam: float | torch.Tensor, q_normalization: bool
) -> torch.Tensor:
    """-mean(Q₁(s, π(s))) / mean|Q₁(s, π(s))|.detach() + λ · mean(neg_log_beta(s, π(s)))."""
    q_term = -q_pi.mean()
    if q_normalization:
        q_term = q_term / q_pi.abs().mean().detach()
    return q_term + lam * neg_log_beta.mean()


class SPOTAgent:
    """A deterministic TD3 actor, twin critics (one batched ensemble) and a frozen conditional VAE."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: SPOTConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config = config or SPOTConfig()
        self.device = torch.device(device)
        hidden = tuple(config.hidden_dims)
        self.actor = mlp(
            obs_dim, hidden, action_dim, dropout=config.actor_dropout, dropout_before_activation=True
        ).append(nn.Tanh())
        self.critic = Critic(obs_dim, action_dim, hidden)
        if config.actor_head_init is not None:
            uniform_head_init_(self.actor, config.actor_head_init)
        if config.critic_head_init is not None:
            uniform_head_init_(self.critic, config.critic_head_init)
        latent_dim = config.vae_latent_dim or 2 * action_dim
        self.vae = ConditionalVAE(obs_dim, action_dim, latent_dim, config.vae_hidden_dim)
        for net in (self.actor, self.critic, self.vae):
            net.to(self.device)
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), config.critic_lr)
        self.vae_optimizer: torch.optim.Adam | None = adam(self.vae.parameters(), config.vae_lr)
        self.vae_updates = 0
        self.updates = 0
        self.discount = config.discount
        self.lam = config.lam
        self._lam = torch.tensor(config.lam, device=self.device)
        """λ as a tensor, for a compiled update (a float would recompile it whenever λ cools)."""
        zero = torch.zeros((), device=self.device)
        self._actor_metrics = {"actor_loss": zero, "neg_log_beta": zero, "q_pi": zero}
        self._update_step = self._update

    def prepare(self, sample: Callable[[int], Batch], progress: Callable[[int, dict], None]) -> None:
        """Train the VAE for the remaining of ``vae_steps`` iterations, then freeze it for good."""
        config = self.config
        self.vae.train()
        while self.vae_updates < config.vae_steps and self.vae_optimizer is not None:
            batch = sample(config.batch_size)
            loss, reconstruction, kl = self.vae.loss(batch.observations, batch.actions, config.vae_kl_weight)
            self.vae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_optimizer.step()
            self.vae_updates += 1
            progress(
                self.vae_updates,
                {"vae_loss": loss.detach(), "vae_reconstruction": reconstruction.detach(), "vae_kl": kl.detach()},
            )
        self._freeze_vae()

    def _freeze_vae(self) -> None:
        self.vae.requires_grad_(False).eval()
        self.vae_optimizer = None

    def neg_log_beta(self, observations: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The support penalty per state: ELBO-based (default) or importance-weighted (``iwae``)."""
        config = self.config
        estimate = self.vae.neg_log_beta_iwae if config.iwae else self.vae.neg_log_beta
        return estimate(observations, actions, config.vae_kl_weight, config.num_samples)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.updates += 1
        actor_turn = self.updates % self.config.policy_freq == 0
        self.actor.train()
        metrics = self._update_step(batch, actor_turn)
        if actor_turn:
            self._actor_metrics = {name: metrics[name] for name in self._actor_metrics}
        return {**self._actor_metrics, **metrics}

    def _update(self, batch: Batch, actor_turn: bool) -> dict[str, torch.Tensor]:
        """The gradient step proper: what ``compile`` compiles (one graph per value of ``actor_turn``)."""
        config = self.config
        observations, actions, rewards, next_observations, dones = batch

        with torch.no_grad():
            next_actions = target_actions(self.target_actor(next_observations), config.policy_noise, config.noise_clip)
            next_q = self.target_critic(next_observations, next_actions).min(dim=0).values
            targets = rewards + self.discount * (1.0 - dones) * next_q

        def critic_loss_of(critic: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            q = critic(observations, actions)
            return (q - targets).square().mean(dim=1).sum(), q.detach().mean()

        critic_loss, q = descend(self.critic_optimizer, self.critic, critic_loss_of)
        metrics = {"critic_loss": critic_loss, "q": q}
        if not actor_turn:
            return metrics

        def actor_loss_of(actor: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            pi = actor(observations)
            q_pi = self.critic.member(0, observations, pi)
            neg_log_beta = self.neg_log_beta(observations, pi)
            actor_loss = normalized_actor_loss(q_pi, neg_log_beta, self._lam, config.q_normalization)
            return actor_loss, {"neg_log_beta": neg_log_beta.detach().mean(), "q_pi": q_pi.detach().mean()}

        actor_loss, actor_metrics = descend(self.actor_optimizer, self.actor, actor_loss_of)
        soft_update(self.target_critic, self.critic, config.target_update_rate)
        soft_update(self.target_actor, self.actor, config.target_update_rate)
        return {**metrics, "actor_loss": actor_loss, **actor_metrics}

    def compile(self) -> CompiledUpdate:
        """Run every update as one ``torch.compile``'d graph (see ``offtune.policies.steps``)."""
        for optimizer in (self.actor_optimizer, self.critic_optimizer):
            init_adam_state(optimizer)
        self._update_step = CompiledUpdate(self._update)
        return self._update_step

    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """π(s) with dropout off; with ``deterministic=False`` the exploration actions."""
        if not deterministic:
            return self.explore(observations)
        with eval_mode(self.actor):
            return self.actor(observations)

    @torch.no_grad()
    def explore(self, observations: torch.Tensor) -> torch.Tensor:
        """clip(π(s) + N(0, σ), ±1), σ = ``exploration_noise``; the noise is cut only at ``exploration_noise_clip``."""
        with eval_mode(self.actor):
            actions = self.actor(observations)
        noise = torch.randn_like(actions) * self.config.exploration_noise
        if self.config.exploration_noise_clip is not None:
            noise = noise.clamp(-self.config.exploration_noise_clip, self.config.exploration_noise_clip)
        return (actions + noise).clamp(-1.0, 1.0)

    def on_offline_start(self, total_steps: int) -> None:
        """SPOT has no offline schedule."""

    def on_online_start(self) -> None:
        """Switch to the online discount (if any) and start λ at its offline value; optimisers carry over.

        The update counter restarts, as in the official ``main_finetune.py`` (a new agent that loads the
        weights), so the actor's every-``policy_freq`` cycle starts afresh.
        """
        self.updates = 0
        if self.config.online_discount is not None:
            self.discount = self.config.online_discount
        self.anneal(0.0)

    def anneal(self, progress: float) -> None:
        """λ_t = λ · max(λ_end, 1 - progress), progress = online step / online steps T.

        The official code uses t / 1e6 with T = 1e6 online steps, so the floor λ_end · λ is reached at 80%.
        """
        self.lam = self.config.lam * max(self.config.lam_end, 1.0 - progress)
        self._lam.fill_(self.lam)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "target_actor": self.target_actor.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "vae": self.vae.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "vae_updates": self.vae_updates,
            "updates": self.updates,
            "discount": self.discount,
            "lam": self.lam,
        }
        if self.vae_optimizer is not None:
            state["vae_optimizer"] = self.vae_optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.target_actor.load_state_dict(state["target_actor"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.vae.load_state_dict(state["vae"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.vae_updates = state["vae_updates"]
        self.updates = state["updates"]
        self.discount = state["discount"]
        self.lam = state["lam"]
        self._lam.fill_(self.lam)
        if "vae_optimizer" in state:
            self.vae_optimizer = adam(self.vae.parameters(), self.config.vae_lr)
            self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        else:
            self._freeze_vae()

    def actor_module(self) -> nn.Module:
        """The deterministic policy π(s): Linear-ReLU-...-Linear-ReLU-Linear-Tanh.

        Built from the live actor's layers (parameters shared, dropout left out: it is the identity when
        acting), so an exporter can copy the Linear weights into an SB3 TD3 actor.
        """
        return nn.Sequential(*(m for m in self.actor if not isinstance(m, nn.Dropout)))

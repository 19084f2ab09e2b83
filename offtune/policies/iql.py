"""IQL: Implicit Q-Learning (Kostrikov, Nair, Levine, ICLR 2022), as ikostrikov/implicit_q_learning does it.

One gradient step, batch (s, a, r, s', d), in the official order:

1. value:  q̂ = min(Q̄₁, Q̄₂)(s, a) from the *target* critics;
           L_V = mean(|τ - 1(q̂ - V(s) < 0)| · (q̂ - V(s))²)                       (expectile regression)
2. actor:  w = min(exp(β · (q̂ - V(s))), 100) with the *freshly updated* V;  L_π = -mean(w · log π(a|s))
3. critic: y = r + γ (1 - d) V(s') with the updated V;  L_Q = mean((Q₁ - y)² + (Q₂ - y)²)
4. target: Q̄ ← 0.005 Q + 0.995 Q̄, every step (there is no target V).

The actor is a plain Gaussian N(tanh(μ(s)), diag(σ²)) with a state-independent, learned log σ: it is not
tanh-squashed, so dataset log-probabilities carry no Jacobian term and β keeps the meaning it has in the
official configs. All kernels use orthogonal init with gain √2 and zero biases, as Flax ``default_init``.
The actor learning rate follows a cosine decay to 0 over the offline steps; online it is constant at its
base value (the official fine-tuning keeps rates constant; letting the offline cosine carry on would
leave the actor frozen near lr 0 for the first online steps, the CORL pitfall).
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
    orthogonal_init_,
    soft_update,
)
from offtune.policies.steps import CompiledUpdate, descend, init_adam_state


@dataclass
class IQLConfig:
    """IQL hyper-parameters; defaults are the official gym-locomotion ones (``configs/mujoco_config.py``)."""

    batch_size: int = 256
    discount: float = 0.99
    hidden_dims: tuple[int, ...] = (256, 256)
    reward_transform: str = "locomotion_return_scale"
    normalize_observations: bool = False
    dataset_action_clip: float = 1 - 1e-5
    actor_lr: float = 3e-4
    value_lr: float = 3e-4
    critic_lr: float = 3e-4
    target_update_rate: float = 0.005
    expectile: float = 0.7
    """τ of the expectile value loss (0.9 on AntMaze)."""
    beta: float = 3.0
    """Inverse temperature β of the advantage weights (the official config calls it ``temperature``)."""
    max_advantage_weight: float = 100.0
    actor_dropout: float = 0.0
    cosine_actor_lr: bool = True
    """Cosine-decay the actor lr to 0 over the offline steps (the official offline configs do)."""
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    exploration_temperature: float = 1.0
    """Online actions are sampled from N(tanh μ, (temperature · σ)²), clipped to [-1, 1]."""

    def __post_init__(self) -> None:
        at_least(self, 1, "batch_size", "hidden_dims")
        at_least(self, 0.0, "actor_lr", "value_lr", "critic_lr", "beta", "max_advantage_weight",
                 "exploration_temperature")
        within(self, 0.0, 1.0, "discount", "expectile", "target_update_rate", "actor_dropout", "dataset_action_clip")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean(|τ - 1(diff < 0)| · diff²) with diff = q̂ - V(s): weight τ above V, 1 - τ below."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.square()).mean()


def advantage_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """AWR weights min(exp(β · A), max_weight)."""
    return torch.exp(beta * advantage).clamp(max=max_weight)


def critic_target(rewards: torch.Tensor, dones: torch.Tensor, next_values: torch.Tensor, discount: float):
    """y = r + γ (1 - d) V(s')."""
    return rewards + discount * (1.0 - dones) * next_values


def policy_log_prob(mean: torch.Tensor, std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log π(a|s) of the actor's (mean, std), summed over action dimensions (no tanh Jacobian: the
    distribution is not squashed)."""
    return gaussian_log_prob(actions, mean, std).sum(-1)


class GaussianActor(nn.Module):
    """π(a|s) = N(tanh(μ(s)), diag(σ²)), σ = exp(clip(log σ, min, max)), log σ a learned vector (init 0).

    ``mean_net`` is a ``networks.mlp`` Sequential followed by Tanh:
    Linear-ReLU[-Dropout]-...-Linear-ReLU[-Dropout]-Linear-Tanh (ReLU after the last hidden layer, as
    the official ``MLP(activate_final=True)`` trunk followed by a Dense mean head).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: tuple[int, ...],
        dropout: float,
        log_std_min: float,
        log_std_max: float,
    ) -> None:
        super().__init__()
        self.mean_net = mlp(obs_dim, hidden_dims, action_dim, dropout=dropout).append(nn.Tanh())
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean tanh(μ(s)) and the standard deviation σ."""
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
        return self.mean_net(observations), std

    def sample(self, observations: torch.Tensor, temperature: float) -> torch.Tensor:
        """a ~ N(tanh μ, (temperature · σ)²), clipped to [-1, 1] like the official ``sample_actions``."""
        mean, std = self(observations)
        return (mean + temperature * std * torch.randn_like(mean)).clamp(-1.0, 1.0)


class IQLAgent:
    """Twin critics Q (one batched ensemble), a state-value V and a Gaussian actor; see the module doc."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        config: IQLConfig | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config = config or IQLConfig()
        self.device = torch.device(device)
        hidden = tuple(config.hidden_dims)
        self.actor = GaussianActor(
            obs_dim, action_dim, hidden, config.actor_dropout, config.log_std_min, config.log_std_max
        )
        self.value = mlp(obs_dim, hidden, 1)
        self.critic = Critic(obs_dim, action_dim, hidden)
        for net in (self.actor, self.value, self.critic):
            orthogonal_init_(net)
            net.to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), config.actor_lr)
        self.value_optimizer = adam(self.value.parameters(), config.value_lr)
        self.critic_optimizer = adam(self.critic.parameters(), config.critic_lr)
        self.updates = 0
        self.actor_lr_decay_steps = 0
        """Length of the cosine actor-lr decay in updates; 0 keeps the actor lr constant."""
        self._actor_lr = torch.tensor(config.actor_lr, device=self.device)
        """The scheduled actor lr as a tensor, for a compiled update (a float would recompile it every step)."""
        self._update_step = self._update

    def actor_lr(self) -> float:
        """Cosine decay base · ½(1 + cos(π · min(t, T) / T)) over T offline updates (optax schedule)."""
        total = self.actor_lr_decay_steps
        if total <= 0:
            return self.config.actor_lr
        progress = min(self.updates, total) / total
        return self.config.actor_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        lr = self.actor_lr()
        for group in self.actor_optimizer.param_groups:
            group["lr"] = lr
        self._actor_lr.fill_(lr)
        self.actor.train()
        metrics = self._update_step(batch)
        self.updates += 1
        return metrics

    def _update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The gradient step proper, without Python state: what ``compile`` compiles."""
        config = self.config
        observations, actions, rewards, next_observations, dones = batch

        with torch.no_grad():
            target_q = self.target_critic(observations, actions).min(dim=0).values

        # 1. V(s) regresses towards the τ-expectile of q̂ = min Q̄(s, a).
        def value_loss_of(value: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            values = value(observations).squeeze(-1)
            return expectile_loss(target_q - values, config.expectile), values.detach()

        value_loss, values_before_step = descend(self.value_optimizer, self.value, value_loss_of)

        # 2. Advantage-weighted regression with the updated V; V(s') for the critic from the same pass.
        with torch.no_grad():
            both = self.value(torch.cat([observations, next_observations])).squeeze(-1)
            updated_values, next_values = both.chunk(2)
            advantage = target_q - updated_values
            weights = advantage_weights(advantage, config.beta, config.max_advantage_weight)

        def actor_loss_of(actor: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict]:
            return -(weights * policy_log_prob(*actor(observations), actions)).mean(), {}

        actor_loss, _ = descend(self.actor_optimizer, self.actor, actor_loss_of, lr=self._actor_lr)

        # 3. Both critics regress on y = r + γ (1 - d) V(s').
        targets = critic_target(rewards, dones, next_values, config.discount)

        def critic_loss_of(critic: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            q = critic(observations, actions)
            return (q - targets).square().sum(dim=0).mean(), q.detach()

        critic_loss, q = descend(self.critic_optimizer, self.critic, critic_loss_of)

        # 4. Polyak-average the target critics every step.
        soft_update(self.target_critic, self.critic, config.target_update_rate)
        return {
            "value_loss": value_loss,
            "actor_loss": actor_loss,
            "critic_loss": critic_loss,
            "q": q.mean(),
            "v": values_before_step.mean(),  # as the official ``update_v`` logs it
            "advantage": advantage.mean(),
            "advantage_weight": weights.mean(),
        }

    def compile(self) -> CompiledUpdate:
        """Run every update as one ``torch.compile``'d graph (see ``offtune.policies.steps``)."""
        for optimizer in (self.value_optimizer, self.actor_optimizer, self.critic_optimizer):
            init_adam_state(optimizer)
        self._update_step = CompiledUpdate(self._update)
        return self._update_step

    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """tanh(μ(s)) when deterministic (evaluation), else a temperature-1 sample; dropout off."""
        with eval_mode(self.actor):
            if deterministic:
                return self.actor(observations)[0]
            return self.actor.sample(observations, 1.0)

    @torch.no_grad()
    def explore(self, observations: torch.Tensor) -> torch.Tensor:
        """Online actions: samples of the Gaussian policy at ``exploration_temperature``, clipped to ±1."""
        with eval_mode(self.actor):
            return self.actor.sample(observations, self.config.exploration_temperature)

    def prepare(self, sample: Callable[[int], Batch], progress: Callable[[int, dict], None]) -> None:
        """IQL has no stage before the actor-critic updates."""

    def on_offline_start(self, total_steps: int) -> None:
        """Spread the cosine actor-lr decay over the ``total_steps`` offline updates.

        Idempotent (the schedule reads the restored update counter), so a resumed run may call it again.
        """
        self.actor_lr_decay_steps = total_steps if self.config.cosine_actor_lr else 0

    def on_online_start(self) -> None:
        """Constant actor lr at its base value from here on, as the official fine-tuning."""
        self.actor_lr_decay_steps = 0
        for group in self.actor_optimizer.param_groups:
            group["lr"] = self.config.actor_lr

    def anneal(self, progress: float) -> None:
        """IQL has no online schedule."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "value": self.value.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "updates": self.updates,
            "actor_lr_decay_steps": self.actor_lr_decay_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.value.load_state_dict(state["value"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.updates = state["updates"]
        self.actor_lr_decay_steps = state["actor_lr_decay_steps"]

    def actor_module(self) -> nn.Module:
        """The deterministic policy tanh(μ(s)): Linear-ReLU-...-Linear-ReLU-Linear-Tanh.

        Built from the live actor's layers (parameters shared, dropout left out: it is the identity when
        acting), so an exporter can copy the Linear weights into an SB3 TD3 actor.
        """
        return nn.Sequential(*(m for m in self.actor.mean_net if not isinstance(m, nn.Dropout)))

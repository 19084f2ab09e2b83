"""IQL and SPOT updates written the way most public PyTorch code writes them: the yardstick for offtune's speed.

Deliberately plain, and sharing nothing with offtune: two separate critic MLPs (each with its own
target copy and its own Adam), one Adam per network with PyTorch's default kernels, ``torch.distributions``
for log-probabilities, Polyak averaging parameter by parameter, ``.item()`` on every loss every step, and
batches drawn with numpy on the host and copied to the device. The math is the official code's
(ikostrikov/implicit_q_learning and thuml/SPOT; /work/shared/reference/algorithms.md §1.2 and §2.3), so
``tests/test_reference_equivalence.py`` can check that offtune computes the same losses on the same weights.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal


class NumpyReplayBuffer:
    """Transitions kept in host numpy arrays; each batch is indexed on the host and copied to the device."""

    def __init__(self, observations, actions, rewards, next_observations, dones, device="cpu", seed=0) -> None:
        self.observations = np.asarray(observations, dtype=np.float32)
        self.actions = np.asarray(actions, dtype=np.float32)
        self.rewards = np.asarray(rewards, dtype=np.float32).reshape(-1, 1)
        self.next_observations = np.asarray(next_observations, dtype=np.float32)
        self.not_dones = 1.0 - np.asarray(dones, dtype=np.float32).reshape(-1, 1)
        self.size = len(self.rewards)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """(s, a, r, s', 1 - d), rewards and masks of shape (B, 1)."""
        index = self.rng.integers(0, self.size, size=batch_size)
        arrays = (self.observations, self.actions, self.rewards, self.next_observations, self.not_dones)
        return tuple(torch.tensor(array[index], device=self.device) for array in arrays)


def two_layer_mlp(in_dim: int, out_dim: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    for target_param, param in zip(target.parameters(), source.parameters(), strict=True):
        target_param.data.copy_(tau * param.data + (1 - tau) * target_param.data)


class QNetwork(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = two_layer_mlp(obs_dim + action_dim, 1, hidden)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], 1))


class IQLGaussianPolicy(nn.Module):
    """N(tanh(MLP(s)), diag(exp(clip(log σ, -5, 2))²)), log σ a learned state-independent vector."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = two_layer_mlp(obs_dim, action_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, state: torch.Tensor) -> Normal:
        mean = torch.tanh(self.net(state))
        std = torch.exp(self.log_std.clamp(-5.0, 2.0))
        return Normal(mean, std)


def orthogonal_init(module: nn.Module) -> None:
    """Flax ``default_init``: orthogonal kernels with gain √2, zero biases."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, math.sqrt(2.0))
            nn.init.zeros_(layer.bias)


class ReferenceIQL:
    """IQL in the official update order: V (target critics), actor (updated V), critics (updated V(s')), targets."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        device: str | torch.device = "cpu",
        hidden: int = 256,
        lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.005,
        expectile: float = 0.7,
        beta: float = 3.0,
        max_steps: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.discount, self.tau, self.expectile, self.beta = discount, tau, expectile, beta
        self.q1 = QNetwork(obs_dim, action_dim, hidden)
        self.q2 = QNetwork(obs_dim, action_dim, hidden)
        self.value = two_layer_mlp(obs_dim, 1, hidden)
        self.actor = IQLGaussianPolicy(obs_dim, action_dim, hidden)
        for net in (self.q1, self.q2, self.value, self.actor):
            orthogonal_init(net)
            net.to(self.device)
        self.q1_target = copy.deepcopy(self.q1)
        self.q2_target = copy.deepcopy(self.q2)
        self.q1_optimizer = torch.optim.Adam(self.q1.parameters(), lr=lr)
        self.q2_optimizer = torch.optim.Adam(self.q2.parameters(), lr=lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.actor_scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, max_steps) if max_steps else None
        )

    def train(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        state, action, reward, next_state, not_done = batch

        with torch.no_grad():
            target_q = torch.min(self.q1_target(state, action), self.q2_target(state, action))
        v = self.value(state)
        diff = target_q - v
        weight = torch.abs(self.expectile - (diff < 0).float())
        value_loss = (weight * diff**2).mean()
        self.value_optimizer.zero_grad()
        value_loss.backward()
        self.value_optimizer.step()

        with torch.no_grad():
            advantage = target_q - self.value(state)
            exp_advantage = torch.exp(self.beta * advantage).clamp(max=100.0)
        log_prob = self.actor(state).log_prob(action).sum(-1, keepdim=True)
        actor_loss = -(exp_advantage * log_prob).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        if self.actor_scheduler is not None:
            self.actor_scheduler.step()

        with torch.no_grad():
            target = reward + self.discount * not_done * self.value(next_state)
        q1 = self.q1(state, action)
        q2 = self.q2(state, action)
        critic_loss = ((q1 - target) ** 2 + (q2 - target) ** 2).mean()
        self.q1_optimizer.zero_grad()
        self.q2_optimizer.zero_grad()
        critic_loss.backward()
        self.q1_optimizer.step()
        self.q2_optimizer.step()

        soft_update(self.q1_target, self.q1, self.tau)
        soft_update(self.q2_target, self.q2, self.tau)
        return {
            "value_loss": value_loss.item(),
            "actor_loss": actor_loss.item(),
            "critic_loss": critic_loss.item(),
            "q": q1.mean().item(),
            "v": v.mean().item(),
        }


class SPOTActor(nn.Module):
    """s -> 256 -> 256 -> |A|, Dropout before each hidden ReLU (when p > 0), output tanh."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.l1 = nn.Linear(obs_dim, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, action_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.dropout(self.l1(state)))
        a = F.relu(self.dropout(self.l2(a)))
        return torch.tanh(self.l3(a))


class VAE(nn.Module):
    """Conditional VAE: encoder concat(s, a) -> 750 -> 750 -> (μ, log σ), decoder concat(s, z) -> 750 -> 750 -> tanh."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, hidden: int = 750) -> None:
        super().__init__()
        self.e1 = nn.Linear(obs_dim + action_dim, hidden)
        self.e2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, latent_dim)
        self.log_std = nn.Linear(hidden, latent_dim)
        self.d1 = nn.Linear(obs_dim + latent_dim, hidden)
        self.d2 = nn.Linear(hidden, hidden)
        self.d3 = nn.Linear(hidden, action_dim)

    def encode(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.relu(self.e1(torch.cat([state, action], -1)))
        z = F.relu(self.e2(z))
        return self.mean(z), self.log_std(z).clamp(-4, 15).exp()

    def decode(self, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.d1(torch.cat([state, z], -1)))
        a = F.relu(self.d2(a))
        return torch.tanh(self.d3(a))

    def elbo_loss(self, state: torch.Tensor, action: torch.Tensor, beta: float, num_samples: int = 1) -> torch.Tensor:
        """Per pair: mean over samples and action dims of the squared reconstruction error + β · mean KL."""
        mean, std = self.encode(state, action)
        mean_s = mean.repeat(num_samples, 1, 1).permute(1, 0, 2)
        std_s = std.repeat(num_samples, 1, 1).permute(1, 0, 2)
        z = mean_s + std_s * torch.randn_like(std_s)
        state_s = state.repeat(num_samples, 1, 1).permute(1, 0, 2)
        action_s = action.repeat(num_samples, 1, 1).permute(1, 0, 2)
        reconstruction = self.decode(state_s, z)
        reconstruction_loss = ((reconstruction - action_s) ** 2).mean(dim=(1, 2))
        kl_loss = -0.5 * (1 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2)).mean(-1)
        return reconstruction_loss + beta * kl_loss


class ReferenceSPOT:
    """TD3 with the ELBO support penalty: critic every step, actor and both targets every ``policy_freq``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        device: str | torch.device = "cpu",
        hidden: int = 256,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        discount: float = 0.99,
        tau: float = 0.005,
        policy_noise: float = 0.2,
        noise_clip: float = 0.5,
        policy_freq: int = 2,
        lambd: float = 1.0,
        beta: float = 0.5,
        num_samples: int = 1,
        actor_dropout: float = 0.1,
        vae_hidden: int = 750,
    ) -> None:
        self.device = torch.device(device)
        self.discount, self.tau = discount, tau
        self.policy_noise, self.noise_clip, self.policy_freq = policy_noise, noise_clip, policy_freq
        self.lambd, self.beta, self.num_samples = lambd, beta, num_samples
        self.actor = SPOTActor(obs_dim, action_dim, hidden, actor_dropout).to(self.device)
        self.actor_target = copy.deepcopy(self.actor)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.q1 = QNetwork(obs_dim, action_dim, hidden).to(self.device)
        self.q2 = QNetwork(obs_dim, action_dim, hidden).to(self.device)
        self.q1_target = copy.deepcopy(self.q1)
        self.q2_target = copy.deepcopy(self.q2)
        self.q1_optimizer = torch.optim.Adam(self.q1.parameters(), lr=critic_lr)
        self.q2_optimizer = torch.optim.Adam(self.q2.parameters(), lr=critic_lr)
        self.vae = VAE(obs_dim, action_dim, 2 * action_dim, vae_hidden).to(self.device).eval()
        self.total_it = 0

    def train(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        self.total_it += 1
        state, action, reward, next_state, not_done = batch

        with torch.no_grad():
            noise = (torch.randn_like(action) * self.policy_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.actor_target(next_state) + noise).clamp(-1.0, 1.0)
            target_q = torch.min(self.q1_target(next_state, next_action), self.q2_target(next_state, next_action))
            target_q = reward + not_done * self.discount * target_q
        current_q1 = self.q1(state, action)
        current_q2 = self.q2(state, action)
        critic_loss = F.mse_loss(current_q1, target_q) + F.mse_loss(current_q2, target_q)
        self.q1_optimizer.zero_grad()
        self.q2_optimizer.zero_grad()
        critic_loss.backward()
        self.q1_optimizer.step()
        self.q2_optimizer.step()
        metrics = {"critic_loss": critic_loss.item(), "q": current_q1.mean().item()}

        if self.total_it % self.policy_freq == 0:
            pi = self.actor(state)
            q = self.q1(state, pi)
            neg_log_beta = self.vae.elbo_loss(state, pi, self.beta, self.num_samples)
            norm_q = 1 / q.abs().mean().detach()
            actor_loss = -norm_q * q.mean() + self.lambd * neg_log_beta.mean()
            self.actor_optimizer.zero_grad()
            actor_loss.backward()
            self.actor_optimizer.step()

            soft_update(self.q1_target, self.q1, self.tau)
            soft_update(self.q2_target, self.q2, self.tau)
            soft_update(self.actor_target, self.actor, self.tau)
            metrics.update(actor_loss=actor_loss.item(), neg_log_beta=neg_log_beta.mean().item())
        return metrics

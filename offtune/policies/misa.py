"""MISA: Mutual Information Regularized Offline RL (Ma, Kang, Xu, Lin, Yan, NeurIPS 2023).

MISA regularises policy evaluation and improvement with a lower bound on the mutual information
I(S; A) of the dataset's state–action pairs, whose critic is T(s, a) = log π_θ(a|s) + Q_φ(s, a). The
bound's terms split across the networks, as in the official code (sail-sg/MISA ``algos/misa.py``):

- critics: TD error plus γ₁·(log-partition of Q over K policy samples − Q at the dataset action),
  a CQL-like penalty with μ = π_θ;
- actor: a SAC actor with its entropy bonus and the data log-likelihood scaled by γ₂, plus the
  "unbiased gradient" term w_u·E[log π(a′|s)] over samples a′ of p(a|s) ∝ π(a|s)·exp(Q(s, a)) drawn by
  Hamiltonian Monte Carlo started at the dataset actions (``offtune.policies.hmc``).

Each network is updated only by its own loss's gradient: the policy and α descend the actor-side loss, the
critics and α′ the critic-side one, each side's loss from one forward pass of its networks, all reading the
networks as they were before the update (the HMC chains start from a no-grad pass of the policy).

Longer than the other algorithms (about 500 lines) because it stays one file, as each algorithm does: the
four MI-bound variants, the Lagrange form of the critic penalty and the online schedule all read next to
the losses they change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from offtune.buffers.replay import Batch
from offtune.errors import OfftuneError, suggest
from offtune.policies import hmc
from offtune.policies.config import at_least, positive, within
from offtune.policies.networks import Critic, EnsembleLinear, adam, soft_update
from offtune.policies.steps import CompiledSteps, CompiledUpdate, descend, init_adam_state

VARIANTS = ("misa", "dv", "nwj", "ba")
MEAN_BOUNDS = (-9.0, 9.0)
LOG_STD_BOUNDS = (-5.0, 2.0)
LAGRANGE_MAX = 1e6
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class MISAConfig:
    """MISA hyper-parameters; defaults are the official gym-locomotion release values.

    ``variant`` picks the mutual-information bound behind the critic penalty (see ``mi_penalty``), with
    dᵢ = T·logsumexp_j(Qᵢ(s, a_j)/T) − c − Qᵢ(s, a) per state and critic:

    - ``"misa"`` (default, the release): the per-state ("conditional partition function") bound,
      penalty mean_s dᵢ(s), with c = log(batch size) when ``log_k_norm`` (the release's constant shift,
      which the Lagrange gap assumes) and c = 0 otherwise;
    - ``"dv"``: Donsker–Varadhan / MINE, the log-partition over the whole batch: logsumexp_s dᵢ(s) −
      log B, with c = log K (the authors' pre-release ``gmine``);
    - ``"nwj"``: f-divergence / NWJ, e^{-1}·E[e^T]: mean_s exp(dᵢ(s) − 1), with c = log K (pre-release
      ``fmine``);
    - ``"ba"``: Barber–Agakov, no critic term: the critics learn by TD alone and the actor is
      likelihood-regularised; there is no log-partition, hence no unbiased-gradient (HMC) term either.

    K counts the dataset action too when ``add_positive``. For every variant but ``"ba"`` the HMC
    term is on offline when ``unbiased_grad``; online it stays on only if ``unbiased_online`` (off by
    default: it only corrects the behaviour-likelihood gradient and costs most of the update's time).

    Online, ``anneal(progress)`` sets γ₁ and γ₂ to base·max(end, 1 − progress), with ends
    ``min_q_weight_end`` (1.0: γ₁ stays) and ``bc_weight_end`` (0.2). The official code has no fine-tuning;
    this is our choice: γ₂, the actor's pull towards the data, cools like SPOT's λ (to 0.2·γ₂) so that the
    policy can leave the data; γ₁, the CQL-like critic penalty, stays: in our PointMaze runs cooling it
    too lost the early online gain halfway through fine-tuning, while cooling γ₂ alone kept improving.
    """

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    target_update_rate: float = 0.005
    hidden_dims: tuple[int, ...] = (256, 256)
    layer_norm: bool = False
    variant: str = "misa"
    min_q_weight: float = 5.0
    """γ₁, the weight of the critic penalty (``min_q_weight``)."""
    bc_weight: float = 0.5
    """γ₂, the weight of the actor's likelihood term and entropy bonus (``bc_weight_misa``)."""
    n_actions: int = 50
    """K, policy samples per state in the log-partition."""
    temperature: float = 1.0
    log_k_norm: bool = True
    add_positive: bool = False
    use_lagrange: bool = False
    """Tune γ₁'s multiplier α′ so the penalty meets ``target_action_gap`` (the AntMaze setting)."""
    target_action_gap: float = 3.0
    automatic_entropy: bool = True
    target_entropy: float | None = None
    """None means −|A|, the official experiments' setting."""
    alpha_multiplier: float = 1.0
    """α = exp(log α)·alpha_multiplier; without automatic entropy α = alpha_multiplier."""
    unbiased_grad: bool = True
    unbiased_weight: float = 0.1
    """w_u, the weight of the HMC term in the actor loss."""
    unbiased_online: bool = False
    hmc_burnin_steps: int = 5
    hmc_num_samples: int = 50
    hmc_leapfrog_steps: int = 2
    hmc_step_size: float = 1.0
    hmc_adaptation_steps: int | None = None
    """Steps of step-size adaptation; None is the official ``int(num_burnin_steps * 0.8)`` (MISA
    ``algos/misa.py``: ``num_adaptation_steps=int(self.num_burnin_steps * 0.8)``)."""
    reward_transform: str = "identity"
    normalize_observations: bool = False
    dataset_action_clip: float = 0.999
    min_q_weight_end: float = 1.0
    """Online, γ₁ cools to this fraction of ``min_q_weight``; 1.0 (default) keeps the critic penalty whole."""
    bc_weight_end: float = 0.2
    """Online, γ₂ cools to this fraction of ``bc_weight`` (1.0 keeps it)."""

    def __post_init__(self) -> None:
        check_variant(self.variant)
        at_least(self, 1, "batch_size", "hidden_dims", "n_actions", "hmc_num_samples", "hmc_leapfrog_steps")
        at_least(self, 0, "actor_lr", "critic_lr", "min_q_weight", "bc_weight", "unbiased_weight", "hmc_burnin_steps",
                 "hmc_adaptation_steps", "alpha_multiplier")
        positive(self, "temperature", "hmc_step_size", "dataset_action_clip")
        within(self, 0.0, 1.0, "discount", "target_update_rate", "min_q_weight_end", "bc_weight_end",
               "dataset_action_clip")


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise OfftuneError(
            f"unknown MISA variant '{variant}'; valid: {', '.join(VARIANTS)}.{suggest(variant, VARIANTS)}"
        )


def tanh_log_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
    """log(1 − tanh(u)²) per coordinate, written to stay finite for large |u|."""
    return 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))


def tanh_gaussian_log_prob(pre_tanh: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log π(tanh(u)) = Σ_d [log N(u_d; μ_d, σ_d) − log(1 − tanh(u_d)²)], summed over the last dim."""
    z = (pre_tanh - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _HALF_LOG_2PI - tanh_log_det_jacobian(pre_tanh)).sum(-1)


def alpha_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """SAC temperature loss L_α = −log α · mean(log π(ã|s) + H_target); ``log_pi`` is detached."""
    return -(log_alpha * (log_pi.detach() + target_entropy).mean())


def mi_penalty(
    q_samples: torch.Tensor,
    q_data: torch.Tensor,
    variant: str,
    temperature: float = 1.0,
    log_k_norm: bool = True,
    add_positive: bool = False,
) -> torch.Tensor:
    """The critic term of the MI bound for each critic: ``(members, B, K)``, ``(members, B)`` -> ``(members,)``.

    dᵢ(s) = T·logsumexp_j(Qᵢ(s, a_j)/T) − c − Qᵢ(s, a); the variants and c are described in
    :class:`MISAConfig`. (T·logsumexp((Q − c)/T) = T·logsumexp(Q/T) − c, so the release's shift
    inside the log-sum-exp is the same subtraction.)
    """
    check_variant(variant)
    if variant == "ba":
        return q_data.new_zeros(q_data.shape[0])
    candidates = torch.cat([q_samples, q_data.unsqueeze(-1)], dim=-1) if add_positive else q_samples
    batch_size, count = candidates.shape[-2], candidates.shape[-1]
    if variant == "misa":
        shift = math.log(batch_size) if log_k_norm else 0.0
    else:
        shift = math.log(count)
    log_partition = temperature * torch.logsumexp(candidates / temperature, dim=-1) - shift
    gap = log_partition - q_data
    if variant == "misa":
        return gap.mean(-1)
    if variant == "dv":
        return torch.logsumexp(gap, dim=-1) - math.log(batch_size)
    return torch.exp(gap - 1.0).mean(-1)


def lagrange_losses(
    log_alpha_prime: torch.Tensor, penalty: torch.Tensor, min_q_weight: float, target_gap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critic penalty α′·γ₁·(Pᵢ − g) (α′ detached) and α′'s loss −½·Σᵢ α′·γ₁·(Pᵢ − g) (Pᵢ detached).

    α′ = clip(exp(log α′), 0, 1e6) rises while the penalty exceeds the gap g and falls below it.
    """
    alpha_prime = log_alpha_prime.exp().clamp(0.0, LAGRANGE_MAX)
    critic_penalty = alpha_prime.detach() * min_q_weight * (penalty - target_gap)
    multiplier_loss = -0.5 * (alpha_prime * min_q_weight * (penalty.detach() - target_gap)).sum()
    return critic_penalty, multiplier_loss


def _lecun_normal_(weight: torch.Tensor) -> None:
    """Flax's default kernel init (truncated normal, variance 1/fan_in); dim 1 is fan-in for both
    ``nn.Linear`` (out, in) and ``EnsembleLinear`` (members, in, out)."""
    std = math.sqrt(1.0 / weight.shape[1]) / 0.87962566103423978
    nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def _small_uniform_(weight: torch.Tensor) -> None:
    """variance_scaling(1e-2, fan_in, uniform), the official output-layer init."""
    limit = math.sqrt(3.0 * 1e-2 / weight.shape[1])
    nn.init.uniform_(weight, -limit, limit)


class TanhGaussianPolicy(nn.Module):
    """π(a|s) = tanh(N(μ(s), σ(s))); ``forward`` is the deterministic action tanh(μ(s)).

    Layout, for exporters (it maps onto a Stable-Baselines3 SAC actor): ``trunk`` is
    ``Sequential(Linear, ReLU, Linear, ReLU)`` (= SB3 ``latent_pi``; a ``LayerNorm`` follows each
    ``Linear`` when ``layer_norm``, which SB3 cannot hold), ``mean_head`` is a ``Linear`` (= SB3 ``mu``),
    and log σ = ``log_std_scale``·``log_std_head``(h) + ``log_std_offset`` (= SB3 ``log_std`` with the two
    scalars folded into its weights), clipped to [−5, 2]. μ is clipped to [−9, 9] before tanh.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: tuple[int, ...], layer_norm: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if layer_norm:
                layers.append(nn.LayerNorm(size))
            layers.append(nn.ReLU())
            width = size
        self.trunk = nn.Sequential(*layers)
        self.mean_head = nn.Linear(width, action_dim)
        self.log_std_head = nn.Linear(width, action_dim)
        self.log_std_scale = nn.Parameter(torch.tensor(1.0))
        self.log_std_offset = nn.Parameter(torch.tensor(-1.0))
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):
                _lecun_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
        for head in (self.mean_head, self.log_std_head):
            _small_uniform_(head.weight)
            nn.init.zeros_(head.bias)

    def distribution(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ(s) and log σ(s) of the pre-tanh Gaussian."""
        hidden = self.trunk(observations)
        mean = self.mean_head(hidden).clamp(*MEAN_BOUNDS)
        log_std = self.log_std_scale * self.log_std_head(hidden) + self.log_std_offset
        return mean, log_std.clamp(*LOG_STD_BOUNDS)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean_head(self.trunk(observations)).clamp(*MEAN_BOUNDS))


def make_critic(obs_dim: int, action_dim: int, config: MISAConfig) -> Critic:
    """Twin ELU critics as one batched network, initialised like the official Flax networks."""
    critic = Critic(obs_dim, action_dim, config.hidden_dims, 2, "elu", config.layer_norm)
    linears = [layer for layer in critic.net if isinstance(layer, EnsembleLinear)]
    for layer in linears[:-1]:
        _lecun_normal_(layer.weight)
    _small_uniform_(linears[-1].weight)
    for layer in linears:
        nn.init.zeros_(layer.bias)
    return critic


def critic_at_states(critic: Critic, observations: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Q(s, ·) for a fixed batch of states, as a function of actions ``(B, A)`` -> ``(members, B)`` or
    ``(B, N, A)`` -> ``(members, B, N)``.

    The observation half of the first layer is computed once and shared by every action of the state
    (the K log-partition samples, each HMC gradient), instead of repeating the observations per action.
    """
    first = critic.net[0]
    rest = critic.net[1:]
    obs_dim = observations.shape[-1]
    members = first.weight.shape[0]
    obs_part = torch.baddbmm(
        first.bias, observations.unsqueeze(0).expand(members, -1, -1), first.weight[:, :obs_dim]
    )
    action_weight = first.weight[:, obs_dim:]

    def q_values(actions: torch.Tensor) -> torch.Tensor:
        if actions.dim() == 2:
            hidden = torch.baddbmm(obs_part, actions.unsqueeze(0).expand(members, -1, -1), action_weight)
            return rest(hidden).squeeze(-1)
        batch, count, action_dim = actions.shape
        flat = actions.reshape(1, batch * count, action_dim).expand(members, -1, -1)
        hidden = torch.bmm(flat, action_weight).view(members, batch, count, -1) + obs_part.unsqueeze(2)
        return rest(hidden.view(members, batch * count, -1)).view(members, batch, count)

    return q_values


class PolicyAndTemperature(nn.Module):
    """π_θ and SAC's log α, the parameters the actor-side loss descends: forward(s) = (μ(s), log σ(s), log α)."""

    def __init__(self, policy: TanhGaussianPolicy, log_alpha: nn.Parameter) -> None:
        super().__init__()
        self.policy = policy
        self.log_alpha = log_alpha

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (*self.policy.distribution(observations), self.log_alpha)


class CriticAndMultiplier(nn.Module):
    """Q_φ and the Lagrange multiplier log α′, the parameters the critic-side loss descends:
    forward(s, actions ``(B, N, A)``) = (Q ``(members, B, N)``, log α′)."""

    def __init__(self, critic: Critic, log_alpha_prime: nn.Parameter) -> None:
        super().__init__()
        self.critic = critic
        self.log_alpha_prime = log_alpha_prime

    def forward(self, observations: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return critic_at_states(self.critic, observations)(actions), self.log_alpha_prime


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Use ``module`` without recording its parameters, so a loss flows through it to its inputs only."""
    params = [p for p in module.parameters() if p.requires_grad]
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def hmc_adaptation_steps(config: MISAConfig) -> int:
    """The configured adaptation length, or the official 80% of the burn-in."""
    if config.hmc_adaptation_steps is not None:
        return config.hmc_adaptation_steps
    return int(config.hmc_burnin_steps * 0.8)


class MISAAgent:
    """MISA's networks, optimisers and update; see the module docstring for the losses."""

    def __init__(self, obs_dim: int, action_dim: int, config: MISAConfig, device: torch.device) -> None:
        check_variant(config.variant)
        self.config = config
        self.device = torch.device(device)
        self.action_dim = action_dim
        self.policy = TanhGaussianPolicy(obs_dim, action_dim, config.hidden_dims, config.layer_norm).to(
            self.device
        )
        self.critic = make_critic(obs_dim, action_dim, config).to(self.device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.zeros((), device=self.device))
        self.log_alpha_prime = nn.Parameter(torch.ones((), device=self.device))
        self.target_entropy = -float(action_dim) if config.target_entropy is None else config.target_entropy
        self.policy_optimizer = adam(self.policy.parameters(), config.actor_lr)
        self.critic_optimizer = adam(self.critic.parameters(), config.critic_lr)
        self.alpha_optimizer = adam([self.log_alpha], config.actor_lr)
        self.alpha_prime_optimizer = adam([self.log_alpha_prime], config.critic_lr)
        self.min_q_weight = config.min_q_weight
        self.bc_weight = config.bc_weight
        self.online = False
        self._actor_side = PolicyAndTemperature(self.policy, self.log_alpha)
        self._critic_side = CriticAndMultiplier(self.critic, self.log_alpha_prime)
        self._min_q_weight_now = torch.tensor(config.min_q_weight, device=self.device)
        self._bc_weight_now = torch.tensor(config.bc_weight, device=self.device)
        """γ₁ and γ₂ as tensors, for a compiled update (floats would recompile it whenever they cool)."""
        self._update_step = self._update
        self._hmc_step: hmc.Transition = hmc.transition

    # ----------------------------------------------------------------------------------------- update

    def _hmc_active(self) -> bool:
        cfg = self.config
        return cfg.unbiased_grad and cfg.variant != "ba" and (not self.online or cfg.unbiased_online)

    def _lagrange_active(self) -> bool:
        return self.config.use_lagrange and self.config.variant != "ba"

    def _improved_policy_samples(self, observations: torch.Tensor, actions: torch.Tensor) -> hmc.HMCSamples:
        """HMC samples of p(a|s) ∝ π(a|s)·exp(min(Q₁, Q₂)(s, a)), one chain per state from its dataset
        action; actions outside (-1, 1) have density 0. π and Q are this update's, before its steps.

        The log density drops log π's per-state constant (−Σ log σ − |A|/2·log 2π): each chain stays at
        one state, so it cancels in the Metropolis ratio and has no gradient.
        """
        with torch.no_grad():
            mean, log_std = self.policy.distribution(observations)
            inv_std = torch.exp(-log_std)
        with _frozen(self.critic):
            q_at_states = critic_at_states(self.critic, observations)

            def log_density(candidates: torch.Tensor) -> torch.Tensor:
                inside = (candidates.abs() < 1.0).all(-1)
                safe = torch.where(inside.unsqueeze(-1), candidates, torch.zeros_like(candidates))
                z = (torch.atanh(safe) - mean) * inv_std
                log_pi = (-0.5 * z.square() - torch.log1p(-safe.square())).sum(-1)
                q = q_at_states(safe).min(0).values
                return torch.where(inside, log_pi + q, torch.full_like(q, -torch.inf))

            cfg = self.config
            return hmc.sample(
                log_density,
                actions,
                num_results=cfg.hmc_num_samples,
                num_burnin_steps=cfg.hmc_burnin_steps,
                num_leapfrog_steps=cfg.hmc_leapfrog_steps,
                step_size=cfg.hmc_step_size,
                num_adaptation_steps=hmc_adaptation_steps(cfg),
                step=self._hmc_step,
            )

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        self._min_q_weight_now.fill_(self.min_q_weight)
        self._bc_weight_now.fill_(self.bc_weight)
        actions = batch.actions.clamp(-cfg.dataset_action_clip, cfg.dataset_action_clip)
        chains = self._improved_policy_samples(batch.observations, actions) if self._hmc_active() else None
        return self._update_step(batch, actions, chains)

    def _update(self, batch: Batch, actions: torch.Tensor, chains: hmc.HMCSamples | None) -> dict[str, torch.Tensor]:
        """The gradient steps proper, given the HMC chains: what ``compile`` compiles. Every network is
        read as it was before the update: the targets and the frozen Q(s, ·) first, then each side's step."""
        cfg = self.config
        observations, next_observations = batch.observations, batch.next_observations

        # Critic targets r + γ(1 − d)·min Q̄(s′, a″), one a″ ~ π(·|s′), no entropy backup; Q(s, ·) held fixed.
        with torch.no_grad():
            next_mean, next_log_std = self.policy.distribution(next_observations)
            next_actions = torch.tanh(next_mean + next_log_std.exp() * torch.randn_like(next_mean))
            next_q = self.target_critic(next_observations, next_actions).min(0).values
            td_target = batch.rewards + cfg.discount * (1.0 - batch.dones) * next_q
            frozen_q = critic_at_states(self.critic, observations)

        # π_θ and α. One trunk pass feeds every policy term; ã = tanh(u) is reparameterised.
        def actor_loss_of(policy_and_temperature: Callable[..., Any]) -> tuple[torch.Tensor, dict]:
            mean, log_std, log_alpha = policy_and_temperature(observations)
            pre_tanh = mean + log_std.exp() * torch.randn_like(mean)
            new_actions = torch.tanh(pre_tanh)
            log_pi = tanh_gaussian_log_prob(pre_tanh, mean, log_std)
            aux = {"mean": mean.detach(), "log_std": log_std.detach(), "log_pi": log_pi.detach().mean()}

            # L_α = −log α·mean(log π(ã|s) + H_target), H_target = −|A| by default.
            if cfg.automatic_entropy:
                loss_alpha = alpha_loss(log_alpha, log_pi, self.target_entropy)
                alpha = log_alpha.detach().exp() * cfg.alpha_multiplier
                aux["alpha_loss"] = loss_alpha.detach()
            else:
                loss_alpha = torch.zeros((), device=self.device)
                alpha = torch.full((), cfg.alpha_multiplier, device=self.device)

            # L_π = γ₂·mean(α·log π(ã|s) − log π(a|s)) − mean(min Q(s, ã)) + w_u·mean_k log π(a′_k|s).
            log_prob_data = tanh_gaussian_log_prob(torch.atanh(actions), mean, log_std)
            bc_loss = (alpha * log_pi - log_prob_data).mean()
            policy_loss = self._bc_weight_now * bc_loss - frozen_q(new_actions).min(0).values.mean()
            if chains is not None:
                log_pi_improved = tanh_gaussian_log_prob(torch.atanh(chains.samples), mean, log_std)
                policy_loss = policy_loss + cfg.unbiased_weight * log_pi_improved.mean()
            aux.update(policy_loss=policy_loss.detach(), bc_loss=bc_loss.detach(), alpha=alpha)
            return policy_loss + loss_alpha, aux

        actor_optimizers = [self.policy_optimizer] + [self.alpha_optimizer] * cfg.automatic_entropy
        _, metrics = descend(actor_optimizers, self._actor_side, actor_loss_of)
        mean, log_std = metrics.pop("mean"), metrics.pop("log_std")

        critic_optimizers = [self.critic_optimizer] + [self.alpha_prime_optimizer] * self._lagrange_active()
        _, critic_metrics = descend(critic_optimizers, self._critic_side, lambda critic_and_multiplier: (
            self._critic_loss(critic_and_multiplier, observations, actions, td_target, mean, log_std)))
        soft_update(self.target_critic, self.critic, cfg.target_update_rate)

        metrics.update(critic_metrics)
        if chains is not None:
            metrics.update(hmc_acceptance=chains.accept_rate, hmc_step_size=chains.step_size)
        return metrics

    def _critic_loss(
        self,
        critic_and_multiplier: Callable[..., Any],
        observations: torch.Tensor,
        actions: torch.Tensor,
        td_target: torch.Tensor,
        mean: torch.Tensor,
        log_std: torch.Tensor,
    ) -> tuple[torch.Tensor, dict]:
        """Q_φ: TD error plus γ₁ × the MI bound's critic term over K samples a_j ~ π(·|s) (from the policy's
        detached μ, log σ) at the current state; with the Lagrange form, α′'s loss too."""
        cfg = self.config
        if cfg.variant == "ba":
            q_all, log_alpha_prime = critic_and_multiplier(observations, actions.unsqueeze(1))
            q_data = q_all[..., 0]
            penalty = q_data.new_zeros(q_data.shape[0])
        else:
            with torch.no_grad():
                noise = torch.randn(observations.shape[0], cfg.n_actions, self.action_dim, device=self.device)
                sampled = torch.tanh(mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * noise)
            q_all, log_alpha_prime = critic_and_multiplier(
                observations, torch.cat([sampled, actions.unsqueeze(1)], dim=1)
            )
            q_data = q_all[..., -1]
            penalty = mi_penalty(
                q_all[..., :-1], q_data, cfg.variant, cfg.temperature, cfg.log_k_norm, cfg.add_positive
            )
        td_loss = (q_data - td_target).square().mean(-1)
        aux = {}
        if self._lagrange_active():
            critic_penalty, loss_alpha_prime = lagrange_losses(
                log_alpha_prime, penalty, self._min_q_weight_now, cfg.target_action_gap
            )
            aux["alpha_prime"] = log_alpha_prime.detach().exp().clamp(0.0, LAGRANGE_MAX)
            aux["alpha_prime_loss"] = loss_alpha_prime.detach()
        else:
            critic_penalty = self._min_q_weight_now * penalty
            loss_alpha_prime = torch.zeros((), device=self.device)
        critic_loss = (td_loss + critic_penalty).sum()
        aux.update(critic_loss=critic_loss.detach() / 2, td_loss=td_loss.detach().mean(),
                   mi_penalty=penalty.detach().mean(), q_data=q_data.detach().mean())
        return critic_loss + loss_alpha_prime, aux

    def compile(self) -> CompiledSteps:
        """Run the update as one ``torch.compile``'d graph and each HMC step as another, so the leapfrog loop
        has no Python in it (see ``offtune.policies.steps``)."""
        for optimizer in (self.policy_optimizer, self.critic_optimizer, self.alpha_optimizer,
                          self.alpha_prime_optimizer):
            init_adam_state(optimizer)
        self._update_step = CompiledUpdate(self._update)
        self._hmc_step = CompiledUpdate(hmc.transition)
        return CompiledSteps(self._update_step, self._hmc_step)

    # ------------------------------------------------------------------------------------ acting

    @torch.no_grad()
    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        if deterministic:
            return self.policy(observations)
        mean, log_std = self.policy.distribution(observations)
        return torch.tanh(mean + log_std.exp() * torch.randn_like(mean))

    def explore(self, observations: torch.Tensor) -> torch.Tensor:
        """A sample of the entropy-tuned policy, with no extra noise."""
        return self.act(observations, deterministic=False)

    def actor_module(self) -> nn.Module:
        """The live policy: ``forward`` maps normalised observations to tanh(μ(s)); layout in
        :class:`TanhGaussianPolicy`. It shares parameters with the agent, so copy before changing it."""
        return self.policy

    # ------------------------------------------------------------------------------------ phases

    def prepare(self, sample: Callable[[int], Batch], progress: Callable[[int, dict], None]) -> None:
        """MISA has no stage before the actor-critic updates."""

    def on_offline_start(self, total_steps: int) -> None:
        """MISA uses constant learning rates; nothing depends on the offline length."""

    def on_online_start(self) -> None:
        """Online, the HMC term stays only when ``unbiased_online``; optimiser states carry over."""
        self.online = True

    def anneal(self, progress: float) -> None:
        """γ₁ and γ₂ ← base·max(end, 1 − progress) (our choice, like SPOT's λ cooling)."""
        cfg = self.config
        self.min_q_weight = cfg.min_q_weight * max(cfg.min_q_weight_end, 1.0 - progress)
        self.bc_weight = cfg.bc_weight * max(cfg.bc_weight_end, 1.0 - progress)

    # -------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "log_alpha_prime": self.log_alpha_prime.detach().clone(),
            "policy_optimizer": self.policy_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "alpha_prime_optimizer": self.alpha_prime_optimizer.state_dict(),
            "min_q_weight": self.min_q_weight,
            "bc_weight": self.bc_weight,
            "online": self.online,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            self.log_alpha_prime.copy_(state["log_alpha_prime"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.alpha_prime_optimizer.load_state_dict(state["alpha_prime_optimizer"])
        self.min_q_weight = float(state["min_q_weight"])
        self.bc_weight = float(state["bc_weight"])
        self.online = bool(state["online"])

"""Deterministic evaluation on the dataset's evaluation env, vectorised, scored by the dataset's rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError
from offtune.finetune.envs import make_vector_env


@dataclass
class Evaluation:
    """Per-episode returns and the score summary one evaluation produced."""

    returns: list[float]
    scores: list[float]
    successes: list[bool] = field(default_factory=list)
    """Only for envs that report ``info["success"]`` (the mazes, Adroit); a return says nothing of success."""
    lengths: list[int] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    @property
    def episodes(self) -> int:
        return len(self.returns)

    def summary(self) -> dict:
        return {
            "score": self.score,
            "std": self.std,
            "episodes": self.episodes,
            "return": float(np.mean(self.returns)),
            "success_rate": float(np.mean(self.successes)) if self.successes else None,
            "length": float(np.mean(self.lengths)),
        }


def to_env_actions(actions: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Map the agent's actions in [-1, 1] to the env's action bounds."""
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    return low + (np.clip(actions, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


def from_env_actions(actions: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Map env actions to [-1, 1] (the inverse of :func:`to_env_actions`)."""
    low, high = np.asarray(info.action_low), np.asarray(info.action_high)
    return (2.0 * (actions - low) / (high - low) - 1.0).astype(np.float32)


def check_observation_size(envs: gym.Env | gym.vector.VectorEnv, info: DatasetInfo) -> None:
    """A checkpoint trained on another observation layout must not be run on this env (or vector env)."""
    space = envs.single_observation_space if isinstance(envs, gym.vector.VectorEnv) else envs.observation_space
    size = int(np.prod(space.shape))
    if size != info.obs_dim:
        raise OfftuneError(
            f"the checkpoint expects observations of size {info.obs_dim}, but the environment of {info.name} "
            f"gives {size}"
        )


@torch.no_grad()
def evaluate(
    agent,
    info: DatasetInfo,
    normalizer: Normalizer,
    episodes: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_parallel: int = 10,
) -> Evaluation:
    """Run ``episodes`` deterministic episodes, ``max_parallel`` at a time, seeded ``seed, seed+1, ...``.

    Each sub-env runs a fixed quota of episodes, so short episodes are not over-represented.
    """
    num_envs = max(1, min(episodes, max_parallel))
    quotas = [episodes // num_envs + (1 if i < episodes % num_envs else 0) for i in range(num_envs)]
    envs = make_vector_env(info, num_envs)
    check_observation_size(envs, info)
    result = Evaluation([], [], [], [])
    try:
        observations, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        done_counts = [0] * num_envs
        running_return = np.zeros(num_envs)
        running_length = np.zeros(num_envs, dtype=int)
        while any(done < quota for done, quota in zip(done_counts, quotas, strict=True)):
            obs = torch.as_tensor(normalizer(observations), dtype=torch.float32, device=device)
            actions = agent.act(obs, deterministic=True).cpu().numpy()
            observations, rewards, terminated, truncated, infos = envs.step(to_env_actions(actions, info))
            running_return += rewards
            running_length += 1
            for i in np.flatnonzero(terminated | truncated):
                if done_counts[i] < quotas[i]:
                    final_info = {k: v[i] for k, v in infos.get("final_info", {}).items() if not k.startswith("_")}
                    result.returns.append(float(running_return[i]))
                    result.scores.append(float(info.score_rule.score(running_return[i])))
                    if "success" in final_info:
                        result.successes.append(bool(final_info["success"]))
                    result.lengths.append(int(running_length[i]))
                    done_counts[i] += 1
                running_return[i] = 0.0
                running_length[i] = 0
    finally:
        envs.close()
    return result

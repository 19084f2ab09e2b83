"""Replay storage on the device: the offline dataset plus an online ring, sampled without host syncs.

All five fields of a transition live side by side in one contiguous ``(rows, width)`` tensor, so a batch
is a single ``index_select`` followed by free column views. Rows ``[0, offline_size)`` hold the dataset
(never overwritten); rows after it are a ring of ``online_capacity`` online transitions.

Two ways to mix them:
- ``online_ratio=None`` ("append"): one pool sampled uniformly, as the official IQL and SPOT
  fine-tuning do (the online share of a batch grows with the number of online steps);
- ``online_ratio=p``: a fixed share ``p`` of every batch comes from the online ring (symmetric
  sampling), once it holds anything.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A batch of transitions; ``dones`` is 1.0 only for true terminations."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


class ReplayBuffer:
    """Offline transitions plus an online ring buffer, all on ``device``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        offline: Batch | None = None,
        online_capacity: int = 0,
        online_ratio: float | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        if online_ratio is not None and not 0.0 <= online_ratio <= 1.0:
            raise ValueError(f"online_ratio must be in [0, 1], got {online_ratio}")
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.online_ratio = online_ratio
        self.widths = (obs_dim, action_dim, 1, obs_dim, 1)
        self.offline_size = 0 if offline is None else len(offline.rewards)
        self.online_capacity = online_capacity
        self.online_size = 0
        self.online_cursor = 0
        self.storage = torch.zeros(
            (self.offline_size + online_capacity, sum(self.widths)), dtype=torch.float32, device=self.device
        )
        if offline is not None:
            self.storage[: self.offline_size] = self._rows(*offline)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return self.offline_size + self.online_size

    def _rows(self, observations, actions, rewards, next_observations, dones) -> torch.Tensor:
        parts = [observations, actions, rewards, next_observations, dones]
        parts = [torch.as_tensor(np.asarray(p) if not torch.is_tensor(p) else p, dtype=torch.float32) for p in parts]
        count = parts[0].shape[0]
        return torch.cat([p.reshape(count, -1) for p in parts], dim=1).to(self.device, non_blocking=True)

    def add(self, observations, actions, rewards, next_observations, dones) -> None:
        """Append a batch of online transitions (one row per vector-env step), overwriting the oldest."""
        rows = self._rows(observations, actions, rewards, next_observations, dones)
        if self.online_capacity == 0:
            raise ValueError("this buffer has no online capacity")
        count = rows.shape[0]
        start = self.offline_size + self.online_cursor
        if self.online_cursor + count <= self.online_capacity:  # a slice copy, cheaper than scattered rows
            self.storage[start : start + count] = rows
        else:
            positions = (self.online_cursor + torch.arange(count)) % self.online_capacity + self.offline_size
            self.storage[positions.to(self.device)] = rows
        self.online_cursor = (self.online_cursor + count) % self.online_capacity
        self.online_size = min(self.online_size + count, self.online_capacity)

    def _indices(self, batch_size: int) -> torch.Tensor:
        def draw(low: int, high: int, count: int) -> torch.Tensor:
            return torch.randint(low, high, (count,), device=self.device, generator=self.generator)

        if self.online_ratio is None or self.online_size == 0 or self.offline_size == 0:
            return draw(0, len(self), batch_size)
        online_count = int(round(self.online_ratio * batch_size))
        offline_part = draw(0, self.offline_size, batch_size - online_count)
        online_part = draw(self.offline_size, self.offline_size + self.online_size, online_count)
        return torch.cat([offline_part, online_part])

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` transitions; indices are drawn on the device, nothing touches the host."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty buffer")
        rows = self.storage.index_select(0, self._indices(batch_size))
        obs, act, rew, next_obs, done = torch.split(rows, self.widths, dim=1)
        return Batch(obs, act, rew.squeeze(1), next_obs, done.squeeze(1))

    def online_state(self) -> dict:
        """The online part and the sampler state, for resuming a fine-tuning run."""
        online = self.storage[self.offline_size : self.offline_size + self.online_size].cpu()
        return {
            "online": online,
            "online_cursor": self.online_cursor,
            "generator": self.generator.get_state(),
        }

    def load_online_state(self, state: dict) -> None:
        online = state["online"].to(self.device)
        if online.shape[0] > self.online_capacity:
            raise ValueError("saved online data is larger than this buffer's online capacity")
        self.storage[self.offline_size : self.offline_size + online.shape[0]] = online
        self.online_size = online.shape[0]
        self.online_cursor = state["online_cursor"] % max(self.online_capacity, 1)
        self.generator.set_state(state["generator"])

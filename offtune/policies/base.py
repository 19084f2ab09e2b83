"""The contract every algorithm fulfils, so one trainer, one checkpoint format and one exporter serve all.

An agent works on normalised flat observations and actions in [-1, 1]; the trainer owns observation
normalisation, reward transforms and action scaling. ``update`` returns detached tensors (never
``.item()``) so the hot loop never waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from offtune.buffers.replay import Batch
from offtune.policies.steps import CompiledSteps, CompiledUpdate


class Agent(Protocol):
    config: Any

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One gradient step on every network the algorithm trains; returns detached metrics."""

    def act(self, observations: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Actions in [-1, 1] for a batch of normalised observations (evaluation uses deterministic)."""

    def explore(self, observations: torch.Tensor) -> torch.Tensor:
        """Online actions with the algorithm's own exploration (SPOT: Gaussian noise; IQL, MISA: sample)."""

    def prepare(self, sample: Callable[[int], Batch], progress: Callable[[int, dict], None]) -> None:
        """Stages before the actor-critic updates (SPOT's VAE); ``progress(step, metrics)`` reports."""

    def on_offline_start(self, total_steps: int) -> None:
        """Called once before offline updates (IQL's cosine actor schedule spans ``total_steps``)."""

    def on_online_start(self) -> None:
        """Switch to the online settings of the official fine-tuning code."""

    def anneal(self, progress: float) -> None:
        """Online schedules; ``progress`` goes from 0 to 1 over the online phase."""

    def compile(self) -> CompiledUpdate | CompiledSteps:
        """Run ``update`` from now on as ``torch.compile``'d graphs (``offtune.policies.steps``); the returned
        object reports the compile time and holds the eager fallback switch."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def actor_module(self) -> nn.Module:
        """A module mapping normalised observations to deterministic actions, for export."""


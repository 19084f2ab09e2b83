"""A trained policy as a plain function: the env's raw observation in, the env's action out.

``load_policy(CKPT)`` is what a user runs where no trainer, buffer or evaluation loop exists: it applies
exactly the steps evaluation applies (flatten dict observations in the checkpoint's key order, normalise
with the dataset statistics, act deterministically, map [-1, 1] onto the env's action bounds), so its
actions are the ones ``offtune evaluate`` takes and the ones an exported SB3 zip must reproduce.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offtune.buffers.datasets import flatten_observation
from offtune.errors import OfftuneError
from offtune.policies.checkpoint import LoadedAgent, load_agent


def scale_actions(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map actions in [-1, 1] onto [low, high] (SB3's ``unscale_action`` after clipping to [-1, 1])."""
    return low + (np.clip(actions, -1.0, 1.0) + 1.0) * 0.5 * (high - low)


class Policy:
    """Deterministic ``observation -> action`` of a checkpoint, on numpy, for one observation or a batch.

    A dict observation (PointMaze, AntMaze) is a mapping of arrays, each with a leading batch axis for a
    batch; an array observation is ``(obs_dim,)`` or ``(batch, obs_dim)``. The result is ``(action_dim,)``
    or ``(batch, action_dim)`` float32 within the env's action bounds.
    """

    def __init__(self, loaded: LoadedAgent) -> None:
        self.loaded = loaded
        self.algo = loaded.algo
        self.info = loaded.info
        self.obs_keys = list(loaded.info.obs_keys)
        self.action_low = np.asarray(loaded.info.action_low, dtype=np.float32)
        self.action_high = np.asarray(loaded.info.action_high, dtype=np.float32)

    def flat_observations(self, observation: Any) -> np.ndarray:
        """The observation as the checkpoint's flat float32 vector(s), before normalisation."""
        if self.obs_keys and not isinstance(observation, Mapping):
            raise OfftuneError(
                f"this {self.algo} policy takes the env's dict observations (keys {', '.join(self.obs_keys)}), "
                f"not a {type(observation).__name__}"
            )
        if not self.obs_keys and isinstance(observation, Mapping):
            raise OfftuneError(f"this {self.algo} policy takes array observations of size {self.info.obs_dim}, "
                               "not a dict")
        try:
            flat = flatten_observation(observation, self.obs_keys)
        except KeyError as error:
            raise OfftuneError(f"the observation lacks key {error}; the policy reads {', '.join(self.obs_keys)}") \
                from None
        if flat.ndim not in (1, 2) or flat.shape[-1] != self.info.obs_dim:
            raise OfftuneError(
                f"the policy expects observations of size {self.info.obs_dim} (one, or a batch), got shape "
                f"{flat.shape}"
            )
        return flat

    @torch.no_grad()
    def act_flat(self, flat: np.ndarray) -> np.ndarray:
        """Actions for a batch of flat raw observations ``(batch, obs_dim)``: the steps after flattening,
        kept apart so that ONNX and TorchScript exports, whose input is this flat vector, are checked
        against them."""
        normalized = self.loaded.normalizer(flat).astype(np.float32)
        inputs = torch.as_tensor(normalized, device=self.loaded.device)
        actions = self.loaded.agent.act(inputs, deterministic=True).cpu().numpy()
        return scale_actions(actions, self.action_low, self.action_high).astype(np.float32)

    def __call__(self, observation: Any) -> np.ndarray:
        flat = self.flat_observations(observation)
        actions = self.act_flat(np.atleast_2d(flat))
        return actions[0] if flat.ndim == 1 else actions

    def __repr__(self) -> str:
        return f"Policy({self.algo} on {self.info.name}, step {self.loaded.step}, from {self.loaded.path})"


def load_policy(checkpoint: str | Path, device: str | torch.device = "cpu") -> Policy:
    """The deterministic policy of a checkpoint (a ``.pt`` file or a run directory) as a numpy callable."""
    return Policy(load_agent(checkpoint, device))

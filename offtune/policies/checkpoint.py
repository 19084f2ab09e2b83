"""One ``.pt`` file that is enough to evaluate, fine-tune, export or resume a run.

The file is a plain dict of tensors and JSON-able values, so ``torch.load(path, weights_only=True)``
opens it without running any code from the file. It is written to a temporary file beside the target
and renamed, so a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError
from offtune.policies.base import Agent

FORMAT = "offtune-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("algo", "config", "dataset", "normalizer", "reward_transform", "agent")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus the format tag) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(data, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; every way it can be wrong becomes one clear ``OfftuneError``."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "final.pt"
        if not candidate.exists():
            candidate = path / "checkpoints" / "last.pt"
        if not candidate.exists():
            raise OfftuneError(f"{path} is a directory without checkpoints/final.pt or checkpoints/last.pt")
        path = candidate
    if not path.exists():
        raise OfftuneError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise OfftuneError(f"{path} is not an offtune checkpoint: not a file written by torch.save, or truncated")
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/data.pkl") for name in archive.namelist()):
            raise OfftuneError(f"{path} is not an offtune checkpoint: a zip archive, but not one torch.save wrote "
                               "(an exported Stable-Baselines3 model?)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise OfftuneError(
            f"{path} is not an offtune checkpoint: it holds Python objects, not only tensors and plain values"
        ) from None
    except Exception as error:  # any other failure to read it means the file is damaged
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise OfftuneError(f"{path} is a damaged checkpoint (truncated or corrupt): {reason}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OfftuneError(f"{path} is a torch file but not an offtune checkpoint (no '{FORMAT}' tag)")
    if data.get("version", 0) > VERSION:
        raise OfftuneError(
            f"{path} was written by a newer offtune (checkpoint version {data['version']} > {VERSION}); "
            "upgrade offtune to read it"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise OfftuneError(f"{path} is an incomplete offtune checkpoint: missing {', '.join(missing)}")
    data["path"] = str(path)
    return data


@dataclass
class LoadedAgent:
    """An agent rebuilt from a checkpoint, with what is needed to feed it raw env observations."""

    agent: Agent
    algo: str
    config: Any
    info: DatasetInfo
    normalizer: Normalizer
    device: torch.device
    step: int
    path: str
    checkpoint: dict[str, Any]


def load_agent(path: str | Path, device: str | torch.device = "cpu") -> LoadedAgent:
    """Rebuild the agent of a checkpoint on ``device`` ("auto" picks CUDA when there is one)."""
    from offtune.policies import ALGORITHMS
    from offtune.policies.config import config_from_dict

    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    data = load_checkpoint(path, map_location=device)
    if data["algo"] not in ALGORITHMS:
        raise OfftuneError(f"{data['path']} was made by algorithm '{data['algo']}', which this offtune lacks")
    config_cls, agent_cls = ALGORITHMS[data["algo"]]
    try:
        info = DatasetInfo.from_dict(data["dataset"])
        config = config_from_dict(config_cls, data["config"])
        agent = agent_cls(info.obs_dim, info.action_dim, config, device)
        agent.load_state_dict(data["agent"])
    except (KeyError, TypeError, RuntimeError) as error:
        raise OfftuneError(f"{data['path']} does not fit {data['algo']}'s networks: {error}") from None
    return LoadedAgent(agent, data["algo"], config, info, Normalizer.from_dict(data["normalizer"]), device,
                       data.get("step", 0), data["path"], data)

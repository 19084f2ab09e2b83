"""One ``.pt`` file that is enough to evaluate, fine-tune, export or resume a run.

The file is a plain dict of tensors and JSON-able values, so ``torch.load(path, weights_only=True)``
opens it without running any code from the file. It is written to a temporary file beside the target
and renamed, so a crash never leaves a half-written checkpoint under the real name.

Integrity: ``torch.save`` writes a zip whose every record (the pickled dict, each tensor's bytes) carries a
CRC-32 of its contents. ``save_checkpoint`` makes sure those checksums are written and ``load_checkpoint``
reads every record back against its checksum before ``torch.load`` sees the file, so a changed byte anywhere
in the payload is refused by name instead of loading as wrong weights. Checking costs one extra read of the
file (about 0.3 s for 400 MB) and needs no format change: checkpoints of earlier versions carry the same
checksums and are checked the same way.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
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
TEMPORARY_SUFFIX = ".tmp"
REQUIRED_KEYS = ("algo", "config", "dataset", "normalizer", "reward_transform", "agent")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" picks CUDA when present; a device torch cannot use here is one clear error before anything is
    loaded onto it (torch.load onto a missing GPU would otherwise read as a damaged file)."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise OfftuneError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise OfftuneError(f"--device {device} was asked for, but torch sees no CUDA device here; "
                               "use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise OfftuneError(f"--device {device} was asked for, but torch sees {count} CUDA device(s): "
                               f"use cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OfftuneError("--device mps was asked for, but torch sees no MPS device here; use --device cpu")
    elif device.type not in ("cpu", "mps"):
        raise OfftuneError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")
    return device


@contextlib.contextmanager
def _with_checksums() -> Iterator[None]:
    """``torch.serialization.set_crc32_options(False)`` would make torch.save skip the checksums that
    ``load_checkpoint`` verifies; a checkpoint is always written with them."""
    if not hasattr(torch.serialization, "set_crc32_options"):  # torch before the option always wrote them
        yield
        return
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: torch.save reports a full disk as "unexpected pos" with it as context."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write ``payload`` (plus the format tag) to ``path``.

    On any failure the temporary file is removed and an existing checkpoint at ``path`` is left as it was;
    a failure of the file system (full disk, read-only, no permission) is an ``OSError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream, _with_checksums():
            torch.save(data, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        cause = _os_error(error)
        if cause is not None and not isinstance(error, KeyboardInterrupt):
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return path


def remove_partial_saves(folder: Path) -> None:
    """Remove the temporary files of saves that were killed before their rename (never a whole checkpoint).

    Only the process that owns the run directory may call this: another one's save in progress looks alike.
    """
    for temporary in folder.glob(f".*.pt.*{TEMPORARY_SUFFIX}"):
        temporary.unlink(missing_ok=True)


def _verify_checksums(path: Path) -> None:
    """Read every record of the zip back against the CRC-32 stored when it was written (see the module doc)."""
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
        if not any(record.filename.endswith("/data.pkl") for record in records):
            raise OfftuneError(f"{path} is not an offtune checkpoint: a zip archive, but not one torch.save wrote "
                               "(an exported Stable-Baselines3 model?)")
        if all(record.CRC == 0 for record in records if record.file_size):
            raise OfftuneError(
                f"{path} was saved without checksums (torch.serialization.set_crc32_options(False)), so it cannot "
                "be checked for damage; if you trust it, load it with torch.load and save it again with checksums"
            )
        try:
            bad = archive.testzip()
            problem = None if bad is None else f"record {bad} does not match the checksum written with it"
        except Exception as error:  # a damaged record header fails in many ways; each one means the same
            problem = f"a record header is unreadable: {type(error).__name__}"
    if problem is not None:
        raise OfftuneError(f"{path} is damaged ({problem}): it changed after it was saved, so it is not loaded; "
                           "use another checkpoint of the run, or train again")


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
    _verify_checksums(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise OfftuneError(
            f"{path} is not an offtune checkpoint: it holds Python objects, not only tensors and plain values"
        ) from None
    except Exception as error:  # any other failure to read it means the file is damaged
        reason = (str(error).splitlines() or [type(error).__name__])[0]
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

    device = resolve_device(device)
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

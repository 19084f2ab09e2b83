"""A checkpoint's deterministic policy as one ONNX or TorchScript file that runs without offtune.

The file maps flat raw observations, float32 ``(batch, obs_dim)`` with a dynamic batch axis (dict
observations concatenated in the checkpoint's key order, exactly as ``Policy.flat_observations`` gives
them), to the env's actions ``(batch, action_dim)``. The dataset normaliser and the map from [-1, 1] onto
the action bounds are constants in the graph, so onnxruntime or ``torch.jit.load`` needs nothing else.
The graph is offtune's own actor traced, so unlike the SB3 export any actor fits (MISA's LayerNorm too).

The file also carries what a user must know to feed it (key order, sizes, bounds) as JSON: ONNX metadata
``offtune``, or the TorchScript extra file ``offtune.json``. Like the SB3 export it is written beside its
target, loaded back with its own runtime, compared with ``load_policy``'s actions, and only then renamed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offtune.errors import OfftuneError
from offtune.policies.checkpoint import LoadedAgent
from offtune.policies.policy import Policy

PORTABLE_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
"""Each format and the suffix a path without one gets."""
INPUT_NAME = "observation"
OUTPUT_NAME = "action"
METADATA_KEY = "offtune"
PARITY_TOLERANCE = 1e-5
"""Largest accepted |file action - offtune action|, in the env's action units."""


class PortablePolicy(nn.Module):
    """Flat raw observations -> env actions: normalise, act deterministically, scale onto the bounds.

    Every step is written as ``Policy`` computes it in numpy (float32, the same operation order), so the
    file's actions match ``load_policy``'s to float32 rounding.
    """

    def __init__(self, loaded: LoadedAgent) -> None:
        super().__init__()
        normalizer, info = loaded.normalizer, loaded.info
        low = np.asarray(info.action_low, dtype=np.float32)
        high = np.asarray(info.action_high, dtype=np.float32)
        self.actor = copy.deepcopy(loaded.agent.actor_module()).float().cpu().eval()
        self.register_buffer("mean", torch.as_tensor(np.asarray(normalizer.mean, dtype=np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(normalizer.std, dtype=np.float32) + normalizer.eps))
        self.register_buffer("low", torch.as_tensor(low))
        self.register_buffer("span", torch.as_tensor(high - low))

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        actions = self.actor((observation - self.mean) / self.scale)
        return self.low + (actions.clamp(-1.0, 1.0) + 1.0) * 0.5 * self.span


@dataclass
class PortableExport:
    """What an ONNX or TorchScript export wrote and how faithful it is."""

    path: Path
    format: str
    obs_keys: list[str]
    obs_dim: int
    action_dim: int
    max_action_error: float

    def run_hint(self) -> str:
        """The line that runs the file where offtune is not installed."""
        if self.format == "onnx":
            return (f"onnxruntime.InferenceSession('{self.path}').run(None, "
                    f"{{'{INPUT_NAME}': obs.astype('float32')}})[0]")
        return f"torch.jit.load('{self.path}')(torch.as_tensor(obs, dtype=torch.float32))"


def metadata(loaded: LoadedAgent) -> dict[str, Any]:
    """What a user of the file needs to build its input and read its output."""
    info = loaded.info
    return {
        "algo": loaded.algo,
        "dataset": info.name,
        "step": loaded.step,
        "input": INPUT_NAME,
        "output": OUTPUT_NAME,
        "observation_keys": list(info.obs_keys),
        "obs_dim": info.obs_dim,
        "action_dim": info.action_dim,
        "action_low": list(info.action_low),
        "action_high": list(info.action_high),
        "normalized_inside": True,
    }


def probe_observations(loaded: LoadedAgent, count: int = 64, seed: int = 0) -> np.ndarray:
    """Flat raw observations around the dataset statistics (μ + σ z), for the parity self-test."""
    normalizer = loaded.normalizer
    rng = np.random.default_rng(seed)
    return (normalizer.mean + normalizer.std * rng.standard_normal((count, len(normalizer.mean)))).astype(np.float32)


def _require(*modules: str) -> None:
    """The optional ``onnx`` extra, checked before any work so that its absence is one line."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise OfftuneError(f"ONNX export needs {' and '.join(missing)}: pip install 'offtune[onnx]'")


def _write_onnx(module: PortablePolicy, example: torch.Tensor, path: Path, info: dict[str, Any]) -> None:
    """Trace to ONNX, then add the metadata. ``dynamo=False`` picks torch's TorchScript-based exporter, which
    needs only ``onnx``; the default one would add ``onnxscript`` to what users install, for an MLP."""
    import onnx

    batch = {0: "batch"}
    torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: batch, OUTPUT_NAME: batch})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(info)})
    onnx.save(model, str(path))


def _run_onnx(path: Path, observations: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: observations})[0]


def _write_torchscript(module: PortablePolicy, example: torch.Tensor, path: Path, info: dict[str, Any]) -> None:
    """Trace (the policy has no data-dependent control flow) and save with the metadata as an extra file."""
    traced = torch.jit.trace(module, example)
    torch.jit.save(traced, str(path), _extra_files={f"{METADATA_KEY}.json": json.dumps(info)})


def _run_torchscript(path: Path, observations: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(torch.as_tensor(observations)).numpy()


WRITERS = {"onnx": (_write_onnx, _run_onnx), "torchscript": (_write_torchscript, _run_torchscript)}


def target_path(path: str | Path, format: str) -> Path:
    """``path``, with the format's suffix added when it has none; a folder is refused."""
    path = Path(path)
    if path.is_dir():
        raise OfftuneError(f"{path} is a folder; give the {format} file to write, e.g. {path / 'policy'}"
                           f"{PORTABLE_FORMATS[format]}")
    return path if path.suffix else path.with_name(path.name + PORTABLE_FORMATS[format])


def export_portable(loaded: LoadedAgent, path: str | Path, format: str) -> PortableExport:
    """Write ``loaded``'s deterministic policy as an ONNX or TorchScript file at ``path``.

    The file is checked against ``Policy.act_flat`` on probe observations, in a batch and one at a time,
    before it replaces ``path``; a mismatch deletes it.
    """
    if format not in WRITERS:
        raise OfftuneError(f"no portable export format '{format}'; choose {', '.join(WRITERS)}")
    if format == "onnx":
        _require("onnx", "onnxruntime")
    write, run = WRITERS[format]
    path = target_path(path, format)
    module = PortablePolicy(loaded)
    probes = probe_observations(loaded)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.touch()  # an unwritable folder fails here, as one line, before any tracing
    except OSError as error:
        raise OfftuneError(f"cannot write {path}: {error.strerror} ({error.filename})") from None
    try:
        write(module, torch.as_tensor(probes[:2]), temporary, metadata(loaded))
        expected = Policy(loaded).act_flat(probes)
        error = max(float(np.max(np.abs(run(temporary, probes) - expected))),
                    float(np.max(np.abs(run(temporary, probes[:1]) - expected[:1]))))
        if not error <= PARITY_TOLERANCE:
            raise OfftuneError(f"the {format} file's actions differ from offtune's by {error:.2g}; no file was "
                               "written")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    info = loaded.info
    return PortableExport(path, format, list(info.obs_keys), info.obs_dim, info.action_dim, error)

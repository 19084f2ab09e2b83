"""offtune: pretrain a policy offline (IQL, SPOT, MISA) on a Minari dataset, fine-tune it online in the
live MuJoCo environment, report before -> after scores, and export it to Stable-Baselines3.

The Python API mirrors the command line::

    import offtune
    run = offtune.pretrain("iql", "offtune/pointmaze/umaze-v0", steps=20_000)
    tuned = offtune.finetune(run.checkpoint, steps=20_000)
    policy = offtune.load_policy(tuned.checkpoint)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "pretrain": "offtune.finetune.trainer",
    "finetune": "offtune.finetune.trainer",
    "evaluate": "offtune.finetune.evaluate",
    "load_checkpoint": "offtune.policies.checkpoint",
    "load_agent": "offtune.policies.checkpoint",
    "load_policy": "offtune.policies.policy",
    "export": "offtune.finetune.export",
    "load_dataset": "offtune.buffers.datasets",
}


def __getattr__(name: str) -> Any:
    """Import heavy modules (torch, MuJoCo) only when their function is first used."""
    if name == "load_dataset":
        return import_module("offtune.buffers.datasets").load
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'offtune' has no attribute '{name}'")


__all__ = [*_EXPORTS, "__version__"]

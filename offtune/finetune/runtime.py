"""What a training run needs from the process around it: the device and its threads, matmul precision,
random states, Ctrl-C handling, the progress protocol and metric averaging.

None of it knows about algorithms or datasets; ``trainer`` composes these pieces into the two phases.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from offtune.errors import OfftuneError, suggest


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint was written first (its path is ``checkpoint``)."""

    def __init__(self, checkpoint: Path, step: int) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint written to {checkpoint}")
        self.checkpoint, self.step = checkpoint, step


class GracefulStop:
    """The first Ctrl-C asks the loop to stop after the current step; a second one stops at once.

    Stopping between steps keeps the checkpoint consistent, so a resumed run equals an uninterrupted one.
    """

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class Progress(Protocol):
    """What the trainer tells a display; the CLI implements it with rich, notebooks may ignore it."""

    def stage(self, name: str, total: int, completed: int = 0) -> None: ...

    def advance(self, count: int, metrics: dict[str, float]) -> None: ...

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None: ...


class SilentProgress:
    def stage(self, name: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        pass

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None:
        pass


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" picks CUDA when present; anything torch cannot use here is one clear error."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise OfftuneError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OfftuneError("--device cuda was asked for, but torch sees no CUDA device here")
    return device


def limit_cpu_threads(device: torch.device) -> None:
    """On the CPU, torch gets one thread unless OMP_NUM_THREADS says otherwise.

    A second thread speeds 256-wide updates up only while a core is idle for it, and OpenMP's spinning
    threads make every matmul several times slower once other work shares the cores (README, "Devices and
    threads").
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(precision: str | None) -> str:
    """Internal precision of float32 matmuls, for the whole process (``torch.set_float32_matmul_precision``);
    None leaves torch's current setting. Returns the precision in force.

    "highest" keeps full float32. "high" lets CUDA use TF32; "medium" lets CUDA, and CPUs with AMX or
    AVX512-BF16, multiply in bfloat16 with float32 accumulation: faster, with ~3 significant digits per
    product instead of ~7. Parameters, optimiser states and every non-matmul op stay float32.
    """
    if precision is None:
        return torch.get_float32_matmul_precision()
    if precision not in MATMUL_PRECISIONS:
        raise OfftuneError(
            f"unknown matmul precision '{precision}'; choose from {', '.join(MATMUL_PRECISIONS)}."
            f"{suggest(precision, MATMUL_PRECISIONS)}"
        )
    torch.set_float32_matmul_precision(precision)
    return precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global random state a run draws from, in a form ``torch.load(weights_only=True)`` reads back."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2]), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"]))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class MetricAverager:
    """Sums metric tensors on the device and reads them back once per log interval."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.detach().clone()
        self.count += 1

    def flush(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k].float().reshape(()) for k in keys]).cpu().tolist()
        means = {k: v / self.count for k, v in zip(keys, values, strict=True)}
        self.sums, self.count = {}, 0
        return means


def log_interval(steps: int) -> int:
    """About 50 log points per run, at most every 1,000 steps."""
    return max(1, min(1000, steps // 50))

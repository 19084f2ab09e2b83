"""What a training run needs from the process around it: the device and its threads, matmul precision,
random states, Ctrl-C handling, memory checks, the progress protocol and metric averaging.

None of it knows about algorithms or datasets; ``trainer`` composes these pieces into the two phases.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from offtune.errors import OfftuneError, suggest
from offtune.policies.base import Agent
from offtune.policies.steps import CompiledSteps, CompiledUpdate

SEED_RANGE = (0, 2**32 - 1)
"""Seeds every random generator a run seeds (numpy's legacy one is the narrowest) accepts as they are."""


class Interrupted(Exception):
    """Ctrl-C during training. The run continues from ``checkpoint`` (None: it stopped before its first one, and
    ``--resume`` starts it over), which is the state at ``step`` unless a second Ctrl-C stopped it at once."""

    def __init__(self, run_dir: Path, step: int, checkpoint: Path | None, checkpoint_step: int | None) -> None:
        if checkpoint is None:
            where = "no checkpoint yet: --resume starts the run over"
        elif checkpoint_step == step:
            where = f"checkpoint written to {checkpoint}"
        else:
            where = f"stopped at once; the last checkpoint is {checkpoint} (step {checkpoint_step})"
        super().__init__(f"interrupted at step {step}; {where}")
        self.run_dir, self.step, self.checkpoint = run_dir, step, checkpoint


class StopRequested(KeyboardInterrupt):
    """Raised between two steps after the first Ctrl-C: the state is whole and can be saved."""


class GracefulStop:
    """The first Ctrl-C asks the loop to stop after the current step; a second one stops at once.

    Stopping between steps keeps the checkpoint consistent, so a resumed run equals an uninterrupted one
    (``StopRequested``). A second Ctrl-C may land in the middle of an update or a save, so it raises a plain
    ``KeyboardInterrupt`` and that state is not saved: the run continues from its last checkpoint.
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
            raise StopRequested

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


@contextlib.contextmanager
def ignoring_ctrl_c() -> Iterator[None]:
    """For the checkpoint written after a Ctrl-C: further presses wait for it instead of cutting it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Progress(Protocol):
    """What the trainer tells a display; the CLI implements it with rich, notebooks may ignore it."""

    def stage(self, name: str, total: int, completed: int = 0) -> None: ...

    def advance(self, count: int, metrics: dict[str, float]) -> None: ...

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None: ...

    def warning(self, message: str) -> None: ...


class SilentProgress:
    def stage(self, name: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        pass

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


def limit_cpu_threads(device: torch.device) -> None:
    """On the CPU, torch gets one thread unless OMP_NUM_THREADS says otherwise.

    A second thread speeds 256-wide updates up only while a core is idle for it, and OpenMP's spinning
    threads make every matmul several times slower once other work shares the cores (README, "Devices and
    threads").
    """
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


MATMUL_PRECISIONS = ("highest", "high", "medium")
COMPILE_MODES = ("auto", "on", "off")
AUTO_COMPILE_UPDATES = 20_000
"""``--compile auto`` compiles a phase of at least this many updates: compiling takes 20-60 s on a CPU, which
a shorter phase would not win back."""


def check_compile_mode(mode: str) -> str:
    """``mode`` if it is one of ``COMPILE_MODES``, else an error for people."""
    if mode not in COMPILE_MODES:
        raise OfftuneError(f"unknown --compile '{mode}'; choose from {', '.join(COMPILE_MODES)}."
                           f"{suggest(mode, COMPILE_MODES)}")
    return mode


def compile_agent(agent: Agent, mode: str, updates: int) -> CompiledUpdate | CompiledSteps | None:
    """Switch ``agent`` to its compiled update (``agent.compile()``) when ``mode`` asks for it.

    ``auto`` compiles when the phase runs ``updates`` ≥ ``AUTO_COMPILE_UPDATES`` of them, ``on`` always,
    ``off`` never. Returns the compiled update (its ``compile_seconds`` grow while its first calls compile), or
    None.
    """
    if mode == "off" or (mode == "auto" and updates < AUTO_COMPILE_UPDATES):
        return None
    compiled = agent.compile()
    compiled.eager_fallback = mode == "auto"  # asked for by name, a failure to compile is an error
    return compiled


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


def check_seed(seed: int, option: str = "--seed") -> None:
    low, high = SEED_RANGE
    if not low <= seed <= high:
        raise OfftuneError(f"{option} must be between {low} and {high}, got {seed}")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory, or on the CPU the kernel's
    MemAvailable within this process's cgroup limit; None where that cannot be known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    except (OSError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return available
    return available if limit == "max" else min(available, int(limit) - used)


def human_bytes(count: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    power = min(int(math.log10(max(count, 1)) // 3), len(units) - 1)
    return f"{count / 1000**power:.1f} {units[power]}"


def check_memory(needed: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse a request whose memory is known to exceed what ``device`` has, before allocating any of it."""
    available = available_memory(device)
    if available is not None and needed > available:
        raise OfftuneError(f"{what} needs at least {human_bytes(needed)} of memory on {device.type}, but "
                           f"{human_bytes(available)} is available; {advice}")


def first_non_finite(metrics: dict[str, float]) -> str | None:
    """The first metric that is NaN or infinite: the update that produced it diverged."""
    return next((key for key, value in metrics.items() if not math.isfinite(value)), None)


def first_non_finite_tensor(state: Any, prefix: str = "") -> str | None:
    """The name of the first floating tensor in a nested state dict that holds NaN or infinity.

    One host sync for the whole state (run at evaluations and checkpoints, never per update).
    """
    named = list(_floating_tensors(state, prefix))
    if not named:
        return None
    finite = torch.stack([torch.isfinite(tensor).all() for _, tensor in named])
    if bool(finite.all()):
        return None
    return named[int(torch.argmin(finite.int()))][0]


def _floating_tensors(state: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(state):
        if state.is_floating_point():
            yield prefix, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _floating_tensors(value, f"{prefix}[{index}]")


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

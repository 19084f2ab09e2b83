"""Shared fixtures: a private Minari folder for the whole session and small real datasets written into it.

Every test runs with ``MINARI_DATASETS_PATH`` pointing at a temporary folder (``minari_root`` is autouse),
so nothing reads or writes the user's ``~/.minari``. The dataset fixtures are session-scoped and return
Minari ids; treat them as read-only (write your own ids for tests that overwrite or delete).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from offtune.buffers import collect

# The networks in tests are tiny: one thread is fastest and immune to other processes' load.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def full_precision_matmuls() -> Iterator[None]:
    """``--matmul-precision`` is process-wide: a test that sets it must not change the next test's numbers."""
    yield
    torch.set_float32_matmul_precision("highest")


class CtrlCAt:
    """A progress display that presses Ctrl-C once the training stage (offline or online, not SPOT's VAE)
    reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.done, self.sent, self.in_training = step, 0, False, False

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        self.in_training = "offline" in name or "online" in name
        self.done = completed

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        if self.in_training:
            self.done += count
            if self.done >= self.step and not self.sent:
                self.sent = True
                signal.raise_signal(signal.SIGINT)

    def evaluation(self, phase: str, step: int, summary: dict) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


@pytest.fixture
def ctrl_c_at() -> type[CtrlCAt]:
    """``ctrl_c_at(step)`` is a progress display for the trainer that interrupts it like a user would."""
    return CtrlCAt


@pytest.fixture(scope="session", autouse=True)
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary ``MINARI_DATASETS_PATH`` for the whole session."""
    root = tmp_path_factory.mktemp("minari")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


@pytest.fixture(scope="session")
def pointmaze_dataset(minari_root: Path) -> str:
    """``offtune/pointmaze/umaze-v0``: 5,000 steps of the planner + PD collector (~57 episodes)."""
    return collect.collect_pointmaze("umaze", steps=5_000, seed=0).id


@pytest.fixture(scope="session")
def antmaze_umaze_dataset(minari_root: Path) -> str:
    """``D4RL/antmaze/umaze-v1`` with the published spec (maps, continuing task, 700-step limit, infos).

    Six 40-step episodes of small random actions; episodes 1 and 4 start next to D4RL's goal (-4, 4),
    episodes 2 and 5 next to the commanded goal, so relabelled and Minari rewards both contain ones.
    """
    return collect.write_antmaze_like("D4RL/antmaze/umaze-v1", "umaze", episodes=6, steps=40, seed=0).id


@pytest.fixture(scope="session")
def hopper_dataset(minari_root: Path) -> str:
    """``mujoco/hopper/medium-v0`` stand-in: 2,000 random-action steps on Hopper-v5 (many short episodes)."""
    return collect.collect_policy("Hopper-v5", steps=2_000, seed=0, dataset_id="mujoco/hopper/medium-v0").id

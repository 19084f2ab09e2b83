"""One trainer for both phases: offline pretraining on the dataset, online fine-tuning in the live env.

``pretrain`` (``offline.py``) fills a device-resident buffer with the transformed dataset and runs the
algorithm's updates; ``finetune`` (``online.py``) loads a checkpoint, re-creates the same buffer and lets
the live env append to its online part while updating. Both evaluate on the dataset's eval env, write the
run directory described in DESIGN.md, checkpoint atomically, stop cleanly on Ctrl-C and resume. What they
share is in ``runs.py``; what they need from the process (device, threads, random states, Ctrl-C) in
``runtime.py``. This module is the one place callers import them from.
"""

from __future__ import annotations

from offtune.buffers import datasets
from offtune.finetune.offline import OfflineRun, PretrainSettings, pretrain
from offtune.finetune.online import FinetuneSettings, OnlineRun, finetune, write_report
from offtune.finetune.runs import (
    ALGORITHMS,
    EVALUATION_SEED_OFFSET,
    PreparedData,
    RunResult,
    algorithm,
    build_config,
    default_eval_episodes,
    prepare_offline,
)
from offtune.finetune.runtime import (
    AUTO_COMPILE_UPDATES,
    COMPILE_MODES,
    MATMUL_PRECISIONS,
    Interrupted,
    Progress,
    SilentProgress,
    set_matmul_precision,
)
from offtune.policies.checkpoint import resolve_device

__all__ = [
    "ALGORITHMS", "AUTO_COMPILE_UPDATES", "COMPILE_MODES", "EVALUATION_SEED_OFFSET", "MATMUL_PRECISIONS",
    "FinetuneSettings", "Interrupted", "OfflineRun", "OnlineRun", "PreparedData", "PretrainSettings", "Progress",
    "RunResult", "SilentProgress", "algorithm",
    "build_config", "datasets", "default_eval_episodes", "finetune", "prepare_offline", "pretrain",
    "resolve_device", "set_matmul_precision", "write_report",
]

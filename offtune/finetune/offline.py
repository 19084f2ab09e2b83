"""The offline phase: ``pretrain`` runs an algorithm's updates on a dataset (SPOT trains its VAE first).

``PretrainSettings`` is what the user asked for, or what the checkpoint being resumed recorded;
``OfflineRun`` holds the loop's named state and ``OfflineRun.update_step`` is one step of it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from offtune.buffers import datasets
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.replay import ReplayBuffer
from offtune.errors import OfftuneError
from offtune.finetune.evaluate import evaluate
from offtune.finetune.runs import (
    EVALUATION_SEED_OFFSET,
    PreparedData,
    RunResult,
    algorithm,
    build_config,
    checkpoint_payload,
    default_eval_episodes,
    default_run_dir,
    device_and_precision,
    new_run_dir,
    open_run_directory,
    prepare_offline,
    same_dataset,
)
from offtune.finetune.runtime import (
    GracefulStop,
    Interrupted,
    MetricAverager,
    Progress,
    SilentProgress,
    log_interval,
    seed_everything,
    set_rng_state,
)
from offtune.finetune.scores import RunDirectory
from offtune.policies.base import Agent
from offtune.policies.checkpoint import load_checkpoint, save_checkpoint
from offtune.policies.config import config_from_dict


@dataclass
class PretrainSettings:
    """What a pretraining run does; every checkpoint records it as ``run`` so ``--resume`` can redo it."""

    algo: str
    dataset: str
    seed: int
    steps: int
    eval_every: int
    eval_episodes: int
    device: str
    matmul_precision: str
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {"phase": "offline", **asdict(self)}
        if values["label"] is None:
            del values["label"]
        return values


class OfflineRun:
    """The state of one pretraining run: agent, buffer, step counter, evaluations and run directory."""

    def __init__(self, settings: PretrainSettings, config: Any, info: DatasetInfo, prepared: PreparedData,
                 agent: Agent, buffer: ReplayBuffer, directory: RunDirectory, device: torch.device,
                 progress: Progress) -> None:
        self.settings, self.config, self.info, self.prepared = settings, config, info, prepared
        self.agent, self.buffer, self.directory, self.device, self.progress = agent, buffer, directory, device, progress
        self.step = 0
        self.evaluations: list[dict[str, Any]] = []
        self.averager = MetricAverager()
        self.stage_averager = MetricAverager()
        self.log_every = log_interval(settings.steps)
        self.stop = GracefulStop()
        self.first_step, self.started = 0, time.perf_counter()

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue where ``checkpoint`` (this run's ``last.pt``) stopped, forgetting what was logged after it."""
        self.agent.load_state_dict(checkpoint["agent"])
        set_rng_state(checkpoint["rng"])
        self.buffer.generator.set_state(checkpoint["buffer_generator"])
        self.step = checkpoint["step"]
        self.directory.truncate_after("offline", self.step)
        self.evaluations = [e for e in self.directory.scores["evaluations"] if e["phase"] == "offline"]

    def train(self) -> None:
        """The algorithm's own first stage (SPOT's VAE), then updates up to ``settings.steps``."""
        stage_steps = getattr(self.config, "vae_steps", 0)
        if stage_steps and self.step == 0:
            self.progress.stage("VAE", stage_steps)
        self.agent.prepare(lambda count: self.buffer.sample(count), self._stage_step_done)
        self.agent.on_offline_start(self.settings.steps)
        self.progress.stage(f"{self.settings.algo.upper()} offline", self.settings.steps, self.step)
        self.first_step, self.started = self.step, time.perf_counter()
        while self.step < self.settings.steps:
            self.update_step()
            self.stop.check()

    def update_step(self) -> None:
        """One update on a sampled batch; at their intervals, log, evaluate and checkpoint."""
        metrics = self.agent.update(self.buffer.sample(self.config.batch_size))
        self.step += 1
        self.averager.add(metrics)
        last = self.step == self.settings.steps
        if self.step % self.log_every == 0 or last:
            self.log()
        if self.step % self.settings.eval_every == 0 or last:
            self.evaluate()
            self.save("last.pt")
            if not last:
                self.save(f"step_{self.step}.pt")

    def log(self) -> None:
        count = self.averager.count
        metrics = self.averager.flush()
        metrics["updates_per_s"] = (self.step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        self.directory.log_metrics(self.step, "offline", metrics)
        self.progress.advance(count, metrics)

    def evaluate(self) -> None:
        result = evaluate(self.agent, self.info, self.prepared.normalizer, self.settings.eval_episodes,
                          self.settings.seed + EVALUATION_SEED_OFFSET, self.device)
        entry = self.directory.add_evaluation("offline", self.step, result.summary(), self.info.score_rule.describe())
        self.evaluations.append(entry)
        self.progress.evaluation("offline", self.step, entry)

    def save(self, name: str) -> Path:
        payload = checkpoint_payload(self.settings.algo, self.config, self.info, self.prepared, self.agent,
                                      "offline", self.step, self.evaluations, run=self.settings.to_dict(),
                                      buffer_generator=self.buffer.generator.get_state())
        return save_checkpoint(self.directory.checkpoints / name, payload)

    def _stage_step_done(self, stage_step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Called by ``agent.prepare`` after each of its updates: Ctrl-C and the stage's progress bar."""
        self.stop.check()
        self.stage_averager.add(metrics)
        if stage_step % 100 == 0:
            count = self.stage_averager.count
            self.progress.advance(count, self.stage_averager.flush())


def _resumed_pretrain_settings(resume: str | Path, algo: str | None, dataset: str | None, device: str,
                               matmul_precision: str | None) -> tuple[PretrainSettings, dict[str, Any]]:
    """The settings the interrupted run recorded (device and precision may change), and its checkpoint."""
    checkpoint = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
    if checkpoint["phase"] != "offline":
        raise OfftuneError(f"{resume} holds a fine-tuning run; resume it with `offtune finetune --resume`")
    if algo is not None and algo.lower() != checkpoint["algo"]:
        raise OfftuneError(f"{resume} holds a run of {checkpoint['algo']}, not {algo}: leave ALGO out to resume it")
    if dataset is not None and not same_dataset(dataset, checkpoint["dataset"]):
        raise OfftuneError(f"{resume} holds a run on {checkpoint['dataset']['minari_id']}, not {dataset}: "
                           "leave DATASET out to resume it")
    recorded = checkpoint["run"]
    torch_device, precision = device_and_precision(device, matmul_precision or recorded.get("matmul_precision"))
    settings = PretrainSettings(
        algo=checkpoint["algo"], dataset=recorded["dataset"], seed=recorded["seed"], steps=recorded["steps"],
        eval_every=recorded["eval_every"], eval_episodes=recorded["eval_episodes"], device=str(torch_device),
        matmul_precision=precision, label=recorded.get("label"),
    )
    return settings, checkpoint


def pretrain(
    algo: str | None = None,
    dataset: str | None = None,
    *,
    steps: int = 1_000_000,
    seed: int = 0,
    device: str = "auto",
    matmul_precision: str | None = None,
    batch_size: int | None = None,
    eval_every: int | None = None,
    eval_episodes: int | None = None,
    task_mode: str | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    logger: str | None = None,
    resume: str | Path | None = None,
    download: bool = False,
    progress: Progress | None = None,
    label: str | None = None,
) -> RunResult:
    """Offline phase: ``steps`` actor-critic updates on ``dataset`` (SPOT trains its VAE first)."""
    checkpoint = None
    if resume is not None:
        settings, checkpoint = _resumed_pretrain_settings(resume, algo, dataset, device, matmul_precision)
        # The exact Minari id it trained on, whatever other versions are local by now.
        data = datasets.load(checkpoint["dataset"]["minari_id"], task_mode=checkpoint["dataset"]["task_mode"],
                             download=download)
        config = config_from_dict(algorithm(settings.algo)[0], checkpoint["config"])
        run_path = Path(resume)
    else:
        if algo is None or dataset is None:
            raise OfftuneError("give an algorithm and a dataset to pretrain, or --resume DIR")
        if steps < 1:
            raise OfftuneError("--steps must be positive")
        algorithm(algo)
        torch_device, precision = device_and_precision(device, matmul_precision)
        data = datasets.load(dataset, task_mode=task_mode, download=download)
        settings = PretrainSettings(
            algo=algo.lower(), dataset=dataset, seed=seed, steps=steps, eval_every=eval_every or min(50_000, steps),
            eval_episodes=eval_episodes or default_eval_episodes(data.info), device=str(torch_device),
            matmul_precision=precision, label=label,
        )
        sets = {**(overrides or {}), **({"batch_size": batch_size} if batch_size else {})}
        config = build_config(settings.algo, data.info, sets, config_file)
        run_path = new_run_dir(out, default_run_dir(settings.algo, dataset, seed))
    info, torch_device = data.info, torch.device(settings.device)
    directory = open_run_directory(run_path, logger, settings, config, info)

    seed_everything(settings.seed)
    prepared = prepare_offline(data, config)
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions, device=torch_device, seed=settings.seed)
    agent = algorithm(settings.algo)[1](info.obs_dim, info.action_dim, config, torch_device)
    run = OfflineRun(settings, config, info, prepared, agent, buffer, directory, torch_device,
                     progress or SilentProgress())
    if checkpoint is not None:
        run.restore(checkpoint)
    try:
        with run.stop:
            run.train()
    except KeyboardInterrupt:
        path = run.save("last.pt")
        directory.close()
        raise Interrupted(path, run.step) from None
    final = run.save("final.pt")
    directory.close()
    return RunResult(directory.path, final, run.evaluations, directory.scores)

"""The offline phase: ``pretrain`` runs an algorithm's updates on a dataset (SPOT trains its VAE first).

``PretrainSettings`` is what the user asked for, or what the checkpoint being resumed recorded;
``OfflineRun`` holds the loop's named state and ``OfflineRun.update_step`` is one step of it.

``last.pt`` is written at every evaluation and, between them, every ``checkpoint_minutes`` of wall-clock
time, SPOT's VAE stage included; resuming from any of them gives the weights of an uninterrupted run.
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
    CHECKPOINT_MINUTES,
    EVALUATION_SEED_OFFSET,
    LAST,
    PreparedData,
    Recorded,
    RunResult,
    ValueWatch,
    algorithm,
    build_config,
    check_batch_memory,
    check_minutes,
    checkpoint_payload,
    default_eval_episodes,
    default_run_dir,
    device_and_precision,
    diverged,
    interrupted_at_once,
    new_run_dir,
    open_run_directory,
    prepare_offline,
    recorded_run,
    require_finite_weights,
    same_dataset,
    transition_bytes,
)
from offtune.finetune.runtime import (
    GracefulStop,
    Interrupted,
    MetricAverager,
    Progress,
    SilentProgress,
    StopRequested,
    check_compile_mode,
    check_memory,
    check_seed,
    compile_agent,
    first_non_finite,
    ignoring_ctrl_c,
    log_interval,
    seed_everything,
    set_rng_state,
)
from offtune.finetune.scores import RunDirectory, require_logger
from offtune.policies.base import Agent
from offtune.policies.checkpoint import save_checkpoint
from offtune.policies.config import config_from_dict
from offtune.policies.presets import DEFAULT_PROTOCOL, check_protocol, default_steps


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
    checkpoint_minutes: float = CHECKPOINT_MINUTES
    """Wall-clock minutes between two ``last.pt`` (besides those at evaluations); resuming may change it."""
    protocol: str = DEFAULT_PROTOCOL
    """Which official script's settings the run follows (``offtune.policies.presets.PROTOCOLS``)."""
    compile: str = "auto"
    """``--compile``: auto, on or off (``runtime.compile_agent``); resuming may change it."""

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
        self.stage_step = 0
        """Updates of the algorithm's first stage (SPOT's VAE) done so far."""
        self.evaluations: list[dict[str, Any]] = []
        self.averager = MetricAverager()
        self.stage_averager = MetricAverager()
        self.log_every = log_interval(settings.steps)
        self.stop = GracefulStop()
        self.first_step, self.started = 0, time.perf_counter()
        self.last_checkpoint: tuple[Path, int] | None = None
        """``last.pt`` and its step: where the run continues from if it stops now."""
        self.next_checkpoint = time.monotonic() + settings.checkpoint_minutes * 60
        self.compiled: Any = None
        """The agent's compiled update until its compile time is logged (once, at the first log)."""
        self.value_watch = ValueWatch(prepared, config, progress)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue where ``checkpoint`` (this run's ``last.pt``) stopped, forgetting what was logged after it."""
        self.agent.load_state_dict(checkpoint["agent"])
        set_rng_state(checkpoint["rng"])
        self.buffer.generator.set_state(checkpoint["buffer_generator"])
        self.step = checkpoint["step"]
        self.stage_step = checkpoint.get("stage_step", 0)
        self.evaluations = [e for e in checkpoint["scores"] if e["phase"] == "offline"]
        self.directory.restart_from("offline", self.step, {"rule": self.info.score_rule.describe(),
                                                           "evaluations": list(self.evaluations)})
        self.last_checkpoint = (Path(checkpoint["path"]), self.step)

    def start_over(self) -> None:
        """A run that stopped before its first checkpoint begins again, without what it logged."""
        self.directory.restart_from("offline", 0, {"evaluations": []})

    def train(self) -> None:
        """The algorithm's own first stage (SPOT's VAE), then updates up to ``settings.steps``."""
        stage_steps = getattr(self.config, "vae_steps", 0)
        if stage_steps and self.step == 0:
            self.progress.stage("VAE", stage_steps, self.stage_step)
        self.agent.prepare(lambda count: self.buffer.sample(count), self._stage_step_done)
        self.agent.on_offline_start(self.settings.steps)
        self.compiled = compile_agent(self.agent, self.settings.compile, self.settings.steps - self.step)
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
            self.save(LAST)
            if not last:
                self.save(f"step_{self.step}.pt")
        elif time.monotonic() >= self.next_checkpoint:
            self.save(LAST)

    def log(self) -> None:
        count = self.averager.count
        metrics = self.averager.flush()
        if (key := first_non_finite(metrics)) is not None:
            raise diverged(self.step, f"{key} is {metrics[key]}", self.last_checkpoint)
        self.value_watch.check(self.step, metrics)
        metrics["updates_per_s"] = (self.step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        if self.compiled is not None:
            metrics["compile_s"] = self.compiled.compile_seconds
            self.compiled = None
        self.directory.log_metrics(self.step, "offline", metrics)
        self.progress.advance(count, metrics)

    def evaluate(self) -> None:
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        result = evaluate(self.agent, self.info, self.prepared.normalizer, self.settings.eval_episodes,
                          self.settings.seed + EVALUATION_SEED_OFFSET, self.device)
        entry = self.directory.add_evaluation("offline", self.step, result.summary(), self.info.score_rule.describe())
        self.evaluations.append(entry)
        self.progress.evaluation("offline", self.step, entry)

    def save(self, name: str) -> Path:
        """A checkpoint of the whole state between two updates; weights with NaN are never saved."""
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        payload = checkpoint_payload(self.settings.algo, self.config, self.info, self.prepared, self.agent,
                                      "offline", self.step, self.evaluations, run=self.settings.to_dict(),
                                      buffer_generator=self.buffer.generator.get_state(), stage_step=self.stage_step)
        path = save_checkpoint(self.directory.checkpoints / name, payload)
        if name == LAST:
            self.last_checkpoint = (path, self.step)
            self.next_checkpoint = time.monotonic() + self.settings.checkpoint_minutes * 60
        return path

    def _stage_step_done(self, stage_step: int, metrics: dict[str, torch.Tensor]) -> None:
        """Called by ``agent.prepare`` after each of its updates, a point where the state is whole: Ctrl-C, the
        stage's progress bar, its divergence check and its wall-clock checkpoints."""
        self.stop.check()
        self.stage_step = stage_step
        self.stage_averager.add(metrics)
        if stage_step % 100 == 0:
            count = self.stage_averager.count
            means = self.stage_averager.flush()
            if (key := first_non_finite(means)) is not None:
                raise diverged(self.step, f"{key} is {means[key]} in the first stage", self.last_checkpoint)
            self.progress.advance(count, means)
        if time.monotonic() >= self.next_checkpoint:
            self.save(LAST)


def _resumed_pretrain_settings(resume: str | Path, algo: str | None, dataset: str | None, device: str,
                               matmul_precision: str | None, checkpoint_minutes: float | None,
                               compile_mode: str | None) -> tuple[PretrainSettings, Recorded]:
    """The settings the interrupted run recorded (device, precision, compiling and checkpoint interval may
    change)."""
    recorded = recorded_run(resume, "offline")
    if algo is not None and algo.lower() != recorded.algo:
        raise OfftuneError(f"{resume} holds a run of {recorded.algo}, not {algo}: leave ALGO out to resume it")
    if dataset is not None and not same_dataset(dataset, recorded.dataset):
        raise OfftuneError(f"{resume} holds a run on {recorded.dataset['minari_id']}, not {dataset}: "
                           "leave DATASET out to resume it")
    run = recorded.run
    torch_device, precision = device_and_precision(device, matmul_precision or run.get("matmul_precision"))
    settings = PretrainSettings(
        algo=recorded.algo, dataset=run["dataset"], seed=run["seed"], steps=run["steps"],
        eval_every=run["eval_every"], eval_episodes=run["eval_episodes"], device=str(torch_device),
        matmul_precision=precision, label=run.get("label"),
        checkpoint_minutes=check_minutes(checkpoint_minutes or run.get("checkpoint_minutes", CHECKPOINT_MINUTES)),
        # Runs from before protocols existed pretrained with the offline scripts' settings.
        protocol=run.get("protocol", "offline"),
        compile=check_compile_mode(compile_mode or run.get("compile", "auto")),
    )
    return settings, recorded


def _new_pretrain_settings(algo: str | None, dataset: str | None, steps: int | None, seed: int, device: str,
                           matmul_precision: str | None, batch_size: int | None, eval_every: int | None,
                           eval_episodes: int | None, task_mode: str | None, out: str | Path | None,
                           overrides: dict[str, Any] | None, config_file: str | Path | None, download: bool,
                           label: str | None, checkpoint_minutes: float | None, protocol: str,
                           compile_mode: str | None) -> tuple[PretrainSettings, Any, Any, Path]:
    """A new run's settings, its dataset, its algorithm config and its folder, each bad option one line."""
    if algo is None or dataset is None:
        raise OfftuneError("give an algorithm and a dataset to pretrain, or --resume DIR")
    if steps is not None and steps < 1:
        raise OfftuneError("--steps must be positive")
    check_seed(seed)
    algorithm(algo)
    protocol = check_protocol(protocol)
    torch_device, precision = device_and_precision(device, matmul_precision)
    run_path = new_run_dir(out, default_run_dir(algo.lower(), dataset, seed))
    data = datasets.load(dataset, task_mode=task_mode, download=download)
    steps = steps or default_steps(algo.lower(), data.info, protocol)
    settings = PretrainSettings(
        algo=algo.lower(), dataset=dataset, seed=seed, steps=steps, eval_every=eval_every or min(50_000, steps),
        eval_episodes=eval_episodes or default_eval_episodes(data.info), device=str(torch_device),
        matmul_precision=precision, label=label,
        checkpoint_minutes=check_minutes(checkpoint_minutes or CHECKPOINT_MINUTES), protocol=protocol,
        compile=check_compile_mode(compile_mode or "auto"),
    )
    sets = {**(overrides or {}), **({"batch_size": batch_size} if batch_size else {})}
    return settings, data, build_config(settings.algo, data.info, sets, config_file, protocol), run_path


def pretrain(
    algo: str | None = None,
    dataset: str | None = None,
    *,
    steps: int | None = None,
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
    checkpoint_minutes: float | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    compile_mode: str | None = None,
) -> RunResult:
    """Offline phase: ``steps`` actor-critic updates on ``dataset`` (SPOT trains its VAE first).

    ``protocol`` is ``finetune`` (settings of the official fine-tuning scripts' pretraining, e.g. IQL's
    constant learning rates) or ``offline`` (the official offline scripts, e.g. IQL's cosine actor-lr decay,
    MISA's 1.2M/2M steps); ``steps`` defaults to the protocol's training length. ``compile_mode`` (auto when
    None) chooses the compiled or the eager update (``runtime.compile_agent``).

    ``resume`` continues the run in that folder from its ``last.pt``, or starts it over from its
    ``config.json`` when it stopped before its first checkpoint.
    """
    require_logger(logger)
    checkpoint = None
    if resume is not None:
        settings, recorded = _resumed_pretrain_settings(resume, algo, dataset, device, matmul_precision,
                                                        checkpoint_minutes, compile_mode)
        checkpoint = recorded.checkpoint
        # The exact Minari id it trained on, whatever other versions are local by now.
        data = datasets.load(recorded.dataset["minari_id"], task_mode=recorded.dataset["task_mode"],
                             download=download)
        config = config_from_dict(algorithm(settings.algo)[0], recorded.config)
        run_path = Path(resume)
    else:
        settings, data, config, run_path = _new_pretrain_settings(
            algo, dataset, steps, seed, device, matmul_precision, batch_size, eval_every, eval_episodes, task_mode,
            out, overrides, config_file, download, label, checkpoint_minutes, protocol, compile_mode)
    info, torch_device = data.info, torch.device(settings.device)
    check_batch_memory(config, info, torch_device)
    check_memory(len(data.rewards) * transition_bytes(info), torch_device,
                 f"the replay buffer of {len(data.rewards):,} transitions", "use a machine with more memory")
    directory = open_run_directory(run_path, logger, settings, config, info, fresh=resume is None)
    run = None
    try:
        seed_everything(settings.seed)
        prepared = prepare_offline(data, config)
        buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions, device=torch_device,
                              seed=settings.seed)
        agent = algorithm(settings.algo)[1](info.obs_dim, info.action_dim, config, torch_device)
        run = OfflineRun(settings, config, info, prepared, agent, buffer, directory, torch_device,
                         progress or SilentProgress())
        if checkpoint is not None:
            run.restore(checkpoint)
        else:
            run.start_over()
        try:
            with run.stop:
                run.train()
        except StopRequested:
            with ignoring_ctrl_c():
                run.save(LAST)
            raise Interrupted(directory.path, run.step, *run.last_checkpoint) from None
        final = run.save("final.pt")
    except KeyboardInterrupt:
        raise interrupted_at_once(directory, run, checkpoint) from None
    finally:
        directory.close()
    return RunResult(directory.path, final, run.evaluations, directory.scores)

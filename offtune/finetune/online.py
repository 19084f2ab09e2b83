"""The online phase: ``finetune`` continues a checkpoint in the live env, ``utd`` updates per env step,
through a buffer that mixes the offline data with the online transitions.

``FinetuneSettings`` is what the user asked for, or what the checkpoint being resumed recorded;
``OnlineRun`` holds the loop's named state and ``OnlineRun.env_step`` is one step of it.

``last.pt`` (with the online buffer) is written at every evaluation and, between them, every
``checkpoint_minutes`` of wall-clock time. A resumed run restores everything but the live envs: episodes
that were running start again from a reset.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offtune.buffers import datasets
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.replay import ReplayBuffer
from offtune.buffers.transforms import Normalizer, RewardTransform
from offtune.errors import OfftuneError
from offtune.finetune.envs import make_vector_env
from offtune.finetune.evaluate import check_observation_size, evaluate, to_env_actions
from offtune.finetune.report import before_after_cells
from offtune.finetune.runs import (
    CHECKPOINT_MINUTES,
    EVALUATION_SEED_OFFSET,
    LAST,
    MAZE_FAMILIES,
    PreparedData,
    Recorded,
    RunResult,
    algorithm,
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
    transition_bytes,
)
from offtune.finetune.runtime import (
    GracefulStop,
    Interrupted,
    MetricAverager,
    Progress,
    SilentProgress,
    StopRequested,
    check_memory,
    check_seed,
    first_non_finite,
    ignoring_ctrl_c,
    log_interval,
    seed_everything,
    set_rng_state,
)
from offtune.finetune.scores import RunDirectory, require_logger, write_text_atomically
from offtune.policies.base import Agent
from offtune.policies.checkpoint import load_checkpoint, save_checkpoint
from offtune.policies.config import apply_overrides, config_from_dict

MAX_ENVS = 1024
"""More envs than this in one process only wait on each other (they step one after another)."""


@dataclass
class FinetuneSettings:
    """What a fine-tuning run does; every checkpoint records it as ``run`` so ``--resume`` can redo it."""

    algo: str
    dataset: str
    checkpoint: str
    """The pretrained checkpoint the run started from (with the seed, what identifies the run in reports)."""
    seed: int
    steps: int
    utd: int
    num_envs: int
    online_ratio: float | None
    buffer_size: int
    eval_every: int
    eval_episodes: int
    device: str
    matmul_precision: str
    label: str | None = None
    checkpoint_minutes: float = CHECKPOINT_MINUTES
    """Wall-clock minutes between two ``last.pt`` (besides those at evaluations); resuming may change it."""

    def to_dict(self) -> dict[str, Any]:
        values = {"phase": "online", **asdict(self)}
        if values["label"] is None:
            del values["label"]
        return values


class OnlineRun:
    """The state of one fine-tuning run: agent, mixed buffer, live envs, env-step counter, successes."""

    def __init__(self, settings: FinetuneSettings, config: Any, info: DatasetInfo, prepared: PreparedData,
                 agent: Agent, buffer: ReplayBuffer, directory: RunDirectory, device: torch.device,
                 progress: Progress) -> None:
        self.settings, self.config, self.info, self.prepared = settings, config, info, prepared
        self.agent, self.buffer, self.directory, self.device, self.progress = agent, buffer, directory, device, progress
        self.step = 0
        self.successes: list[bool] = []
        """Whether each finished online training episode reached its goal (maze envs), for the regret."""
        self.offline_scores: list[dict[str, Any]] = []
        """The pretraining evaluations, carried into this run's score history."""
        self.averager = MetricAverager()
        self.log_every = log_interval(settings.steps)
        self.updates_per_step = settings.utd * settings.num_envs
        self.stop = GracefulStop()
        self.envs: Any = None
        self.observations: np.ndarray | None = None
        self.first_step, self.last_logged, self.started = 0, 0, time.perf_counter()
        self.last_checkpoint: tuple[Path, int] | None = None
        """``last.pt`` and its step: where the run continues from if it stops now."""
        self.next_checkpoint = time.monotonic() + settings.checkpoint_minutes * 60

    def start(self, pretrained: dict[str, Any]) -> None:
        """A fresh run (or one started over): the agent switches to its online settings and the pretrained policy
        is scored."""
        self.agent.on_online_start()
        self.offline_scores = [e for e in pretrained.get("scores", []) if e.get("phase") == "offline"]
        self.directory.restart_from("online", 0, {"evaluations": list(self.offline_scores)})
        self.directory.set_scores(before=self.evaluate())

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue where ``checkpoint`` (this run's ``last.pt``) stopped, forgetting what was logged after it."""
        set_rng_state(checkpoint["rng"])
        self.buffer.load_online_state(checkpoint["buffer"])
        self.successes = list(checkpoint["online_successes"])
        self.step = checkpoint["step"]
        self.offline_scores = list(checkpoint["offline_scores"])
        evaluations = list(checkpoint["scores"])
        scores: dict[str, Any] = {"rule": self.info.score_rule.describe(), "evaluations": evaluations}
        before = [e for e in evaluations if (e["phase"], e["step"]) == ("online", 0)]
        if before:
            scores["before"] = before[0]
        self.directory.restart_from("online", self.step, scores)
        self.last_checkpoint = (Path(checkpoint["path"]), self.step)

    def open_envs(self) -> None:
        """The live envs, reset with the run's seed (episodes cut by an interruption start again)."""
        self.envs = make_vector_env(self.info, self.settings.num_envs)
        check_observation_size(self.envs, self.info)
        self.observations, _ = self.envs.reset(seed=[self.settings.seed + i for i in range(self.settings.num_envs)])

    def train(self) -> None:
        self.progress.stage(f"{self.settings.algo.upper()} online", self.settings.steps, self.step)
        self.first_step = self.last_logged = self.step
        self.started = time.perf_counter()
        while self.step < self.settings.steps:
            self.env_step()
            self.stop.check()

    def env_step(self) -> None:
        """Act in every env, store the transitions, update ``utd`` times per env step, then log/evaluate/save."""
        normalize, settings = self.prepared.normalizer, self.settings
        observations = normalize(self.observations).astype(np.float32)
        actions = self.agent.explore(torch.as_tensor(observations, device=self.device)).cpu().numpy()
        next_observations, rewards, terminated, truncated, infos = self.envs.step(to_env_actions(actions, self.info))
        finished = terminated | truncated
        stored_next = next_observations.copy()  # an episode's true last observation, not the reset one
        for i in np.flatnonzero(finished):
            stored_next[i] = infos["final_obs"][i]
        self.buffer.add(observations, actions, self.prepared.reward_transform(rewards.astype(np.float32)),
                        normalize(stored_next), terminated.astype(np.float32))
        self._record_successes(infos, finished)
        self.observations = next_observations
        for _ in range(self.updates_per_step):
            self.averager.add(self.agent.update(self.buffer.sample(self.config.batch_size)))

        previous, self.step = self.step, min(self.step + settings.num_envs, settings.steps)
        self.agent.anneal(self.step / settings.steps)
        last = self.step == settings.steps
        if self.step // self.log_every != previous // self.log_every or last:
            self.log()
        if self.step // settings.eval_every != previous // settings.eval_every or last:
            self.evaluate()
            self.save(LAST, with_buffer=True)
            if not last:
                self.save(f"step_{self.step}.pt", with_buffer=False)
        elif time.monotonic() >= self.next_checkpoint:
            self.save(LAST, with_buffer=True)

    def _record_successes(self, infos: dict[str, Any], finished: np.ndarray) -> None:
        success = infos.get("final_info", {}).get("success")
        if success is not None:
            self.successes += [bool(success[i]) for i in np.flatnonzero(finished)]

    def regret(self) -> float | None:
        """The fraction of online training episodes that failed (CORL's regret), for maze tasks."""
        if not self.successes or self.info.family not in MAZE_FAMILIES:
            return None
        return float(1.0 - np.mean(self.successes))

    def log(self) -> None:
        metrics = self.averager.flush()
        if (key := first_non_finite(metrics)) is not None:
            raise diverged(self.step, f"{key} is {metrics[key]}", self.last_checkpoint)
        metrics["env_steps_per_s"] = (self.step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        if (regret := self.regret()) is not None:
            metrics["regret"] = regret
        self.directory.log_metrics(self.step, "online", metrics)
        self.progress.advance(self.step - self.last_logged, metrics)
        self.last_logged = self.step

    def evaluate(self) -> dict[str, Any]:
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        result = evaluate(self.agent, self.info, self.prepared.normalizer, self.settings.eval_episodes,
                          self.settings.seed + EVALUATION_SEED_OFFSET, self.device)
        entry = self.directory.add_evaluation("online", self.step, result.summary(), self.info.score_rule.describe())
        self.progress.evaluation("online", self.step, entry)
        return entry

    def evaluations(self) -> list[dict[str, Any]]:
        """The pretraining evaluations, then this run's online ones."""
        return self.offline_scores + [e for e in self.directory.scores["evaluations"] if e["phase"] == "online"]

    def save(self, name: str, with_buffer: bool) -> Path:
        """A checkpoint; ``last.pt`` also holds the online buffer, which resuming needs and evaluating does not.
        Weights with NaN are never saved."""
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        extra: dict[str, Any] = {"run": self.settings.to_dict(), "online_successes": list(self.successes),
                                 "offline_scores": self.offline_scores}
        if with_buffer:
            extra["buffer"] = self.buffer.online_state()
        payload = checkpoint_payload(self.settings.algo, self.config, self.info, self.prepared, self.agent,
                                      "online", self.step, self.evaluations(), **extra)
        path = save_checkpoint(self.directory.checkpoints / name, payload)
        if name == LAST:
            self.last_checkpoint = (path, self.step)
            self.next_checkpoint = time.monotonic() + self.settings.checkpoint_minutes * 60
        return path

    def finish(self) -> Path:
        """Record "after" and the regret, write ``report.md``, then ``final.pt``: a run with it is finished."""
        final_scores: dict[str, Any] = {"after": self.evaluations()[-1]}
        if self.info.family in MAZE_FAMILIES:
            final_scores["regret"] = self.regret()
        self.directory.set_scores(**final_scores)
        write_report(self.directory.path, self.settings.algo, self.info, self.directory.scores)
        return self.save("final.pt", with_buffer=False)

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


def _resumed_finetune_settings(resume: str | Path, device: str, matmul_precision: str | None,
                               checkpoint_minutes: float | None) -> tuple[FinetuneSettings, Recorded]:
    """The settings the interrupted run recorded (device, precision and checkpoint interval may change)."""
    recorded = recorded_run(resume, "online")
    run = recorded.run
    torch_device, precision = device_and_precision(device, matmul_precision or run.get("matmul_precision"))
    settings = FinetuneSettings(
        algo=recorded.algo, dataset=run["dataset"], checkpoint=run["checkpoint"], seed=run["seed"],
        steps=run["steps"], utd=run["utd"], num_envs=run["num_envs"], online_ratio=run["online_ratio"],
        buffer_size=run["buffer_size"], eval_every=run["eval_every"], eval_episodes=run["eval_episodes"],
        device=str(torch_device), matmul_precision=precision, label=run.get("label"),
        checkpoint_minutes=check_minutes(checkpoint_minutes or run.get("checkpoint_minutes", CHECKPOINT_MINUTES)),
    )
    return settings, recorded


def finetune(
    checkpoint: str | Path | None = None,
    *,
    steps: int = 1_000_000,
    utd: int = 1,
    num_envs: int = 1,
    online_ratio: float | None = None,
    buffer_size: int | None = None,
    eval_every: int | None = None,
    eval_episodes: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    matmul_precision: str | None = None,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    logger: str | None = None,
    resume: str | Path | None = None,
    download: bool = False,
    progress: Progress | None = None,
    label: str | None = None,
    checkpoint_minutes: float | None = None,
) -> RunResult:
    """Online phase: ``steps`` env steps in the live env, ``utd`` updates per env step, from a checkpoint.

    ``seed`` defaults to the seed the checkpoint was pretrained with. ``resume`` continues the run in that
    folder from its ``last.pt``, or starts it over from its ``config.json`` (and the pretrained checkpoint
    it recorded) when it stopped before its first checkpoint.
    """
    require_logger(logger)
    resumed = None
    if resume is not None:
        settings, recorded = _resumed_finetune_settings(resume, device, matmul_precision, checkpoint_minutes)
        resumed = recorded.checkpoint
        start_from = resumed if resumed is not None else load_checkpoint(settings.checkpoint)
        config = config_from_dict(algorithm(settings.algo)[0], recorded.config)
        run_path = Path(resume)
    else:
        if checkpoint is None:
            raise OfftuneError("give a checkpoint to fine-tune, or --resume DIR")
        if utd < 1 or num_envs < 1 or steps < 1:
            raise OfftuneError("--steps, --utd and --num-envs must be positive")
        if num_envs > MAX_ENVS:
            raise OfftuneError(f"--num-envs must be at most {MAX_ENVS}, got {num_envs}")
        if buffer_size is not None and buffer_size < num_envs:
            raise OfftuneError(f"--buffer-size must hold one step of every env (--num-envs {num_envs}), "
                               f"got {buffer_size}")
        if seed is not None:
            check_seed(seed)
        start_from = load_checkpoint(checkpoint)
        torch_device, precision = device_and_precision(device, matmul_precision)
        recorded_settings = start_from.get("run", {})
        settings = FinetuneSettings(
            algo=start_from["algo"], dataset=recorded_settings.get("dataset", start_from["dataset"]["name"]),
            checkpoint=str(start_from["path"]), seed=recorded_settings.get("seed", 0) if seed is None else seed,
            steps=steps, utd=utd, num_envs=num_envs, online_ratio=online_ratio,
            buffer_size=buffer_size or max(steps, num_envs), eval_every=eval_every or min(50_000, steps),
            eval_episodes=eval_episodes or default_eval_episodes(DatasetInfo.from_dict(start_from["dataset"])),
            device=str(torch_device), matmul_precision=precision, label=label,
            checkpoint_minutes=check_minutes(checkpoint_minutes or CHECKPOINT_MINUTES),
        )
        config = apply_overrides(config_from_dict(algorithm(settings.algo)[0], start_from["config"]), overrides or {})
        run_path = new_run_dir(out, default_run_dir(settings.algo, settings.dataset, settings.seed, "-ft"))
    info, torch_device = DatasetInfo.from_dict(start_from["dataset"]), torch.device(settings.device)
    check_batch_memory(config, info, torch_device)
    check_memory(settings.buffer_size * transition_bytes(info), torch_device,
                 f"an online buffer of {settings.buffer_size:,} transitions",
                 "lower --buffer-size (its default is --steps; older transitions are then overwritten)")
    # The exact Minari id pretraining loaded: the name it was given can resolve to another version by now.
    data = datasets.load(info.minari_id, task_mode=info.task_mode, download=download)
    if data.info.obs_dim != info.obs_dim or data.info.action_dim != info.action_dim:
        raise OfftuneError(
            f"the checkpoint expects observations of size {info.obs_dim} and actions of size {info.action_dim}, "
            f"but dataset {info.name} now gives {data.info.obs_dim} and {data.info.action_dim}"
        )
    prepared = prepare_offline(data, config, Normalizer.from_dict(start_from["normalizer"]),
                               RewardTransform(**start_from["reward_transform"]))
    directory = open_run_directory(run_path, logger, settings, config, info, fresh=resume is None)
    run = None
    try:
        seed_everything(settings.seed)
        buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions,
                              online_capacity=settings.buffer_size, online_ratio=settings.online_ratio,
                              device=torch_device, seed=settings.seed)
        agent = algorithm(settings.algo)[1](info.obs_dim, info.action_dim, config, torch_device)
        agent.load_state_dict(start_from["agent"])
        run = OnlineRun(settings, config, info, prepared, agent, buffer, directory, torch_device,
                        progress or SilentProgress())
        if resumed is not None:
            run.restore(resumed)
        else:
            run.start(start_from)
        run.open_envs()
        try:
            with run.stop:
                run.train()
        except StopRequested:
            with ignoring_ctrl_c():
                run.save(LAST, with_buffer=True)
            raise Interrupted(directory.path, run.step, *run.last_checkpoint) from None
        final = run.finish()
    except KeyboardInterrupt:
        raise interrupted_at_once(directory, run, resumed) from None
    finally:
        if run is not None:
            run.close()
        directory.close()
    return RunResult(directory.path, final, directory.scores["evaluations"], directory.scores)


def write_report(run_dir: Path, algo: str, info: DatasetInfo, scores: dict[str, Any]) -> Path:
    """``report.md``: the before -> after line of one fine-tuning run, the cells the terminal table shows."""
    cells = before_after_cells(scores)
    lines = [
        f"# {algo.upper()} on {info.name}: offline -> online",
        "",
        f"Score rule: {scores.get('rule', info.score_rule.describe())}",
        "",
        "| dataset | algorithm | before | after | online steps | regret |",
        "|---|---|---|---|---|---|",
        f"| {info.name} | {algo} | {cells.before} | {cells.after} | {cells.steps} | {cells.regret} |",
        "",
        f"Evaluation: {scores['after']['episodes']} deterministic episodes per point.",
    ]
    path = run_dir / "report.md"
    write_text_atomically(path, "\n".join(lines) + "\n")
    return path

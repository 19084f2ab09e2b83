"""The online phase: ``finetune`` continues a checkpoint in the live env, ``utd`` updates per env step,
through a buffer that mixes the offline data with the online transitions.

``FinetuneSettings`` is what the user asked for, or what the checkpoint being resumed recorded;
``OnlineRun`` holds the loop's named state and ``OnlineRun.env_step`` is one step of it. ``LoggedDataRun``
is the same run on a logged dataset instead of the live env (``--data``).

``last.pt`` (with the online buffer, and the recorded episodes with ``--record-dataset``) is written at every
evaluation and, between them, every ``checkpoint_minutes`` of wall-clock time. A resumed run restores
everything but the live envs: episodes that were running start again from a reset.

About 500 lines, kept together because the run's state, its two loops (live env, logged data), what its
checkpoints hold and what ``finetune`` checks and restores on resume change together.
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
from offtune.finetune.logged import logged_transitions, refuse_live_env_options
from offtune.finetune.recording import (
    RawEpisodes,
    check_record_target,
    episode_from_state,
    episode_state,
    write_recorded,
)
from offtune.finetune.report import before_after_cells
from offtune.finetune.runs import (
    CHECKPOINT_MINUTES,
    EVALUATION_SEED_OFFSET,
    LAST,
    MAZE_FAMILIES,
    PreparedData,
    RunResult,
    ValueWatch,
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
from offtune.finetune.scores import RunDirectory, require_logger, write_text_atomically
from offtune.finetune.video import VideoSchedule
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
    data: str | None = None
    """A logged Minari dataset to train on instead of the live env (``--data``); ``buffer_size`` is then its
    number of transitions, so a resumed run can tell that the dataset changed."""
    record_dataset: str | None = None
    """The Minari id the online transitions are written to at the end of the run (``--record-dataset``)."""
    video_every: int | None = None
    """A video at the first evaluation (step 0), then at the first evaluation at or past every multiple of this
    many steps (``--video-every``), as ``videos/step_N.mp4``."""
    video_max_steps: int | None = None
    """Each video episode cut after this many steps (``--video-max-steps``); None: whole episodes."""
    compile: str = "auto"
    """``--compile``: auto, on or off (``runtime.compile_agent``); resuming may change it."""

    def to_dict(self) -> dict[str, Any]:
        values = {"phase": "online", **asdict(self)}
        for optional in ("label", "data", "record_dataset", "video_every", "video_max_steps"):
            if values[optional] is None:
                del values[optional]
        return values


class OnlineRun:
    """The state of one fine-tuning run: agent, mixed buffer, live envs, env-step counter, successes."""

    stage = "online"
    rate_metric = "env_steps_per_s"

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
        self.recorded = RawEpisodes(settings.num_envs) if settings.record_dataset else None
        """The live envs' raw episodes, for ``--record-dataset``."""
        self.videos = None if settings.video_every is None else VideoSchedule(
            directory.path / "videos", settings.video_every, max_steps=settings.video_max_steps)
        self.compiled: Any = None
        """The agent's compiled update until its compile time is logged (once, at the first log)."""
        self.value_watch = ValueWatch(prepared, config, progress)
        self.last_video: int | None = None
        """The step of the latest video (``last.pt`` keeps it, so a resumed run records the same videos)."""

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
        self.restore_buffer(checkpoint["buffer"])
        if self.recorded is not None:
            self.recorded.restore([episode_from_state(state, i) for i, state in enumerate(checkpoint["recorded"])])
        self.successes = list(checkpoint["online_successes"])
        self.step = checkpoint["step"]
        self.last_video = checkpoint.get("last_video")
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
        self.envs = make_vector_env(self.info, self.settings.num_envs, record=self.recorded)
        check_observation_size(self.envs, self.info)
        self.observations, _ = self.envs.reset(seed=[self.settings.seed + i for i in range(self.settings.num_envs)])

    def train(self) -> None:
        updates = (self.settings.steps - self.step) * self.settings.utd
        self.compiled = compile_agent(self.agent, self.settings.compile, updates)
        self.progress.stage(f"{self.settings.algo.upper()} {self.stage}", self.settings.steps, self.step)
        self.first_step = self.last_logged = self.step
        self.started = time.perf_counter()
        while self.step < self.settings.steps:
            self.advance()
            self.stop.check()

    def advance(self) -> None:
        """One step of the loop: an env step here, an update on the logged data in :class:`LoggedDataRun`."""
        self.env_step()

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
        self.count_steps(settings.num_envs)

    def count_steps(self, count: int) -> None:
        """Advance the step counter by ``count``, cool the schedules, then log, evaluate and save at their intervals."""
        settings = self.settings
        previous, self.step = self.step, min(self.step + count, settings.steps)
        # Schedules count gradient steps against the online steps T, as the official SPOT fine-tuning cools λ
        # by `1 - total_it / max_timesteps` (main_finetune.py): with utd updates per env step, utd times faster.
        self.agent.anneal(self.step * settings.utd / settings.steps)
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
        self.value_watch.check(self.step, metrics)
        metrics[self.rate_metric] = (self.step - self.first_step) / max(time.perf_counter() - self.started, 1e-9)
        if (regret := self.regret()) is not None:
            metrics["regret"] = regret
        if self.compiled is not None:
            metrics["compile_s"] = self.compiled.compile_seconds
            self.compiled = None
        self.directory.log_metrics(self.step, "online", metrics)
        self.progress.advance(self.step - self.last_logged, metrics)
        self.last_logged = self.step

    def evaluate(self) -> dict[str, Any]:
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        result = evaluate(self.agent, self.info, self.prepared.normalizer, self.settings.eval_episodes,
                          self.settings.seed + EVALUATION_SEED_OFFSET, self.device)
        entry = self.directory.add_evaluation("online", self.step, result.summary(), self.info.score_rule.describe())
        self.progress.evaluation("online", self.step, entry)
        if self.videos is not None and (self.last_video is None
                                        or self.step // self.videos.every > self.last_video // self.videos.every):
            self.videos.record(self.agent, self.info, self.prepared.normalizer, self.step,
                               self.settings.seed + EVALUATION_SEED_OFFSET, self.device)
            self.last_video = self.step
        return entry

    def evaluations(self) -> list[dict[str, Any]]:
        """The pretraining evaluations, then this run's online ones."""
        return self.offline_scores + [e for e in self.directory.scores["evaluations"] if e["phase"] == "online"]

    def save(self, name: str, with_buffer: bool) -> Path:
        """A checkpoint; ``last.pt`` also holds the online buffer, which resuming needs and evaluating does not.
        Weights with NaN are never saved."""
        require_finite_weights(self.agent, self.step, self.last_checkpoint)
        extra: dict[str, Any] = {"run": self.settings.to_dict(), "online_successes": list(self.successes),
                                 "offline_scores": self.offline_scores, "last_video": self.last_video}
        if with_buffer:
            extra["buffer"] = self.buffer_state()
            if self.recorded is not None:
                extra["recorded"] = [episode_state(episode) for episode in self.recorded.episodes()]
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
        if self.recorded is not None:
            self.write_dataset()
        return self.save("final.pt", with_buffer=False)

    def buffer_state(self) -> dict[str, Any]:
        return self.buffer.online_state()

    def restore_buffer(self, state: dict[str, Any]) -> None:
        self.buffer.load_online_state(state)

    def write_dataset(self) -> None:
        """The recorded episodes as Minari dataset ``record_dataset``, declared like the checkpoint's dataset."""
        settings = self.settings
        write_recorded(settings.record_dataset, self.recorded.episodes(), self.info, self.directory.path,
                       settings.algo, f"`offtune finetune` (seed {settings.seed}) from {settings.checkpoint}")

    def close(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


class LoggedDataRun(OnlineRun):
    """Fine-tuning on a logged dataset instead of the live env (``--data``): an offline phase on the new data
    with the online phase's settings and schedules (``on_online_start``, then ``anneal`` over ``steps``
    updates, one per step), evaluated in the live env as usual.

    The buffer holds the checkpoint's offline data plus the logged transitions in the online part, sampled as
    ``--mix`` says, as it would hold the online transitions had they been collected here. That is what users of
    d3rlpy and Stable-Baselines3 asked for (d3rlpy #215, #279; SB3 #278, #1414): data collected by deploying a
    policy appended to the data it was trained on, not replacing it; a pool of only the new, narrow data would
    let the critics extrapolate where the policy has not been. The logged transitions are reloaded from their
    dataset on resume (``last.pt`` keeps the sampler's state only), as the offline part is.
    """

    stage = "offline on logged data"
    rate_metric = "updates_per_s"

    def open_envs(self) -> None:
        """No live env to train in: each evaluation builds its own."""

    def advance(self) -> None:
        self.averager.add(self.agent.update(self.buffer.sample(self.config.batch_size)))
        self.count_steps(1)

    def buffer_state(self) -> dict[str, Any]:
        return {"generator": self.buffer.generator.get_state()}

    def restore_buffer(self, state: dict[str, Any]) -> None:
        self.buffer.generator.set_state(state["generator"])


def _resumed_finetune_settings(
    resume: str | Path, device: str, matmul_precision: str | None, checkpoint_minutes: float | None,
    compile_mode: str | None,
) -> tuple[FinetuneSettings, dict[str, Any], dict[str, Any] | None, Any]:
    """The settings the interrupted run recorded (device, precision, compiling and checkpoint interval may
    change), the checkpoint to go on from (``last.pt``, or the pretrained one when it stopped before its first
    checkpoint), that ``last.pt`` or None, and the algorithm config it recorded."""
    recorded = recorded_run(resume, "online")
    run = recorded.run
    torch_device, precision = device_and_precision(device, matmul_precision or run.get("matmul_precision"))
    settings = FinetuneSettings(
        algo=recorded.algo, dataset=run["dataset"], checkpoint=run["checkpoint"], seed=run["seed"],
        steps=run["steps"], utd=run["utd"], num_envs=run["num_envs"], online_ratio=run["online_ratio"],
        buffer_size=run["buffer_size"], eval_every=run["eval_every"], eval_episodes=run["eval_episodes"],
        device=str(torch_device), matmul_precision=precision, label=run.get("label"),
        checkpoint_minutes=check_minutes(checkpoint_minutes or run.get("checkpoint_minutes", CHECKPOINT_MINUTES)),
        data=run.get("data"), record_dataset=run.get("record_dataset"), video_every=run.get("video_every"),
        video_max_steps=run.get("video_max_steps"),
        compile=check_compile_mode(compile_mode or run.get("compile", "auto")),
    )
    resumed = recorded.checkpoint
    start_from = resumed if resumed is not None else load_checkpoint(settings.checkpoint)
    return settings, start_from, resumed, config_from_dict(algorithm(settings.algo)[0], recorded.config)


def _check_new_run_options(checkpoint: str | Path | None, steps: int, utd: int, num_envs: int,
                           buffer_size: int | None, seed: int | None, data: str | None, record_dataset: str | None,
                           video_every: int | None, video_max_steps: int | None) -> None:
    """A new fine-tuning run's options, each mistake one line."""
    if checkpoint is None:
        raise OfftuneError("give a checkpoint to fine-tune, or --resume DIR")
    if utd < 1 or num_envs < 1 or steps < 1:
        raise OfftuneError("--steps, --utd and --num-envs must be positive")
    if num_envs > MAX_ENVS:
        raise OfftuneError(f"--num-envs must be at most {MAX_ENVS}, got {num_envs}")
    if buffer_size is not None and buffer_size < num_envs:
        raise OfftuneError(f"--buffer-size must hold one step of every env (--num-envs {num_envs}), "
                           f"got {buffer_size}")
    if data is not None:
        refuse_live_env_options(utd, num_envs, buffer_size, record_dataset)
    if video_max_steps is not None and video_every is None:
        raise OfftuneError("--video-max-steps goes with --video-every")
    if (video_every is not None and video_every < 1) or (video_max_steps is not None and video_max_steps < 1):
        raise OfftuneError("--video-every and --video-max-steps must be positive")
    if seed is not None:
        check_seed(seed)


def _check_resources(settings: FinetuneSettings, config: Any, info: DatasetInfo, device: torch.device,
                     run_path: Path) -> None:
    """Before anything is written: the record target is free and the batch and online buffer fit in memory."""
    if settings.record_dataset is not None:
        check_record_target(settings.record_dataset, run_path)
    check_batch_memory(config, info, device)
    if settings.data is None:
        check_memory(settings.buffer_size * transition_bytes(info), device,
                     f"an online buffer of {settings.buffer_size:,} transitions",
                     "lower --buffer-size (its default is --steps; older transitions are then overwritten)")


def _training_data(settings: FinetuneSettings, config: Any, info: DatasetInfo, start_from: dict[str, Any],
                   download: bool, device: torch.device, resumed: bool) -> tuple[PreparedData, Any]:
    """The offline data prepared as pretraining prepared it, and the logged transitions of ``--data`` (or None)."""
    # The exact Minari id pretraining loaded: the name it was given can resolve to another version by now.
    source = datasets.load(info.minari_id, task_mode=info.task_mode, download=download)
    if source.info.obs_dim != info.obs_dim or source.info.action_dim != info.action_dim:
        raise OfftuneError(
            f"the checkpoint expects observations of size {info.obs_dim} and actions of size {info.action_dim}, "
            f"but dataset {info.name} now gives {source.info.obs_dim} and {source.info.action_dim}"
        )
    prepared = prepare_offline(source, config, Normalizer.from_dict(start_from["normalizer"]),
                               RewardTransform(**start_from["reward_transform"]))
    if settings.data is None:
        return prepared, None
    # buffer_size is the number of logged transitions, by which a resumed run sees the dataset unchanged.
    logged = logged_transitions(settings.data, info, config, prepared, download, device,
                                settings.buffer_size if resumed else None)
    settings.buffer_size = len(logged.rewards)
    return prepared, logged


def _new_finetune_settings(checkpoint: str | Path | None, steps: int, utd: int, num_envs: int,
                           online_ratio: float | None, buffer_size: int | None, eval_every: int | None,
                           eval_episodes: int | None, seed: int | None, device: str, matmul_precision: str | None,
                           out: str | Path | None, overrides: dict[str, Any] | None, label: str | None,
                           checkpoint_minutes: float | None, data: str | None, record_dataset: str | None,
                           video_every: int | None, video_max_steps: int | None,
                           compile_mode: str | None) -> tuple[FinetuneSettings, dict[str, Any], Any, Path]:
    """A new run's settings, the checkpoint it starts from, its algorithm config and its folder."""
    _check_new_run_options(checkpoint, steps, utd, num_envs, buffer_size, seed, data, record_dataset,
                           video_every, video_max_steps)
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
        data=data, record_dataset=record_dataset, video_every=video_every, video_max_steps=video_max_steps,
        compile=check_compile_mode(compile_mode or "auto"),
    )
    config = apply_overrides(config_from_dict(algorithm(settings.algo)[0], start_from["config"]), overrides or {})
    suffix = "-ft" if data is None else "-data"
    run_path = new_run_dir(out, default_run_dir(settings.algo, settings.dataset, settings.seed, suffix))
    return settings, start_from, config, run_path


def _build_run(settings: FinetuneSettings, config: Any, info: DatasetInfo, prepared: PreparedData, logged: Any,
               start_from: dict[str, Any], directory: RunDirectory, device: torch.device,
               progress: Progress) -> OnlineRun:
    """The seeded buffer (offline data, plus the logged transitions of ``--data``), the agent with its
    pretrained weights, and the run that trains them: live env or logged data."""
    seed_everything(settings.seed)
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions,
                          online_capacity=settings.buffer_size, online_ratio=settings.online_ratio,
                          device=device, seed=settings.seed)
    if logged is not None:
        buffer.add(*logged)
    agent = algorithm(settings.algo)[1](info.obs_dim, info.action_dim, config, device)
    agent.load_state_dict(start_from["agent"])
    run_class = OnlineRun if logged is None else LoggedDataRun
    return run_class(settings, config, info, prepared, agent, buffer, directory, device, progress)


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
    data: str | None = None,
    record_dataset: str | None = None,
    video_every: int | None = None,
    video_max_steps: int | None = None,
    compile_mode: str | None = None,
) -> RunResult:
    """Online phase: ``steps`` env steps in the live env, ``utd`` updates per env step, from a checkpoint.

    ``seed`` defaults to the seed the checkpoint was pretrained with. ``resume`` continues the run in that
    folder from its ``last.pt``, or starts it over from its ``config.json`` (and the pretrained checkpoint
    it recorded) when it stopped before its first checkpoint.

    ``data`` (a Minari id) trains on that logged dataset instead of the live env, ``steps`` updates with the
    online settings (:class:`LoggedDataRun`). ``record_dataset`` (a Minari id no local dataset has) writes the
    online transitions as a dataset like the checkpoint's, at the end of the run, before ``final.pt``
    (:meth:`OnlineRun.write_dataset`). ``video_every`` records one evaluation episode as a video at step 0,
    then at the first evaluation past every multiple of it (``video_max_steps`` cuts it), in ``videos/``.
    ``compile_mode`` (auto when None) chooses the compiled or the eager update (``runtime.compile_agent``).
    """
    require_logger(logger)
    resumed = None
    if resume is not None:
        settings, start_from, resumed, config = _resumed_finetune_settings(resume, device, matmul_precision,
                                                                           checkpoint_minutes, compile_mode)
        run_path = Path(resume)
    else:
        settings, start_from, config, run_path = _new_finetune_settings(
            checkpoint, steps, utd, num_envs, online_ratio, buffer_size, eval_every, eval_episodes, seed, device,
            matmul_precision, out, overrides, label, checkpoint_minutes, data, record_dataset, video_every,
            video_max_steps, compile_mode)
    info, torch_device = DatasetInfo.from_dict(start_from["dataset"]), torch.device(settings.device)
    _check_resources(settings, config, info, torch_device, run_path)
    prepared, logged = _training_data(settings, config, info, start_from, download, torch_device,
                                      resumed=resume is not None)
    directory = open_run_directory(run_path, logger, settings, config, info, fresh=resume is None)
    run = None
    try:
        run = _build_run(settings, config, info, prepared, logged, start_from, directory, torch_device,
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

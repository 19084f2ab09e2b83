"""One trainer for both phases: offline pretraining on the dataset, online fine-tuning in the live env.

``pretrain`` fills a device-resident buffer with the transformed dataset and runs the algorithm's
updates; ``finetune`` loads a checkpoint, re-creates the same buffer and lets the live env append to its
online part while updating (UTD updates per env step). Both evaluate on the dataset's eval env, write the
run directory described in DESIGN.md, checkpoint atomically, stop cleanly on Ctrl-C and resume.
"""

from __future__ import annotations

import datetime as _dt
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from offtune.buffers import datasets
from offtune.buffers.datasets import DatasetInfo, OfflineData
from offtune.buffers.replay import Batch, ReplayBuffer
from offtune.buffers.transforms import Normalizer, RewardTransform, reward_transform
from offtune.errors import OfftuneError, suggest
from offtune.finetune.envs import make_vector_env
from offtune.finetune.evaluate import (
    check_observation_size,
    evaluate,
    from_env_actions,
    to_env_actions,
)
from offtune.finetune.scores import RunDirectory, read_yaml_mapping
from offtune.policies import ALGORITHMS
from offtune.policies.checkpoint import load_checkpoint, save_checkpoint
from offtune.policies.config import apply_overrides, config_from_dict, config_to_dict
from offtune.policies.presets import preset


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


@dataclass
class RunResult:
    """What a finished run returns to Python callers."""

    run_dir: Path
    checkpoint: Path
    evaluations: list[dict[str, Any]]
    scores: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" picks CUDA when present. On the CPU, torch gets one thread unless OMP_NUM_THREADS says
    otherwise: a second thread speeds 256-wide updates up only while a core is idle for it, and OpenMP's
    spinning threads make every matmul several times slower once other work shares the cores (README,
    "Devices and threads")."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise OfftuneError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OfftuneError("--device cuda was asked for, but torch sees no CUDA device here")
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return device


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


def algorithm(name: str) -> tuple[type, type]:
    """(ConfigClass, AgentClass) of an algorithm name, or an error naming the closest ones."""
    key = name.lower()
    if key not in ALGORITHMS:
        choices = ", ".join(ALGORITHMS)
        raise OfftuneError(f"unknown algorithm '{name}'; choose from {choices}.{suggest(key, ALGORITHMS)}")
    return ALGORITHMS[key]


def build_config(
    algo: str,
    info: DatasetInfo,
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
) -> Any:
    """Defaults, then the family preset from the official code, then a YAML file, then ``--set``."""
    config_cls, _ = algorithm(algo)
    config = apply_overrides(config_cls(), preset(algo, info))
    if config_file is not None:
        config = apply_overrides(config, read_yaml_mapping(config_file, "config file"))
    return apply_overrides(config, overrides or {})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
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


@dataclass
class PreparedData:
    """The dataset as the agent sees it: normalised observations, actions in [-1, 1], transformed rewards."""

    transitions: Batch
    normalizer: Normalizer
    rewards: RewardTransform


def prepare_offline(data: OfflineData, config: Any, normalizer: Normalizer | None = None,
                    rewards: RewardTransform | None = None) -> PreparedData:
    """Apply the algorithm's data conventions (action clip, reward transform, normalisation)."""
    actions = from_env_actions(data.actions, data.info)
    if config.dataset_action_clip > 0:
        actions = np.clip(actions, -config.dataset_action_clip, config.dataset_action_clip)
    if rewards is None:
        rewards = reward_transform(config.reward_transform, data.episode_returns())
    if normalizer is None:
        normalizer = (Normalizer.fit(data.observations) if config.normalize_observations
                      else Normalizer.identity(data.info.obs_dim))
    transitions = Batch(
        normalizer(data.observations).astype(np.float32),
        actions.astype(np.float32),
        rewards(data.rewards).astype(np.float32),
        normalizer(data.next_observations).astype(np.float32),
        data.terminals.astype(np.float32),
    )
    return PreparedData(transitions, normalizer, rewards)


def default_run_dir(algo: str, dataset: str, seed: int, suffix: str = "") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = dataset.replace("/", "_")
    return Path("runs") / f"{algo}-{slug}-s{seed}{suffix}-{stamp}"


def new_run_dir(out: str | Path | None, default: Path) -> Path:
    """The run directory of a fresh run; one that already holds a run is never mixed into."""
    path = Path(out) if out is not None else default
    if (path / "config.json").exists():
        raise OfftuneError(f"{path} already holds a run; continue it with --resume {path} or choose another --out")
    return path


def default_eval_episodes(info: DatasetInfo) -> int:
    """The papers' protocol: 100 episodes on AntMaze, 10 elsewhere."""
    return 100 if info.family == "antmaze" else 10


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


def _payload(algo: str, config: Any, info: DatasetInfo, prepared: PreparedData, agent: Any,
             phase: str, step: int, evaluations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "algo": algo,
        "config": config_to_dict(config),
        "dataset": info.to_dict(),
        "normalizer": prepared.normalizer.to_dict(),
        "reward_transform": prepared.rewards.to_dict(),
        "agent": agent.state_dict(),
        "phase": phase,
        "step": step,
        "rng": rng_state(),
        "scores": list(evaluations),
        **extra,
    }


def _log_interval(steps: int) -> int:
    return max(1, min(1000, steps // 50))


def _same_dataset(name: str, info: dict[str, Any]) -> bool:
    """Whether ``name`` (a D4RL name, short name or Minari id) names the dataset a run recorded as ``info``."""
    entry = datasets.resolve(name)
    return entry.name == info["name"] and (not entry.exact or entry.minari_id == info["minari_id"])


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
    progress = progress or SilentProgress()
    resumed = None
    if resume is not None:
        resumed = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
        if resumed["phase"] != "offline":
            raise OfftuneError(f"{resume} holds a fine-tuning run; resume it with `offtune finetune --resume`")
        run_settings = resumed["run"]
        if algo is not None and algo.lower() != resumed["algo"]:
            raise OfftuneError(f"{resume} holds a run of {resumed['algo']}, not {algo}: leave ALGO out to resume it")
        if dataset is not None and not _same_dataset(dataset, resumed["dataset"]):
            raise OfftuneError(f"{resume} holds a run on {resumed['dataset']['minari_id']}, not {dataset}: "
                               "leave DATASET out to resume it")
        algo, dataset, seed = resumed["algo"], run_settings["dataset"], run_settings["seed"]
        label = run_settings.get("label")
        steps, eval_every = run_settings["steps"], run_settings["eval_every"]
        eval_episodes = run_settings["eval_episodes"]
        batch_size, task_mode, out = None, resumed["dataset"]["task_mode"], resume
        matmul_precision = matmul_precision or run_settings.get("matmul_precision")
    if algo is None or dataset is None:
        raise OfftuneError("give an algorithm and a dataset to pretrain, or --resume DIR")
    if steps < 1:
        raise OfftuneError("--steps must be positive")
    config_cls, agent_cls = algorithm(algo)
    algo = algo.lower()
    torch_device = resolve_device(device)
    matmul_precision = set_matmul_precision(matmul_precision)
    # A resumed run reloads the exact Minari id it trained on, whatever other versions are local by now.
    data = datasets.load(resumed["dataset"]["minari_id"] if resumed else dataset, task_mode=task_mode,
                         download=download)
    info = data.info
    if resumed is not None:
        config = config_from_dict(config_cls, resumed["config"])
    else:
        config = build_config(algo, info, {**(overrides or {}), **({"batch_size": batch_size} if batch_size else {})},
                              config_file)
    eval_every = eval_every or min(50_000, steps)
    eval_episodes = eval_episodes or default_eval_episodes(info)
    run_path = Path(out) if resumed is not None else new_run_dir(out, default_run_dir(algo, dataset, seed))
    run = RunDirectory(run_path, logger)
    run_settings = {"phase": "offline", "algo": algo, "dataset": dataset, "seed": seed, "steps": steps,
                    "eval_every": eval_every, "eval_episodes": eval_episodes, "device": str(torch_device),
                    "matmul_precision": matmul_precision, **({"label": label} if label else {})}
    run.write_config({"run": run_settings, "algo_config": config_to_dict(config), "dataset": info.to_dict()})

    seed_everything(seed)
    prepared = prepare_offline(data, config)
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions, device=torch_device, seed=seed)
    agent = agent_cls(info.obs_dim, info.action_dim, config, torch_device)
    evaluations: list[dict[str, Any]] = []
    start = 0
    if resumed is not None:
        agent.load_state_dict(resumed["agent"])
        set_rng_state(resumed["rng"])
        buffer.generator.set_state(resumed["buffer_generator"])
        start = resumed["step"]
        run.truncate_after("offline", start)
        evaluations = [e for e in run.scores["evaluations"] if e["phase"] == "offline"]
    stage_averager = MetricAverager()

    stop = GracefulStop()

    def report_stage(stage_step: int, metrics: dict[str, torch.Tensor]) -> None:
        stop.check()
        stage_averager.add(metrics)
        if stage_step % 100 == 0:
            count = stage_averager.count
            progress.advance(count, stage_averager.flush())

    def checkpoint(name: str, step: int, **extra: Any) -> Path:
        return save_checkpoint(
            run.checkpoints / name,
            _payload(algo, config, info, prepared, agent, "offline", step, evaluations, run=run_settings,
                     buffer_generator=buffer.generator.get_state(), **extra),
        )

    def run_evaluation(step: int) -> None:
        result = evaluate(agent, info, prepared.normalizer, eval_episodes, seed + 10_000, torch_device)
        entry = run.add_evaluation("offline", step, result.summary(), info.score_rule.describe())
        evaluations.append(entry)
        progress.evaluation("offline", step, entry)

    log_every = _log_interval(steps)
    averager = MetricAverager()
    completed = start
    try:
        with stop:
            stage_steps = getattr(config, "vae_steps", 0)
            if stage_steps and start == 0:
                progress.stage("VAE", stage_steps)
            agent.prepare(lambda count: buffer.sample(count), report_stage)
            agent.on_offline_start(steps)
            progress.stage(f"{algo.upper()} offline", steps, start)
            started = time.perf_counter()
            for step in range(start + 1, steps + 1):
                averager.add(agent.update(buffer.sample(config.batch_size)))
                if step % log_every == 0 or step == steps:
                    count = averager.count
                    metrics = averager.flush()
                    metrics["updates_per_s"] = (step - start) / max(time.perf_counter() - started, 1e-9)
                    run.log_metrics(step, "offline", metrics)
                    progress.advance(count, metrics)
                if step % eval_every == 0 or step == steps:
                    run_evaluation(step)
                    checkpoint("last.pt", step)
                    if step != steps:
                        checkpoint(f"step_{step}.pt", step)
                completed = step
                stop.check()
    except KeyboardInterrupt:
        path = checkpoint("last.pt", completed)
        run.close()
        raise Interrupted(path, completed) from None
    final = checkpoint("final.pt", steps)
    run.close()
    return RunResult(run.path, final, evaluations, run.scores)


def _regret(successes: list[bool]) -> float | None:
    return float(1.0 - np.mean(successes)) if successes else None


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
) -> RunResult:
    """Online phase: ``steps`` env steps in the live env, ``utd`` updates per env step, from a checkpoint.

    ``seed`` defaults to the seed the checkpoint was pretrained with.
    """
    progress = progress or SilentProgress()
    resumed = None
    if resume is not None:
        resumed = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
        if resumed["phase"] != "online":
            raise OfftuneError(f"{resume} holds a pretraining run; resume it with `offtune pretrain --resume`")
        source = resumed
        settings = resumed["run"]
        steps, utd, num_envs = settings["steps"], settings["utd"], settings["num_envs"]
        online_ratio, buffer_size, seed = settings["online_ratio"], settings["buffer_size"], settings["seed"]
        eval_every, eval_episodes = settings["eval_every"], settings["eval_episodes"]
        label, out, origin = settings.get("label"), resume, settings["checkpoint"]
        matmul_precision = matmul_precision or settings.get("matmul_precision")
    else:
        if checkpoint is None:
            raise OfftuneError("give a checkpoint to fine-tune, or --resume DIR")
        source = load_checkpoint(checkpoint)
        origin = str(source["path"])
        if seed is None:  # each pretrained seed is fine-tuned under its own seed unless told otherwise
            seed = source.get("run", {}).get("seed", 0)
    if utd < 1 or num_envs < 1 or steps < 1:
        raise OfftuneError("--steps, --utd and --num-envs must be positive")
    algo = source["algo"]
    config_cls, agent_cls = algorithm(algo)
    torch_device = resolve_device(device)
    matmul_precision = set_matmul_precision(matmul_precision)
    info = DatasetInfo.from_dict(source["dataset"])
    config = config_from_dict(config_cls, source["config"])
    if resumed is None:
        config = apply_overrides(config, overrides or {})
    dataset = source.get("run", {}).get("dataset", info.name)
    # The exact Minari id pretraining loaded: the name it was given (or DatasetInfo.name) can resolve to another
    # version once more versions are local.
    data = datasets.load(info.minari_id, task_mode=info.task_mode, download=download)
    if data.info.obs_dim != info.obs_dim or data.info.action_dim != info.action_dim:
        raise OfftuneError(
            f"the checkpoint expects observations of size {info.obs_dim} and actions of size {info.action_dim}, "
            f"but dataset {info.name} now gives {data.info.obs_dim} and {data.info.action_dim}"
        )
    prepared = prepare_offline(data, config, Normalizer.from_dict(source["normalizer"]),
                               RewardTransform(**source["reward_transform"]))
    eval_every = eval_every or min(50_000, steps)
    eval_episodes = eval_episodes or default_eval_episodes(info)
    buffer_size = buffer_size or steps
    run_path = Path(out) if resumed is not None else new_run_dir(out, default_run_dir(algo, dataset, seed, "-ft"))
    run = RunDirectory(run_path, logger)
    settings = {"phase": "online", "algo": algo, "dataset": dataset, "checkpoint": origin,
                "seed": seed, "steps": steps, "utd": utd, "num_envs": num_envs, "online_ratio": online_ratio,
                "buffer_size": buffer_size, "eval_every": eval_every, "eval_episodes": eval_episodes,
                "device": str(torch_device), "matmul_precision": matmul_precision,
                **({"label": label} if label else {})}
    run.write_config({"run": settings, "algo_config": config_to_dict(config), "dataset": info.to_dict()})

    seed_everything(seed)
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, prepared.transitions, online_capacity=buffer_size,
                          online_ratio=online_ratio, device=torch_device, seed=seed)
    agent = agent_cls(info.obs_dim, info.action_dim, config, torch_device)
    agent.load_state_dict(source["agent"])
    rule = info.score_rule.describe()
    successes: list[bool] = []
    if resumed is not None:
        set_rng_state(resumed["rng"])
        buffer.load_online_state(resumed["buffer"])
        successes = list(resumed["online_successes"])
        start = resumed["step"]
        run.truncate_after("online", start)
        offline_history = list(resumed["offline_scores"])
    else:
        agent.on_online_start()
        start = 0
        offline_history = [e for e in source.get("scores", []) if e.get("phase") == "offline"]
        run.scores["evaluations"] = list(offline_history)

    def online_evaluations() -> list[dict[str, Any]]:
        return [e for e in run.scores["evaluations"] if e["phase"] == "online"]

    def save(name: str, step: int, with_buffer: bool) -> Path:
        extra: dict[str, Any] = {"run": settings, "online_successes": list(successes),
                                 "offline_scores": offline_history}
        if with_buffer:
            extra["buffer"] = buffer.online_state()
        return save_checkpoint(
            run.checkpoints / name,
            _payload(algo, config, info, prepared, agent, "online", step,
                     offline_history + online_evaluations(), **extra),
        )

    def run_evaluation(step: int) -> dict[str, Any]:
        result = evaluate(agent, info, prepared.normalizer, eval_episodes, seed + 10_000, torch_device)
        entry = run.add_evaluation("online", step, result.summary(), rule)
        progress.evaluation("online", step, entry)
        return entry

    if resumed is None:
        run.set_scores(before=run_evaluation(0))

    envs = make_vector_env(info, num_envs)
    check_observation_size(envs, info)
    observations, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
    updates_per_step = utd * num_envs
    log_every = _log_interval(steps)
    averager = MetricAverager()
    progress.stage(f"{algo.upper()} online", steps, start)
    env_steps = start
    started = time.perf_counter()
    last_logged = start
    stop = GracefulStop()
    try:
        with stop:
            while env_steps < steps:
                obs = prepared.normalizer(observations).astype(np.float32)
                actions = agent.explore(torch.as_tensor(obs, device=torch_device)).cpu().numpy()
                stepped = envs.step(to_env_actions(actions, info))
                next_observations, rewards, terminated, truncated, infos = stepped
                finished = terminated | truncated
                real_next = next_observations.copy()
                for i in np.flatnonzero(finished):
                    real_next[i] = infos["final_obs"][i]
                buffer.add(obs, actions, prepared.rewards(rewards.astype(np.float32)),
                           prepared.normalizer(real_next), terminated.astype(np.float32))
                success = infos.get("final_info", {}).get("success")
                if success is not None:
                    successes += [bool(success[i]) for i in np.flatnonzero(finished)]
                observations = next_observations
                for _ in range(updates_per_step):
                    averager.add(agent.update(buffer.sample(config.batch_size)))
                previous, env_steps = env_steps, min(env_steps + num_envs, steps)
                agent.anneal(env_steps / steps)
                if env_steps // log_every != previous // log_every or env_steps == steps:
                    metrics = averager.flush()
                    metrics["env_steps_per_s"] = (env_steps - start) / max(time.perf_counter() - started, 1e-9)
                    if successes and info.family in ("antmaze", "pointmaze"):
                        metrics["regret"] = _regret(successes)
                    run.log_metrics(env_steps, "online", metrics)
                    progress.advance(env_steps - last_logged, metrics)
                    last_logged = env_steps
                if env_steps // eval_every != previous // eval_every or env_steps == steps:
                    run_evaluation(env_steps)
                    save("last.pt", env_steps, with_buffer=True)
                    if env_steps != steps:
                        save(f"step_{env_steps}.pt", env_steps, with_buffer=False)
                stop.check()
    except KeyboardInterrupt:
        path = save("last.pt", env_steps, with_buffer=True)
        envs.close()
        run.close()
        raise Interrupted(path, env_steps) from None
    envs.close()
    after = online_evaluations()[-1]
    extra_scores: dict[str, Any] = {"after": after}
    if info.family in ("antmaze", "pointmaze"):
        extra_scores["regret"] = _regret(successes)
    run.set_scores(**extra_scores)
    write_report(run.path, algo, info, run.scores)
    # final.pt last: a run with final.pt is finished, and reports count it with its "after" score.
    final = save("final.pt", steps, with_buffer=False)
    run.close()
    return RunResult(run.path, final, run.scores["evaluations"], run.scores)


def write_report(run_dir: Path, algo: str, info: DatasetInfo, scores: dict[str, Any]) -> Path:
    """``report.md``: the before -> after line of one fine-tuning run."""
    before, after = scores["before"], scores["after"]
    lines = [
        f"# {algo.upper()} on {info.name}: offline -> online",
        "",
        f"Score rule: {scores.get('rule', info.score_rule.describe())}",
        "",
        "| dataset | algorithm | before | after | online steps | regret |",
        "|---|---|---|---|---|---|",
        f"| {info.name} | {algo} | {before['score']:.1f} ± {before['std']:.1f} | "
        f"{after['score']:.1f} ± {after['std']:.1f} | {after['step']} | "
        + (f"{scores['regret']:.2f}" if scores.get("regret") is not None else "-") + " |",
        "",
        f"Evaluation: {after['episodes']} deterministic episodes per point.",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path

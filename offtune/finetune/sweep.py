"""Sweeps: every (algorithm, dataset, seed, grid point) pretrained, then fine-tuned, as one task each.

A sweep is a plan (:class:`SweepPlan`) expanded into runs (:class:`RunSpec`). Each run owns the folder
``OUT/<run name>/`` with two ordinary run directories, ``pretrain/`` and ``finetune/``, plus ``status.json``
(what the run is doing, for the live table) and, when it fails, ``error.txt``. Runs execute as Ray tasks when
Ray is installed, else one after another in this process. Everything a rerun needs is in those folders: a run
whose fine-tuning ``final.pt`` exists is done and skipped; one with a checkpoint to continue from resumes.

About 500 lines, kept together because the plan, its YAML form, the per-run state machine and the two
executors (Ray, in-process) change together whenever a run's folder layout does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from offtune.buffers.registry import resolve
from offtune.buffers.sources import open_dataset
from offtune.errors import OfftuneError, suggest
from offtune.finetune import trainer
from offtune.finetune.scores import read_json, read_yaml_mapping, write_json

PLAN_KEYS = ("algos", "datasets", "seeds", "pretrain_steps", "finetune_steps", "eval_every", "eval_episodes",
             "matmul_precision", "out", "set", "grid")
ALGO_SECTION_KEYS = ("set", "grid")
RAY_HINT = "pip install 'offtune[ray]'"


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep; ``grid`` holds this grid point's values in the order the grid was written."""

    algo: str
    dataset: str
    seed: int
    grid: tuple[tuple[str, Any], ...] = ()
    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Folder name: algorithm, dataset, grid values, seed (stable, so a rerun finds its runs)."""
        values = "".join(f"-{key}={_value_text(value)}" for key, value in self.grid)
        return _safe(f"{self.algo}-{self.dataset}{values}-s{self.seed}")

    @property
    def label(self) -> str:
        """The report's column: the algorithm, with the grid point's values when there is a grid."""
        values = ",".join(f"{key}={_value_text(value)}" for key, value in self.grid)
        return f"{self.algo}[{values}]" if values else self.algo

    @property
    def overrides(self) -> dict[str, Any]:
        return {**dict(self.settings), **dict(self.grid)}


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_value_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _safe(name: str) -> str:
    return "".join("_" if c in '/\\:*?"<>| ' else c for c in name)


@dataclass
class SweepPlan:
    """What to run. ``settings`` apply to every run, ``algo_settings[algo]`` to that algorithm's runs;
    ``grid`` (every algorithm) and ``algo_grids[algo]`` map a setting to the values to sweep over."""

    algos: list[str]
    datasets: list[str]
    seeds: list[int]
    out: Path
    pretrain_steps: int = 1_000_000
    finetune_steps: int = 1_000_000
    eval_every: int | None = None
    eval_episodes: int | None = None
    matmul_precision: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    algo_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    algo_grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out).resolve()  # tasks on other processes or nodes get an absolute folder

    def runs(self) -> list[RunSpec]:
        """Every (algorithm, dataset, grid point, seed), after checking names and setting keys."""
        self.validate()
        runs = []
        for algo in self.algos:
            grid = {**self.grid, **self.algo_grids.get(algo, {})}
            settings = tuple({**self.settings, **self.algo_settings.get(algo, {})}.items())
            points = [tuple(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
            for dataset, point, seed in itertools.product(self.datasets, points, self.seeds):
                runs.append(RunSpec(algo, dataset, seed, point, settings))
        names = [run.name for run in runs]
        if len(set(names)) != len(names):
            raise OfftuneError("two runs of the sweep would share a folder name; make the grid values distinct")
        return runs

    def validate(self) -> None:
        """Names and setting keys are checked up front; setting values are checked by each run, so one bad
        grid value fails only its own runs."""
        if not self.algos or not self.datasets or not self.seeds:
            raise OfftuneError("a sweep needs at least one algorithm, one dataset and one seed")
        if self.pretrain_steps < 1 or self.finetune_steps < 1:
            raise OfftuneError("--pretrain-steps and --finetune-steps must be positive")
        if self.matmul_precision is not None and self.matmul_precision not in trainer.MATMUL_PRECISIONS:
            raise OfftuneError(f"unknown matmul precision '{self.matmul_precision}'; choose from "
                               f"{', '.join(trainer.MATMUL_PRECISIONS)}."
                               f"{suggest(self.matmul_precision, trainer.MATMUL_PRECISIONS)}")
        for name in self.datasets:
            resolve(name)
        for section in (*self.algo_settings, *self.algo_grids):
            if section not in self.algos:
                raise OfftuneError(f"the sweep has settings for '{section}', which is not among its algorithms "
                                   f"({', '.join(self.algos)}).{suggest(section, self.algos)}")
        for algo in self.algos:
            config_cls, _ = trainer.algorithm(algo)
            known = [f.name for f in dataclasses.fields(config_cls)]
            grid = {**self.grid, **self.algo_grids.get(algo, {})}
            for key in (*self.settings, *self.algo_settings.get(algo, {}), *grid):
                if key not in known:
                    raise OfftuneError(f"unknown setting '{key}' for {algo}.{suggest(key, known)}")
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise OfftuneError(f"grid values of '{key}' must be a non-empty list, got {values!r}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OfftuneError(f"{where} must be a mapping of setting: value")
    return value


def _listed(value: Any) -> list[Any]:
    """A YAML list, or a comma-separated string as typed on the command line."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, list | tuple) else [value]


def _whole(key: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer():
        raise OfftuneError(f"{key} takes whole numbers, got {value!r}")
    return int(number)


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """``sweep.yaml`` as keyword arguments of :class:`SweepPlan` (see the README's Sweeps section).

    Top level: ``algos``, ``datasets``, ``seeds``, ``pretrain_steps``, ``finetune_steps``, ``eval_every``,
    ``eval_episodes``, ``matmul_precision``, ``out``, ``set`` (every run), ``grid`` (every algorithm); and one
    section per algorithm with its own ``set`` and ``grid``.
    """
    loaded = read_yaml_mapping(path, "sweep file")
    plan: dict[str, Any] = {"algo_settings": {}, "algo_grids": {}}
    for key, value in loaded.items():
        if key == "algos":
            plan[key] = [str(v).lower() for v in _listed(value)]
        elif key == "datasets":
            plan[key] = [str(v) for v in _listed(value)]
        elif key == "seeds":
            plan[key] = [_whole(key, v) for v in _listed(value)]
        elif key in ("pretrain_steps", "finetune_steps", "eval_every", "eval_episodes"):
            plan[key] = _whole(key, value)
        elif key == "matmul_precision":
            plan[key] = None if value is None else str(value).lower()
        elif key == "out":
            plan[key] = Path(value)
        elif key == "set":
            plan["settings"] = _mapping(value, "set")
        elif key == "grid":
            plan["grid"] = _mapping(value, "grid")
        elif key.lower() in trainer.ALGORITHMS:
            section = _mapping(value, key)
            unknown = [k for k in section if k not in ALGO_SECTION_KEYS]
            if unknown:
                raise OfftuneError(f"the {key} section of {path} takes only set and grid, not {', '.join(unknown)}")
            plan["algo_settings"][key.lower()] = _mapping(section.get("set"), f"{key}.set")
            plan["algo_grids"][key.lower()] = _mapping(section.get("grid"), f"{key}.grid")
        else:
            choices = [*PLAN_KEYS, *trainer.ALGORITHMS]
            raise OfftuneError(f"unknown key '{key}' in sweep file {path}.{suggest(key, choices)}")
    return plan


# --- one run -----------------------------------------------------------------------------------------------


def run_state(run_dir: Path) -> str:
    """``done`` (fine-tuned to the end), ``interrupted`` (a checkpoint to continue from) or ``queued``."""
    if (run_dir / "finetune" / "checkpoints" / "final.pt").exists():
        return "done"
    checkpoints = [run_dir / "pretrain" / "checkpoints" / name for name in ("final.pt", "last.pt")]
    checkpoints.append(run_dir / "finetune" / "checkpoints" / "last.pt")
    return "interrupted" if any(path.exists() for path in checkpoints) else "queued"


def set_status(run_dir: Path, state: str, **details: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "status.json", {"state": state, "time": time.time(), **details})


@dataclass
class RunOutcome:
    """How a run ended: ``done``, ``failed`` (``message`` is the error's last line) or ``interrupted``."""

    name: str
    state: str
    message: str = ""


def _fresh(phase_dir: Path) -> None:
    """A phase without a checkpoint starts over: logs of an attempt that never checkpointed are dropped."""
    if phase_dir.exists():
        shutil.rmtree(phase_dir)


def execute_run(run: RunSpec, plan: SweepPlan, torch_threads: int = 1) -> RunOutcome:
    """Pretrain, then fine-tune, continuing from whatever checkpoint an earlier attempt left.

    Any error is the run's own: it is written to ``error.txt`` and the sweep goes on with the others.
    """
    run_dir = plan.out / run.name
    pretrain_dir, finetune_dir = run_dir / "pretrain", run_dir / "finetune"
    node = socket.gethostname()
    # Ray sets OMP_NUM_THREADS to the task's CPUs; tiny networks run fastest on one thread (see trainer).
    torch.set_num_threads(torch_threads)
    # The precision is process-wide: a run must not hand its own to the next run of the same worker.
    process_precision = torch.get_float32_matmul_precision()
    common = {"seed": run.seed, "eval_every": plan.eval_every, "eval_episodes": plan.eval_episodes,
              "matmul_precision": plan.matmul_precision, "label": run.label}
    try:
        set_status(run_dir, "running", phase="pretrain", node=node)
        if not (pretrain_dir / "checkpoints" / "final.pt").exists():
            if (pretrain_dir / "checkpoints" / "last.pt").exists():
                trainer.pretrain(run.algo, run.dataset, resume=pretrain_dir)
            else:
                _fresh(pretrain_dir)
                # A sweep fine-tunes what it pretrains, so it pretrains as the official fine-tuning scripts do.
                trainer.pretrain(run.algo, run.dataset, steps=plan.pretrain_steps, out=pretrain_dir,
                                 overrides=run.overrides, protocol="finetune", **common)
        set_status(run_dir, "running", phase="finetune", node=node)
        if (finetune_dir / "checkpoints" / "last.pt").exists():
            trainer.finetune(resume=finetune_dir)
        else:
            _fresh(finetune_dir)
            trainer.finetune(pretrain_dir / "checkpoints" / "final.pt", steps=plan.finetune_steps,
                             out=finetune_dir, **common)
    except trainer.Interrupted as stopped:
        set_status(run_dir, "interrupted", node=node, step=stopped.step)
        return RunOutcome(run.name, "interrupted", str(stopped))
    except Exception as error:  # whatever breaks one run must not stop the sweep; the traceback is kept
        (run_dir / "error.txt").write_text(traceback.format_exc())
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        set_status(run_dir, "failed", node=node, message=message)
        return RunOutcome(run.name, "failed", message)
    finally:
        torch.set_float32_matmul_precision(process_precision)
    (run_dir / "error.txt").unlink(missing_ok=True)
    set_status(run_dir, "done", node=node)
    return RunOutcome(run.name, "done")


def record_lost_run(run: RunSpec, plan: SweepPlan, error: BaseException) -> RunOutcome:
    """A task that died without reporting (its worker or node was lost) fails with Ray's error."""
    run_dir = plan.out / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(f"{type(error).__name__}: {error}\n")
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    set_status(run_dir, "failed", message=message)
    return RunOutcome(run.name, "failed", message)


# --- what every run is doing ------------------------------------------------------------------------------


@dataclass
class RunStatus:
    name: str
    state: str
    phase: str = ""
    score: str = ""
    node: str = ""
    message: str = ""


def _last_score(run_dir: Path) -> str:
    for phase in ("finetune", "pretrain"):
        path = run_dir / phase / "scores.json"
        if not path.exists():
            continue
        try:
            scores = read_json(path)
        except ValueError:  # being replaced right now; the next poll reads it
            continue
        if "after" in scores:
            return f"{scores['before']['score']:.1f} → {scores['after']['score']:.1f}"
        evaluations = scores.get("evaluations") or []
        if evaluations:
            last = evaluations[-1]
            return f"{last['score']:.1f} ({last['phase']} {last['step']:,})"
    return ""


def run_statuses(out: Path, runs: list[RunSpec]) -> list[RunStatus]:
    """Every run's state and last score, read from its folder (the same on every node sharing ``out``)."""
    rows = []
    for run in runs:
        run_dir = out / run.name
        status_path = run_dir / "status.json"
        status = read_json(status_path) if status_path.exists() else {"state": run_state(run_dir)}
        rows.append(RunStatus(run.name, status["state"], status.get("phase", ""), _last_score(run_dir),
                              status.get("node", ""), status.get("message", "")))
    return rows


# --- datasets on every node -------------------------------------------------------------------------------


def missing_datasets(names: list[str], download: bool = False) -> dict[str, str]:
    """Datasets this machine cannot open (downloading them first when allowed), with how to get each."""
    problems = {}
    for name in names:
        try:
            open_dataset(resolve(name), download_missing=download)
        except OfftuneError as error:
            problems[name] = str(error)
    return problems


def _lacking_text(lacking: dict[str, dict[str, str]]) -> str:
    lines = ["datasets are missing; every machine that runs a sweep needs them locally:"]
    for node, problems in lacking.items():
        lines += [f"  {node} lacks {name}: {problem}" for name, problem in problems.items()]
    return "\n".join(lines)


# --- running a sweep --------------------------------------------------------------------------------------


class SweepInterrupted(Exception):
    """Ctrl-C: running runs wrote a checkpoint; the same sweep again resumes them."""


@dataclass
class SweepResult:
    out: Path
    runs: list[RunSpec]
    skipped: list[str]
    outcomes: dict[str, RunOutcome]

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes.values() if o.state == "failed"]


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def torch_threads() -> int:
    """One thread per run unless the user set OMP_NUM_THREADS (the trainer's own rule)."""
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def pending_runs(plan: SweepPlan, runs: list[RunSpec]) -> tuple[list[RunSpec], list[str]]:
    """(runs still to do, names of runs finished by an earlier sweep)."""
    done = [run.name for run in runs if run_state(plan.out / run.name) == "done"]
    return [run for run in runs if run.name not in done], done


def run_sweep(
    plan: SweepPlan,
    *,
    use_ray: bool | None = None,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: float = 0.0,
    download: bool = False,
) -> SweepResult:
    """Run every unfinished run of ``plan``: on Ray (``use_ray=None`` means when it is installed; ``address``
    picks an existing cluster, else a local one sized to the machine starts), or one at a time here."""
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise OfftuneError("--cpus-per-run must be positive and --gpus-per-run not negative")
    runs = plan.runs()
    todo, skipped = pending_runs(plan, runs)
    if use_ray is None:
        use_ray = ray_installed()
    if address is not None and not use_ray:
        raise OfftuneError(f"--address needs Ray: {RAY_HINT}")
    result = SweepResult(plan.out, runs, skipped, {})
    if not todo:
        return result
    for run in todo:
        set_status(plan.out / run.name, "queued")
    if use_ray:
        _run_on_ray(plan, todo, result, address, cpus_per_run, gpus_per_run, download)
    else:
        _run_here(plan, todo, result, download)
    return result


def _run_here(plan: SweepPlan, todo: list[RunSpec], result: SweepResult, download: bool) -> None:
    problems = missing_datasets(sorted({run.dataset for run in todo}), download)
    if problems:
        raise OfftuneError(_lacking_text({f"this machine ({socket.gethostname()})": problems}))
    for run in todo:
        try:
            outcome = execute_run(run, plan, torch_threads())
        except KeyboardInterrupt:
            outcome = RunOutcome(run.name, "interrupted")
            set_status(plan.out / run.name, "interrupted")
        result.outcomes[run.name] = outcome
        if outcome.state == "interrupted":
            raise SweepInterrupted(f"stopped during {run.name}")


def _connect(ray: Any, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when we started it (and so stop it)."""
    if ray.is_initialized():
        return False
    try:
        if address is None:
            # Workers inherit this process's environment (MINARI_DATASETS_PATH included); runs exchange only
            # small records, so a small object store keeps start-up quick.
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, object_store_memory=200 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except Exception as error:  # Ray raises ConnectionError, RuntimeError or ValueError for a bad address
        raise OfftuneError(f"could not {'start' if address is None else 'connect to'} Ray: {error}") from None
    return True


def _check_nodes(ray: Any, names: list[str], cpus: float, gpus: float, download: bool) -> None:
    """Ask every node that can take a run whether it can open every dataset; name what each one lacks."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= cpus
             and n["Resources"].get("GPU", 0) >= gpus]
    if not nodes:
        raise OfftuneError(f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for one run; lower "
                           f"--cpus-per-run/--gpus-per-run or add nodes")
    check = ray.remote(num_cpus=0)(missing_datasets)
    refs = {
        f"{n['NodeManagerHostname']} ({n['NodeManagerAddress']})": check.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(names, download)
        for n in nodes
    }
    lacking = {node: problems for node, problems in zip(refs, ray.get(list(refs.values())), strict=True)
               if problems}
    if lacking:
        raise OfftuneError(_lacking_text(lacking))


def _run_on_ray(plan: SweepPlan, todo: list[RunSpec], result: SweepResult, address: str | None,
                cpus: float, gpus: float, download: bool) -> None:
    import ray

    started = _connect(ray, address)
    try:
        _check_nodes(ray, sorted({run.dataset for run in todo}), cpus, gpus, download)
        # A worker lost with its node (or killed for memory) is retried: the run resumes from its checkpoint.
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=2)(execute_run)
        threads = torch_threads()
        pending = {task.remote(run, plan, threads): run for run in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    run = pending.pop(ref)
                    try:
                        result.outcomes[run.name] = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        result.outcomes[run.name] = record_lost_run(run, plan, error)
        except KeyboardInterrupt:
            _stop_runs(ray, pending, plan, result)
            raise SweepInterrupted(f"{len(pending)} runs stopped") from None
    finally:
        if started:
            ray.shutdown()


def _stop_runs(ray: Any, pending: dict[Any, RunSpec], plan: SweepPlan, result: SweepResult) -> None:
    """Ctrl-C reaches running tasks as KeyboardInterrupt: the trainer checkpoints and returns; wait for it."""
    for ref in pending:
        ray.cancel(ref)
    for ref, run in pending.items():
        try:
            result.outcomes[run.name] = ray.get(ref, timeout=120)
        except (ray.exceptions.RayError, TimeoutError):
            set_status(plan.out / run.name, run_state(plan.out / run.name))
            result.outcomes[run.name] = RunOutcome(run.name, "interrupted")

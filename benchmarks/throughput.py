"""Throughput, measured side by side in one run: offtune's updates against plain reference code, the live env,
and the fine-tuning loop.

    python benchmarks/throughput.py [--seconds 6] [--rounds 6] [--device cpu] [--threads N] [--compile]
                                    [--matmul-precision highest|high|medium] [--json]

What it measures (batch 256, 256x256 networks, each algorithm's official AntMaze settings, on the observation
and action sizes of ``antmaze-umaze-v2``: 29 and 8):

- updates/s of offtune's IQL, SPOT and MISA (MISA with its HMC term, as offline, and without it, as online by
  default) and of ``benchmarks/reference.py``'s IQL and SPOT (plain public-code style), on synthetic
  transitions, with the matmul FLOPs of one update (``torch.utils.flop_counter``). The contenders take turns
  in rounds and each keeps its best round, so a machine shared with other work slows all of them alike and
  the ratios stay meaningful;
- steps/s of ``offtune.finetune.trainer.finetune``'s loop (explore, env step, append, one IQL update per step)
  on a small AntMaze-umaze dataset written with Minari into a temporary folder, paused every
  ``loop_steps / rounds`` steps to measure its parts alone: env steps/s of the live AntMaze env it steps
  (``offtune.finetune.envs.make_vector_env``, one env, random actions) and IQL updates/s. So the loop is
  compared with its parts measured apart in the same stretch of time.

``--seconds`` is the time each measurement gets in total, split over the rounds. ``--compile`` also measures
each algorithm's compiled update (``agent.compile()``: the whole update as one ``torch.compile``'d graph, MISA's
HMC steps as another, what ``--compile on`` trains with; compile time left out and reported) and runs the
fine-tuning loop with it.
``--matmul-precision`` sets the internal precision of float32 matmuls for every contender alike, the reference
included (``medium``: bfloat16 on AMX/AVX512-BF16 CPUs and on CUDA). No timing is asserted anywhere; the second
table says which targets this run met, beside the ratio of matmul FLOPs that bounds a compute-bound device.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from offtune.buffers import collect, datasets
from offtune.buffers.replay import Batch, ReplayBuffer
from offtune.finetune import trainer
from offtune.finetune.envs import make_vector_env
from offtune.finetune.runtime import limit_cpu_threads
from offtune.policies.config import apply_overrides

try:
    from benchmarks.reference import NumpyReplayBuffer, ReferenceIQL, ReferenceSPOT
except ModuleNotFoundError:  # run as a script: benchmarks/ is the script's own folder
    from reference import NumpyReplayBuffer, ReferenceIQL, ReferenceSPOT

DATASET = "antmaze-umaze-v2"
MINARI_ID = "D4RL/antmaze/umaze-v1"
TARGET_SPEEDUP = 2.0
TARGET_MISA_COST = 8.0
TARGET_LOOP_SHARE = 0.8


@dataclass
class Rate:
    """Best and median of the per-round rates of one contender."""

    name: str
    unit: str
    best: float
    median: float
    rounds: list[float] = field(default_factory=list)
    note: str = ""
    gflop: float | None = None
    """Matmul GFLOP per update (forward and backward), counted by ``torch.utils.flop_counter``."""

    @property
    def gflops(self) -> float | None:
        """Achieved matmul GFLOP/s in the best round."""
        return None if self.gflop is None else self.gflop * self.best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_rates(
    contenders: dict[str, Callable[[], Any]], seconds: float, rounds: int, device: torch.device, unit: str
) -> dict[str, Rate]:
    """Run each contender for ``seconds / rounds`` per round, taking turns, ``rounds`` times."""
    per_round = seconds / rounds
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            synchronize(device)
            count, started = 0, time.perf_counter()
            while True:
                step()
                count += 1
                if count % 4 == 0:
                    synchronize(device)
                    elapsed = time.perf_counter() - started
                    if elapsed >= per_round:
                        break
            samples[name].append(count / elapsed)
    return {
        name: Rate(name, unit, max(values), statistics.median(values), [round(v, 2) for v in values])
        for name, values in samples.items()
    }


class MatmulFlops(TorchDispatchMode):
    """Sums the FLOPs of every op torch's flop counter has a formula for (matrix multiplies).

    ``FlopCounterMode`` would do the same, but its module tracker hooks the backward of module inputs, which
    ``torch.autograd.grad`` on parameters that a module reads directly (MISA's) refuses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def matmul_gflop(step: Callable[[], Any], calls: int = 2) -> float:
    """Matmul GFLOP per call of ``step``, averaged over ``calls`` (2 covers SPOT's actor-every-2 cycle)."""
    with MatmulFlops() as counter:
        for _ in range(calls):
            step()
    return counter.flops / calls / 1e9


def synthetic_transitions(rows: int, obs_dim: int, action_dim: int, seed: int = 0) -> Batch:
    """Random transitions of the dataset's shapes: the update's cost does not depend on the values."""
    rng = np.random.default_rng(seed)
    return Batch(
        rng.normal(size=(rows, obs_dim)).astype(np.float32),
        rng.uniform(-1.0, 1.0, size=(rows, action_dim)).astype(np.float32),
        (rng.uniform(size=rows) < 0.01).astype(np.float32) - 1.0,
        rng.normal(size=(rows, obs_dim)).astype(np.float32),
        (rng.uniform(size=rows) < 0.01).astype(np.float32),
    )


def offtune_agent(algo: str, info: datasets.DatasetInfo, device: torch.device, **overrides: Any) -> tuple[Any, Any]:
    """An agent with the dataset's preset, ready for actor-critic updates (SPOT's VAE frozen untrained)."""
    config = trainer.build_config(algo, info)
    if algo == "spot":
        overrides = {"vae_steps": 0, **overrides}
    config = apply_overrides(config, overrides)
    _, agent_cls = trainer.algorithm(algo)
    agent = agent_cls(info.obs_dim, info.action_dim, config, device)
    agent.prepare(lambda size: None, lambda step, metrics: None)
    agent.on_offline_start(1_000_000)
    return agent, config


def write_dataset(root: Path) -> datasets.DatasetInfo:
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collect.write_antmaze_like(MINARI_ID, "umaze", episodes=10, steps=200, seed=0, force=True)
        return datasets.load(DATASET).info


def update_rates(
    info: datasets.DatasetInfo, device: torch.device, seconds: float, rounds: int, rows: int, compile_: bool
) -> tuple[dict[str, Rate], dict[str, str]]:
    """Updates/s of every contender, and why a compiled variant could not be measured (if so)."""
    transitions = synthetic_transitions(rows, info.obs_dim, info.action_dim)
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, transitions, device=device)
    host_buffer = NumpyReplayBuffer(*transitions, device=device)

    iql, iql_config = offtune_agent("iql", info, device)
    spot, spot_config = offtune_agent("spot", info, device)
    misa, misa_config = offtune_agent("misa", info, device)
    misa_online, _ = offtune_agent("misa", info, device)
    misa_online.on_online_start()
    plain_iql = ReferenceIQL(
        info.obs_dim, info.action_dim, device, expectile=iql_config.expectile, beta=iql_config.beta,
        discount=iql_config.discount, max_steps=1_000_000,
    )
    plain_spot = ReferenceSPOT(
        info.obs_dim, info.action_dim, device, actor_lr=spot_config.actor_lr, critic_lr=spot_config.critic_lr,
        discount=spot_config.discount, lambd=spot_config.lam, actor_dropout=spot_config.actor_dropout,
    )
    batch_size = iql_config.batch_size
    contenders: dict[str, Callable[[], Any]] = {
        "offtune IQL": lambda: iql.update(buffer.sample(batch_size)),
        "reference IQL": lambda: plain_iql.train(host_buffer.sample(batch_size)),
        "offtune SPOT": lambda: spot.update(buffer.sample(batch_size)),
        "reference SPOT": lambda: plain_spot.train(host_buffer.sample(batch_size)),
        "offtune MISA": lambda: misa.update(buffer.sample(misa_config.batch_size)),
        "offtune MISA (online, no HMC)": lambda: misa_online.update(buffer.sample(misa_config.batch_size)),
    }
    notes: dict[str, str] = {}
    if compile_:
        misa_online_compiled = offtune_agent("misa", info, device)[0]
        misa_online_compiled.on_online_start()
        compiled = {
            "offtune IQL + compile": (offtune_agent("iql", info, device)[0], batch_size),
            "offtune SPOT + compile": (offtune_agent("spot", info, device)[0], batch_size),
            "offtune MISA + compile": (offtune_agent("misa", info, device)[0], misa_config.batch_size),
            "offtune MISA (online, no HMC) + compile": (misa_online_compiled, misa_config.batch_size),
        }
        for name, (agent, size) in compiled.items():
            try:
                compiled_update = agent.compile()
                for _ in range(3):
                    agent.update(buffer.sample(size))
                synchronize(device)
                notes[name] = f"compiled in {compiled_update.compile_seconds:.0f} s"
                contenders[name] = (lambda a, n: lambda: a.update(buffer.sample(n)))(agent, size)
            except Exception as error:  # noqa: BLE001 - report why compile is not viable, do not fake a number
                notes[name] = f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
    flops = {name: matmul_gflop(step) for name, step in contenders.items() if "compile" not in name}
    for step in contenders.values():
        for _ in range(3):
            step()
    rates = interleaved_rates(contenders, seconds, rounds, device, "updates/s")
    for name, rate in rates.items():
        rate.gflop = flops.get(name.removesuffix(" + compile"))
        rate.note = notes.get(name, "")
    failures = {name: note for name, note in notes.items() if name not in rates}
    return rates, failures


class LoopRounds:
    """A ``trainer.Progress`` that times the online loop between its log points and, every ``steps_per_round``
    steps, pauses it to measure its parts alone (``pause``); the pauses are left out of the loop's time."""

    def __init__(self, steps_per_round: int, pause: Callable[[], None]) -> None:
        self.steps_per_round, self.pause = steps_per_round, pause
        self.rates: list[float] = []
        self.steps, self.seconds = 0, 0.0
        self.mark = 0.0

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        self.mark = time.perf_counter()

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        self.steps += count
        self.seconds += time.perf_counter() - self.mark
        if self.steps >= self.steps_per_round:
            self.rates.append(self.steps / self.seconds)
            self.steps, self.seconds = 0, 0.0
            self.pause()
        self.mark = time.perf_counter()

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None:
        pass

    def warning(self, message: str) -> None:
        pass


def loop_rounds(
    root: Path, info: datasets.DatasetInfo, device: torch.device, seconds: float, rounds: int, rows: int,
    loop_steps: int, matmul_precision: str, compile_: bool,
) -> dict[str, Rate]:
    """The fine-tuning loop against its parts measured apart, taking turns.

    ``trainer.finetune`` runs ``loop_steps`` online steps (explore, env step, append, one IQL update per step)
    from a 2-update IQL checkpoint; it logs every ``loop_steps // 50`` steps, as a real run logs every
    1,000. Every ``loop_steps / rounds`` steps the loop is paused while the live env is stepped alone (random
    actions, same-step autoreset: what the loop steps) and IQL updates run alone, ``seconds / rounds`` each.
    With ``compile_`` the loop and the update measured alone are both the compiled one.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrained = trainer.pretrain("iql", DATASET, steps=2, eval_episodes=1, device=str(device),
                                      matmul_precision=matmul_precision, out=root / "pretrain")
    agent, config = offtune_agent("iql", info, device)
    if compile_:
        agent.compile()
    buffer = ReplayBuffer(info.obs_dim, info.action_dim, synthetic_transitions(rows, info.obs_dim, info.action_dim),
                          device=device)
    envs = make_vector_env(info, 1)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    actions = [envs.action_space.sample() for _ in range(1000)]
    counter = iter(range(10**12))
    parts = {
        "env": lambda: envs.step(actions[next(counter) % len(actions)]),
        "update": lambda: agent.update(buffer.sample(config.batch_size)),
    }
    samples: dict[str, list[float]] = {"env": [], "update": []}

    def measure_parts() -> None:
        for name, step in parts.items():
            samples[name].extend(interleaved_rates({name: step}, seconds / rounds, 1, device, "")[name].rounds)

    clock = LoopRounds(max(1, loop_steps // rounds), measure_parts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.finetune(pretrained.checkpoint, steps=loop_steps, eval_episodes=1, device=str(device),
                         matmul_precision=matmul_precision, out=root / "finetune", progress=clock,
                         compile_mode="on" if compile_ else "off")
    envs.close()
    samples["loop"] = clock.rates
    compiled = " (compiled)" if compile_ else ""
    names = {"env": ("env step (AntMaze_UMaze-v4, live task wrapper)", "steps/s", "random actions, 1 env"),
             "update": (f"offtune IQL{compiled}, in turns with the loop", "updates/s", ""),
             "loop": (f"fine-tuning loop (IQL{compiled}, UTD 1)", "steps/s", f"trainer.finetune, {loop_steps} steps")}
    return {
        key: Rate(label, unit, max(samples[key]), statistics.median(samples[key]),
                  [round(v, 2) for v in samples[key]], note)
        for key, (label, unit, note) in names.items()
    }


def environment(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def summarize(rates: dict[str, Rate]) -> list[dict[str, Any]]:
    """The targets, as ratios of the best rounds of this run, each beside its matmul-FLOP ratio.

    The FLOP ratio is what the speed ratio would be if both sides spent all their time in matmuls at the
    same GFLOP/s: where the device is compute-bound (a CPU at batch 256), no overhead removal gets past it.
    """
    checks = []

    def check(name: str, value: float, target: float, higher: bool, meaning: str, flop_ratio: float | None) -> None:
        met = value >= target if higher else value <= target
        checks.append({"check": name, "value": round(value, 3), "target": ("≥ " if higher else "≤ ") + f"{target:g}",
                       "met": met, "flop_ratio": None if flop_ratio is None else round(flop_ratio, 3),
                       "meaning": meaning})

    def flop_ratio(numerator: str, denominator: str) -> float | None:
        top, bottom = rates[numerator].gflop, rates[denominator].gflop
        return None if not top or not bottom else top / bottom

    for algo in ("IQL", "SPOT"):
        reference = f"reference {algo}"
        for variant in (f"offtune {algo}", f"offtune {algo} + compile"):
            if variant in rates:
                check(f"{variant.removeprefix('offtune ')} speed-up", rates[variant].best / rates[reference].best,
                      TARGET_SPEEDUP, True, f"{variant} updates/s ÷ {reference} updates/s",
                      flop_ratio(reference, variant))
    for variant, what in (("offtune MISA", "with HMC"), ("offtune MISA (online, no HMC)", "online, no HMC")):
        check(f"MISA cost ({what})", rates["offtune IQL"].best / rates[variant].best, TARGET_MISA_COST, False,
              f"time per MISA update ({what}) ÷ time per offtune IQL update", flop_ratio(variant, "offtune IQL"))
        if f"{variant} + compile" in rates:
            check(f"MISA compile speed-up ({what})", rates[f"{variant} + compile"].best / rates[variant].best, 1.0,
                  True, f"compiled ÷ eager MISA updates/s ({what}); --compile auto is right where this is ≥ 1", None)
    separate = 1.0 / (1.0 / rates["env"].best + 1.0 / rates["update"].best)
    check("loop share", rates["loop"].best / separate, TARGET_LOOP_SHARE, True,
          f"loop steps/s ÷ (env step + IQL update measured apart, same rounds = {separate:.1f} steps/s)", None)
    return checks


def print_table(rates: dict[str, Rate], checks: list[dict[str, Any]], env: dict[str, Any], failures: dict[str, str],
                console: Console) -> None:
    table = Table(title="offtune throughput (best and median of interleaved rounds)", title_justify="left")
    for column, justify in (("measurement", "left"), ("best", "right"), ("median", "right"), ("unit", "left"),
                            ("GFLOP/update", "right"), ("GFLOP/s", "right"), ("note", "left")):
        table.add_column(column, justify=justify)
    for rate in rates.values():
        table.add_row(
            rate.name, f"{rate.best:,.1f}", f"{rate.median:,.1f}", rate.unit,
            "" if rate.gflop is None else f"{rate.gflop:.3g}", "" if rate.gflops is None else f"{rate.gflops:.0f}",
            rate.note,
        )
    console.print(table)
    for name, reason in failures.items():
        console.print(f"[yellow]{name}: {reason}[/]")
    targets = Table(title="targets (ratios of best rounds, this run)", title_justify="left")
    for column in ("check", "value", "target", "met", "matmul FLOP ratio", "meaning"):
        targets.add_column(column, justify="right" if column in ("value", "matmul FLOP ratio") else "left")
    for row in checks:
        targets.add_row(row["check"], f"{row['value']:.2f}", row["target"],
                        "[green]yes[/]" if row["met"] else "[red]no[/]",
                        "" if row["flop_ratio"] is None else f"{row['flop_ratio']:.2f}", row["meaning"])
    console.print(targets)
    console.print(
        f"{env['date']}  device {env['device']} ({env['cpu']}, {env['cores']} cores)  torch {env['torch']} "
        f"with {env['torch_threads']} threads, matmul precision {env['matmul_precision']}  python {env['python']}  "
        f"load average {env['load_average']} at the "
        f"start, {env['load_average_end']} at the end"
    )


@click.command()
@click.option("--seconds", default=6.0, show_default=True, help="Time per measurement (split over the rounds).")
@click.option("--rounds", default=6, show_default=True, help="Interleaved rounds of the update contenders.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--threads", type=int, default=None,
              help="torch intra-op threads (default: the trainer's, 1 on CPU unless OMP_NUM_THREADS is set).")
@click.option("--rows", default=1_000_000, show_default=True, help="Synthetic transitions in the replay buffers.")
@click.option("--loop-steps", default=1000, show_default=True,
              help="Online steps of the measured fine-tuning run (it logs every loop-steps // 50).")
@click.option("--compile", "compile_", is_flag=True,
              help="Also measure IQL's and SPOT's compiled update, and run the loop with it.")
@click.option("--matmul-precision", type=click.Choice(trainer.MATMUL_PRECISIONS), default="highest",
              show_default=True, help="Internal precision of float32 matmuls, for every contender.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
def main(seconds: float, rounds: int, device: str, threads: int | None, rows: int, loop_steps: int,
         compile_: bool, matmul_precision: str, as_json: bool) -> None:
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the trainer's rule: it keeps the user's thread count
    torch_device = trainer.resolve_device(device)
    limit_cpu_threads(torch_device)
    if threads is not None:
        torch.set_num_threads(threads)
    trainer.set_matmul_precision(matmul_precision)
    torch.manual_seed(0)
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 170)
    env = environment(torch_device)
    with tempfile.TemporaryDirectory(prefix="offtune-throughput-") as tmp:
        root = Path(tmp)
        with console.status("writing a small AntMaze-umaze dataset"):
            info = write_dataset(root / "minari")
        with console.status("updates/s (interleaved rounds)"):
            rates, failures = update_rates(info, torch_device, seconds, rounds, rows, compile_)
        with console.status("env steps/s, updates/s and the fine-tuning loop, in turns"):
            rates.update(
                loop_rounds(root / "runs", info, torch_device, seconds, rounds, rows, loop_steps, matmul_precision,
                            compile_)
            )
    env["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    checks = summarize(rates)
    if as_json:
        document = {"environment": env, "rates": [asdict(r) for r in rates.values()], "targets": checks,
                    "compile_failures": failures}
        print(json.dumps(document, indent=2))
    else:
        print_table(rates, checks, env, failures, console)


if __name__ == "__main__":
    main()

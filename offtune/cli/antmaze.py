"""AntMaze under ``offtune dataset``: ``train-controller``, ``controller-report`` and the AntMaze branch of
``collect``. Kept apart from :mod:`offtune.cli.dataset` so that file only routes AntMaze names here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from offtune.buffers import ant_training, antmaze_collect
from offtune.buffers.ant_controller import Gait
from offtune.buffers.storage import datasets_root
from offtune.errors import OfftuneError

console = Console()


def goal_counts(summary: dict[str, Any]) -> dict[str, Any]:
    """What ``dataset info`` adds for AntMaze: episodes reaching D4RL's goal and their own, waypoints reached."""
    if summary["family"] != "antmaze":
        return {}
    return antmaze_collect.goal_counts(summary["minari_id"])


def handles(name: str | None, kind: str | None, generator: str | None, gait_file: str | None) -> bool:
    """Whether ``dataset collect`` goes here: an AntMaze name, or an AntMaze-only option."""
    is_antmaze = name is not None and antmaze_collect.is_antmaze_name(name)
    return is_antmaze or any(option is not None for option in (kind, generator, gait_file))


def collect(
    name: str | None,
    kind: str | None,
    generator: str | None,
    gait_file: str | None,
    steps: int,
    seed: int,
    noise: float | None,
    dataset_id: str | None,
    force: bool,
    other_source: bool,
    progress: Callable[[int, str], Any],
) -> None:
    """``offtune dataset collect antmaze-umaze|medium|large [--kind play|diverse] [--generator minari|d4rl]``:
    the published recipe with offtune's ant. ``other_source`` is set when --env, --policy or --random came
    too; ``progress(total, label)`` is the collect command's progress bar."""
    if name is None or not antmaze_collect.is_antmaze_name(name):
        raise OfftuneError(
            "--kind, --generator and --gait are for AntMaze: `offtune dataset collect antmaze-umaze --kind diverse`"
        )
    if other_source:
        raise OfftuneError(f"{name} is collected with offtune's maze expert; --env, --policy and --random do not apply")
    recipe = antmaze_collect.recipe_for(name, kind, generator)
    gait = None if gait_file is None else Gait.load(gait_file)
    target = dataset_id or recipe.minari_id
    with progress(steps, target) as advance:
        written = antmaze_collect.collect_antmaze(
            recipe,
            steps,
            seed=seed,
            noise=antmaze_collect.NOISE if noise is None else noise,
            dataset_id=target,
            force=force,
            progress=advance,
            gait=gait,
        )
    counts = antmaze_collect.goal_counts(written.id)
    console.print(
        f"[green]wrote[/] {written.id} (like {recipe.made_like}): {written.total_episodes} episodes, "
        f"{written.total_steps} steps in {datasets_root() / written.id}"
    )
    for key, value in counts.items():
        console.print(f"  {key.replace('_', ' ')}: {value}")


@click.command("train-controller")
@click.argument("robot", type=click.Choice(["ant"]))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for checkpoint, log and gait.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--budget",
    type=click.IntRange(min=1),
    default=4_000_000,
    show_default=True,
    help="Env steps of the search, validation included (about 4 minutes of one free core per million); "
    "the phase-lead pick at the end adds up to 80,000.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out (up to --budget steps in all).")
def train_controller(robot: str, out: str, seed: int, budget: int, resume: bool) -> None:
    """Tune the goal-reaching ant's gait (CPG + PD joints) with CMA-ES, from scratch and reproducibly.

    The search walks the gait on a clock; at the end the phase lead for reading the phase from the legs is
    picked by reach rate (about a minute). One log line per generation (also in OUT/progress.jsonl);
    OUT/checkpoint.json is rewritten after each, so Ctrl-C loses at most one generation and --resume continues
    exactly. OUT/gait.json, written at the end, is the gait to use: `offtune dataset collect antmaze-umaze
    --gait OUT/gait.json`, or copy it over offtune/buffers/data/goal_reaching_ant.json to ship it.
    """
    path = ant_training.train_controller(out, seed=seed, budget=budget, resume=resume, log=click.echo)
    console.print(f"[green]gait[/] {path}; measure it with `offtune dataset controller-report --gait {path}`")


@click.command("controller-report")
@click.option("--gait", "gait_file", type=click.Path(dir_okay=False), help="A gait file (default: the shipped one).")
@click.option("--trials", type=click.IntRange(min=1), default=100, show_default=True, help="Goals per measure.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the rates as JSON.")
def controller_report(gait_file: str | None, trials: int, seed: int, as_json: bool) -> None:
    """How well the ant reaches goals in the real AntMaze-v4 env: 2-4 m away within 200 steps, and 8 m down a
    straight corridor within 400, without action noise and with the collector's (0.2)."""
    gait = Gait.load(gait_file)
    rows = {}
    for noise in (0.0, antmaze_collect.NOISE):
        rows[("goal 2-4 m away", noise)] = ant_training.reach_report(gait, trials, seed, noise=noise)
        rows[("8 m corridor", noise)] = ant_training.corridor_report(gait, trials, seed, noise=noise)
    if as_json:
        records = [{"measure": m, "noise": n, **vars(r), "rate": r.rate} for (m, n), r in rows.items()]
        click.echo(json.dumps(records, indent=2))
        return
    table = Table(title=f"goal-reaching ant: {gait_file or 'shipped gait'}", box=box.SIMPLE_HEAD)
    for column in ("measure", "action noise", "reached", "within", "median steps"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for (measure, noise), report in rows.items():
        median = "-" if report.median_steps is None else f"{report.median_steps:.0f}"
        reached = f"{report.reached}/{report.trials} ({100 * report.rate:.0f}%)"
        table.add_row(measure, f"{noise:g}", reached, f"{report.limit} steps", median)
    console.print(table)

"""``offtune dataset``: list, inspect, download and collect offline datasets."""

from __future__ import annotations

import json
import math

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from offtune.buffers import antmaze_collect, datasets, registry, sources, storage
from offtune.buffers import collect as collectors
from offtune.cli import antmaze
from offtune.errors import OfftuneError
from offtune.finetune.runtime import SEED_RANGE

console = Console()


def _rule_label(rule: registry.ScoreRule | None) -> str:
    """A few words for the list; ``offtune dataset info`` prints the full rule."""
    if rule is None:
        return "Minari refs/raw"
    if rule.kind == "normalized":
        return "tasks / 4" if "kitchen" in rule.source else "D4RL refs"
    return {"success": "success %", "raw": "raw"}[rule.kind]


class _FiniteNonNegative(click.ParamType):
    """A float that is finite and 0 or more: ``click.FloatRange(min=0)`` lets NaN and inf through, and a NaN
    noise makes every collected action NaN."""

    name = "float"

    def convert(self, value, param, ctx) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(number) and number >= 0):
            self.fail(f"{value} is not a finite number >= 0", param, ctx)
        return number


@click.group()
def dataset() -> None:
    """Find, inspect, download and collect offline datasets (D4RL names or Minari ids)."""


@dataset.command("list")
@click.option("--local", "only_local", is_flag=True, help="Only datasets present in MINARI_DATASETS_PATH.")
def list_datasets(only_local: bool) -> None:
    """The registry: D4RL names, their Minari ids, task modes, score rules, and which are local."""
    available = storage.local_ids()
    table = Table(title=f"datasets (local folder: {storage.datasets_root()})", box=box.SIMPLE_HEAD)
    for column in ("name", "minari id", "task", "score", "local"):
        # Names, task and size stay whole on an 80-column terminal; the id and the score rule fold.
        table.add_column(column, no_wrap=column in ("name", "task", "local"), overflow="fold")
    listed: set[str] = set()
    for entry in registry.REGISTRY.values():
        found = storage.local_version(entry.minari_id, available) if entry.minari_id else None
        if only_local and found is None:
            continue
        listed.add(found or "")
        if entry.minari_id is None:
            minari_id, local = "[dim]none on Minari[/]", "[dim]n/a[/]"
        else:
            minari_id = entry.minari_id
            local = f"[green]{storage.human_size(storage.local_size(found))}[/]" if found else ""
            if found and found != entry.minari_id:
                local = f"[green]{found.rsplit('-', 1)[-1]}, {storage.human_size(storage.local_size(found))}[/]"
            if entry.parts and not found:
                local = "[dim]med+exp[/]"
        table.add_row(entry.name, minari_id, entry.task_mode or "", _rule_label(entry.score_rule), local)
    for other in available:
        if other not in listed:
            table.add_row("", other, "", "", f"[green]{storage.human_size(storage.local_size(other))}[/]")
    console.print(table)


@dataset.command()
@click.argument("name")
@click.option("--task-mode", type=click.Choice(["d4rl", "goal"]), default=None, help="Mazes only.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(name: str, task_mode: str | None, as_json: bool) -> None:
    """Ids, spaces, episodes, steps, returns, score rule and task mode of a local dataset."""
    summary = datasets.describe(datasets.load(name, task_mode=task_mode))
    summary.update(antmaze.goal_counts(summary))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    table = Table(show_header=False, title=summary["name"])
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if key == "returns":
            value = ", ".join(f"{k} {v:.3f}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(key.replace("_", " "), str(value))
    console.print(table)


@dataset.command()
@click.argument("name")
def download(name: str) -> None:
    """Download a dataset from the Minari remote (needs `pip install offtune[hf]` and internet)."""
    minari_id = sources.download(name)
    console.print(f"[green]downloaded[/] {minari_id} to {storage.datasets_root() / minari_id}")


@dataset.command()
@click.argument("name", required=False)
@click.option("--env", "env_id", help="Gymnasium env id to collect in (with --policy or --random).")
@click.option("--policy", type=click.Path(dir_okay=False), help="Stable-Baselines3 SAC/TD3/PPO model zip.")
@click.option("--random", "random_actions", is_flag=True, help="Uniform random actions.")
@click.option("--steps", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--seed", type=click.IntRange(*SEED_RANGE), default=0, show_default=True)
@click.option(
    "--noise",
    type=_FiniteNonNegative(),
    default=None,
    help="Gaussian action noise sigma [default: 0.5 for PointMaze, 0.2 for AntMaze as D4RL and Minari, "
         "0.1 x half the action range for policies].",
)
@click.option("--id", "dataset_id", help="Minari id to write (default: offtune/<env>/<kind>-v0).")
@click.option("--force", is_flag=True, help="Overwrite an existing dataset with the same id.")
@click.option("--kind", type=click.Choice(antmaze_collect.KINDS), help="AntMaze: the published dataset kind.")
@click.option("--gait", type=click.Path(dir_okay=False), help="AntMaze: a train-controller gait (default: shipped).")
@click.option(
    "--generator",
    type=click.Choice(antmaze_collect.GENERATORS),
    help="AntMaze: copy Minari's port (default) or D4RL's original generator (hand-picked goals, an ant that "
    "circles its goal: the data the papers trained on).",
)
def collect(name, env_id, policy, random_actions, steps, seed, noise, dataset_id, force, kind, gait, generator) -> None:
    """Write a Minari dataset: `collect pointmaze-umaze` (planner + PD controller, like D4RL's), or
    `collect --env Hopper-v5 --policy model.zip` / `--random`."""
    if antmaze.handles(name, kind, generator, gait):
        other_source = bool(env_id or policy or random_actions)
        antmaze.collect(name, kind, generator, gait, steps, seed, noise, dataset_id, force, other_source, _progress)
        return
    if name is not None:
        entry = registry.resolve(name)
        if entry.collect_maze is None or env_id or policy or random_actions:
            makeable = ", ".join(e.short_name for e in registry.REGISTRY.values() if e.collect_maze)
            raise OfftuneError(
                f"offtune can collect {makeable} by name; for anything else use "
                "`offtune dataset collect --env ENV_ID --policy model.zip` (or --random)"
            )
        target = dataset_id or entry.minari_id
        with _progress(steps, target) as advance:
            written = collectors.collect_pointmaze(
                entry.collect_maze,
                steps,
                seed=seed,
                noise=0.5 if noise is None else noise,
                dataset_id=target,
                force=force,
                progress=advance,
            )
    else:
        if env_id is None or (policy is None) == (not random_actions):
            raise OfftuneError(
                "give a dataset name (pointmaze-umaze, ...) or --env with --policy or --random"
            )
        if random_actions and noise is not None:
            raise OfftuneError("--noise applies to --policy and to mazes; --random actions take no noise")
        with _progress(steps, dataset_id or env_id) as advance:
            written = collectors.collect_policy(
                env_id,
                steps,
                seed=seed,
                policy_path=policy,
                noise=0.1 if noise is None else noise,
                dataset_id=dataset_id,
                force=force,
                progress=advance,
            )
    console.print(
        f"[green]wrote[/] {written.id}: {written.total_episodes} episodes, {written.total_steps} steps "
        f"in {storage.datasets_root() / written.id}"
    )


class _progress:
    """A rich progress bar whose ``advance(count)`` the collectors call every thousand steps.

    It appears on the first advance, so an option the collector refuses leaves no empty bar behind its error.
    """

    def __init__(self, total: int, label: str) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task(f"collecting {label}", total=total)
        self.started = False

    def __enter__(self):
        def advance(count: int) -> None:
            self.started = True
            self.bar.start()
            self.bar.advance(self.task, count)

        return advance

    def __exit__(self, *exc) -> None:
        if self.started:  # stopping a bar never shown would still print a newline
            self.bar.stop()


dataset.add_command(antmaze.train_controller)
dataset.add_command(antmaze.controller_report)

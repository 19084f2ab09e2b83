"""``offtune sweep``: algorithms × datasets × seeds (× grid points), pretrained then fine-tuned, one report."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import click
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from offtune.cli.display import err_console
from offtune.cli.report import report as report_command
from offtune.errors import OfftuneError
from offtune.finetune import sweep as sweeps
from offtune.finetune import trainer
from offtune.policies.config import parse_assignments

STATE_STYLES = {"queued": "dim", "running": "yellow", "done": "green", "failed": "bold red", "interrupted": "magenta"}


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OfftuneError(f"--seeds takes whole numbers separated by commas, got '{text}'") from None


def status_table(rows: list[sweeps.RunStatus]) -> Table:
    counts = Counter(row.state for row in rows)
    summary = ", ".join(f"{counts[state]} {state}" for state in STATE_STYLES if counts[state])
    table = Table(title=f"sweep: {summary}", title_justify="left")
    table.add_column("run", overflow="fold")
    for column in ("state", "phase / error", "last score", "node"):
        table.add_column(column)
    for row in rows:
        style = STATE_STYLES.get(row.state, "")
        state = f"[{style}]{row.state}[/]" if style else row.state
        phase = row.phase if row.state == "running" else row.message
        # Run names, messages and nodes come from the runs: escaped, so that brackets in them are not markup.
        table.add_row(escape(row.name), state, escape(phase), escape(row.score), escape(row.node))
    return table


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="sweep.yaml: lists, settings and grids (options given here take precedence).")
@click.option("--algos", default=None, help="Comma-separated algorithms: iql,spot,misa.")
@click.option("--datasets", "dataset_names", default=None, help="Comma-separated dataset names.")
@click.option("--seeds", default=None, help="Comma-separated seeds (default 0).")
@click.option("--pretrain-steps", type=int, default=None, help="Offline updates per run (default 1M).")
@click.option("--finetune-steps", type=int, default=None, help="Online env steps per run (default 1M).")
@click.option("--eval-every", type=int, default=None, help="Steps between evaluations, both phases (default 50k).")
@click.option("--eval-episodes", type=int, default=None, help="Default: 100 on AntMaze, 10 elsewhere.")
@click.option("--matmul-precision", type=click.Choice(trainer.MATMUL_PRECISIONS, case_sensitive=False), default=None,
              help="float32 matmuls of every run (see offtune pretrain --help); a run resumed by a rerun keeps "
                   "its own.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder of the runs; on a cluster, one that every node shares.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config field in every run.")
@click.option("--address", default=None, help="An existing Ray cluster: auto or ray://host:port.")
@click.option("--cpus-per-run", type=float, default=1.0, show_default=True, help="Ray CPUs per run (fractions ok).")
@click.option("--gpus-per-run", type=float, default=0.0, show_default=True, help="Ray GPUs per run (fractions ok).")
@click.option("--sequential", is_flag=True, help="One run at a time in this process, without Ray.")
@click.option("--download", is_flag=True, help="Download missing datasets on every node first.")
@click.pass_context
def sweep(ctx, config_file, algos, dataset_names, seeds, pretrain_steps, finetune_steps, eval_every, eval_episodes,
          matmul_precision, out, sets, address, cpus_per_run, gpus_per_run, sequential, download) -> None:
    """Pretrain then fine-tune every algorithm × dataset × seed (× grid point), on Ray when it is installed.

    Running the same command again skips finished runs and resumes interrupted ones.
    """
    values = sweeps.read_sweep_file(config_file) if config_file else {}
    given = {"algos": algos and [name.lower() for name in _names(algos)],
             "datasets": dataset_names and _names(dataset_names),
             "seeds": seeds and _seeds(seeds), "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
             "eval_every": eval_every, "eval_episodes": eval_episodes, "matmul_precision": matmul_precision,
             "out": out and Path(out)}
    values.update({key: value for key, value in given.items() if value is not None})
    values["settings"] = {**values.get("settings", {}), **parse_assignments(sets)}
    values.setdefault("seeds", [0])
    for key, option in (("algos", "--algos"), ("datasets", "--datasets"), ("out", "--out")):
        if not values.get(key):
            raise click.UsageError(f"{option} is required (here or in the --config file)")
    plan = sweeps.SweepPlan(**values)
    runs = plan.runs()
    todo, skipped = sweeps.pending_runs(plan, runs)
    use_ray = not sequential and sweeps.ray_installed()
    where = ("on Ray" + (f" at {address}" if address else " (local)")) if use_ray else "one at a time here"
    err_console.print(f"{len(runs)} run{'s' * (len(runs) != 1)} in {escape(str(plan.out))}: {len(skipped)} finished "
                      f"earlier (skipped), {len(todo)} to run {where}")
    if not use_ray and not sequential:
        err_console.print(f"Ray is not installed; for runs in parallel: [bold]{escape(sweeps.RAY_HINT)}[/]")
    stopped = False
    with Live(get_renderable=lambda: status_table(sweeps.run_statuses(plan.out, runs)), console=err_console,
              refresh_per_second=1):
        try:
            result = sweeps.run_sweep(plan, use_ray=use_ray, address=address, cpus_per_run=cpus_per_run,
                                      gpus_per_run=gpus_per_run, download=download)
        except sweeps.SweepInterrupted:
            stopped = True
    err_console.line()
    if stopped:
        err_console.print("[yellow]sweep stopped[/]; run the same command again to resume from the checkpoints")
        sys.exit(130)
    for outcome in result.failed:
        err_console.print(f"[bold red]failed[/] {escape(outcome.name)}: {escape(outcome.message)} "
                          f"(see {escape(str(plan.out / outcome.name / 'error.txt'))})", highlight=False)
    try:
        ctx.invoke(report_command, runs=(str(plan.out),), fmt="table")
    except OfftuneError as no_table:
        err_console.print(f"no table: {escape(str(no_table))}", highlight=False)
    if result.failed:
        sys.exit(1)

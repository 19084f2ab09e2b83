"""Rich output shared by the commands: a progress display for long work and score tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from offtune.finetune.report import before_after_cells

console = Console()
err_console = Console(stderr=True)

SHOWN_METRICS = ("critic_loss", "value_loss", "actor_loss", "vae_loss", "alpha", "lambda")


def _format_metrics(metrics: dict[str, float]) -> str:
    shown = [f"{k}={metrics[k]:.3g}" for k in SHOWN_METRICS if k in metrics]
    return " ".join(shown)


class RichProgress:
    """Implements the trainer's Progress protocol: one bar per stage, rate, losses, last score."""

    def __init__(self, console: Console = err_console) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=16),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[rate]}", table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            TextColumn("[cyan]{task.fields[score]}[/] {task.fields[metrics]}",
                       table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=console,
            transient=False,
            expand=True,
        )
        self.task: Any = None
        self.score = ""

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[self.task].total)
        self.task = self.bar.add_task(name, total=total, completed=completed, rate="", metrics="", score=self.score)

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        rate = metrics.get("updates_per_s") or metrics.get("env_steps_per_s")
        unit = "upd/s" if "updates_per_s" in metrics else "steps/s"
        fields: dict[str, Any] = {"metrics": _format_metrics(metrics)}
        if rate:
            fields["rate"] = f"{rate:,.0f} {unit}"
        self.bar.update(self.task, advance=count, **fields)

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None:
        self.score = f"score {summary['score']:.0f}±{summary['std']:.0f}@{step}"
        if self.task is not None:
            self.bar.update(self.task, score=self.score)


def evaluations_table(title: str, evaluations: list[dict[str, Any]], rule: str) -> Table:
    table = Table(title=title, caption=f"score rule: {rule}")
    for column in ("phase", "step", "score", "std", "episodes", "success"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for entry in evaluations:
        success = entry.get("success_rate")
        table.add_row(
            entry["phase"], f"{entry['step']:,}", f"{entry['score']:.1f}", f"{entry['std']:.1f}",
            str(entry["episodes"]), "-" if success is None else f"{100 * success:.0f}%",
        )
    return table


def before_after_table(title: str, dataset: str, algo: str, scores: dict[str, Any]) -> Table:
    cells = before_after_cells(scores)
    caption = f"score rule: {scores.get('rule', '')}; ± std over {scores['after']['episodes']} evaluation episodes"
    table = Table(title=title, caption=caption)
    table.add_column("dataset", overflow="fold")
    for column in ("algo", "before", "after", "steps", "regret"):
        table.add_column(column, no_wrap=True)
    table.add_row(dataset, algo, cells.before, f"[bold]{cells.after}[/]", cells.steps, cells.regret)
    return table

"""Rich output shared by the commands: a progress display for long work and score tables."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from offtune.errors import OfftuneError
from offtune.finetune.report import before_after_cells

console = Console()
err_console = Console(stderr=True)

SHOWN_METRICS = ("critic_loss", "value_loss", "actor_loss", "vae_loss", "alpha", "lambda")


def _format_metrics(metrics: dict[str, float]) -> str:
    shown = [f"{k}={metrics[k]:.3g}" for k in SHOWN_METRICS if k in metrics]
    return " ".join(shown)


PROGRESS_INTERVAL = 30.0
"""Seconds between plain progress lines when the output is not a terminal (``OFFTUNE_PROGRESS_INTERVAL``)."""


def progress_interval() -> float:
    """``OFFTUNE_PROGRESS_INTERVAL`` in seconds, or the default."""
    raw = os.environ.get("OFFTUNE_PROGRESS_INTERVAL")
    if raw is None:
        return PROGRESS_INTERVAL
    try:
        interval = float(raw)
    except ValueError:
        interval = -1.0
    if not interval >= 0:
        raise OfftuneError(f"OFFTUNE_PROGRESS_INTERVAL must be a number of seconds (0 or more), got '{raw}'")
    return interval


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class RichProgress:
    """Implements the trainer's Progress protocol: one bar per stage, rate, losses, last score.

    A live bar reaches a file or a pipe (nohup, CI, Ray logs) only once, when it stops; there, each stage is
    instead a plain line when it starts, every ``interval`` seconds (``OFFTUNE_PROGRESS_INTERVAL``, default
    30) and when it ends, plus a line per evaluation.
    """

    def __init__(self, console: Console = err_console, interval: float | None = None) -> None:
        self.console = console
        self.live = console.is_terminal
        self.interval = progress_interval() if interval is None else interval
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
        self.last_line = 0.0
        self.unprinted = False

    def __enter__(self) -> RichProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()
        elif self.unprinted:
            self._line()

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[self.task].total)
            if not self.live and self.unprinted:
                self._line()
        self.task = self.bar.add_task(name, total=total, completed=completed, rate="", metrics="", score=self.score)
        if not self.live:
            self._line()

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        rate = metrics.get("updates_per_s") or metrics.get("env_steps_per_s")
        unit = "upd/s" if "updates_per_s" in metrics else "steps/s"
        fields: dict[str, Any] = {"metrics": _format_metrics(metrics)}
        if rate:
            fields["rate"] = f"{rate:,.0f} {unit}"
        self.bar.update(self.task, advance=count, **fields)
        if not self.live:
            self.unprinted = True
            if self.bar.get_time() - self.last_line >= self.interval:
                self._line()

    def evaluation(self, phase: str, step: int, summary: dict[str, Any]) -> None:
        self.score = f"score {summary['score']:.0f}±{summary['std']:.0f}@{step}"
        if self.task is not None:
            self.bar.update(self.task, score=self.score)
        if not self.live:
            self._print(f"{phase} evaluation at step {step:,}: score {summary['score']:.1f} ± {summary['std']:.1f} "
                        f"over {summary['episodes']} episodes")

    def warning(self, message: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)

    def _line(self) -> None:
        """The current stage as one plain line: name, steps, rate, elapsed time, last score and losses."""
        task = self.bar.tasks[self.task]
        total = task.total or 0
        percent = f" ({100 * task.completed / total:.0f}%)" if total else ""
        parts = [f"{task.description} {int(task.completed):,}/{int(total):,}{percent}", task.fields["rate"],
                 _elapsed(task.elapsed or 0.0), task.fields["score"], task.fields["metrics"]]
        self._print(" ".join(part for part in parts if part))
        self.last_line = self.bar.get_time()
        self.unprinted = False

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)


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

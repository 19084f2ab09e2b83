"""``offtune report`` and ``offtune plot``: many run directories, one table or one figure."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from offtune.cli.display import console, err_console
from offtune.finetune import report as reports


def _print_left_out(result: reports.Report, out: Console) -> None:
    """One line per run, never wrapped, so that its path can be copied whole."""
    for reason in result.left_out:
        out.print(f"left out: {escape(reason)}", highlight=False, soft_wrap=True)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True,
              help="table and markdown: the papers' layout; csv and json: each cell's numbers, one record per cell.")
def report(runs, fmt) -> None:
    """Aggregate RUNS (run directories or folders of them): datasets x algorithms, mean ± std over seeds."""
    result = reports.aggregate(list(runs))
    if fmt != "table":
        click.echo(reports.render(result, fmt), nl=False)
        if fmt == "csv":
            _print_left_out(result, err_console)
        return
    header, rows = reports.table_rows(result)
    # Labels of grid points look like rich markup (iql[beta=10]): every text from the runs is escaped.
    caption = f"score rule: {'; '.join(result.rules)}; mean ± std over seeds"
    if note := reports.total_note(result):
        caption += f"\n{note}"
    table = Table(title="offline → online", caption=escape(caption))
    for column in header:
        table.add_column(escape(column), overflow="fold")
    for row in rows[:-1]:
        table.add_row(*map(escape, row))
    table.add_row(*map(escape, rows[-1]), style="bold")
    console.print(table)
    _print_left_out(result, console)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", default="curves.png", show_default=True, type=click.Path(dir_okay=False))
def plot(runs, output) -> None:
    """Draw score against step for RUNS, the runs the report counts: a panel per dataset (a grid), offline updates
    then online env steps with a dashed line where online begins, a band over seeds."""
    result = reports.aggregate(list(runs))
    path = reports.plot(result, output)
    console.print(f"wrote {escape(str(path))}", soft_wrap=True)
    _print_left_out(result, console)

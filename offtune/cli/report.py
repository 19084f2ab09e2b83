"""``offtune report`` and ``offtune plot``: many run directories, one table or one figure."""

from __future__ import annotations

import click
from rich.table import Table

from offtune.cli.display import console, err_console
from offtune.finetune import report as reports


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json"]), default="table",
              show_default=True)
def report(runs, fmt) -> None:
    """Aggregate RUNS (run directories or folders of them): datasets x algorithms, mean ± std over seeds."""
    result = reports.aggregate(list(runs))
    if fmt != "table":
        click.echo(reports.render(result, fmt), nl=False)
        if fmt == "csv":
            for reason in result.left_out:
                err_console.print(f"left out: {reason}", highlight=False)
        return
    header, rows = reports.table_rows(result)
    table = Table(title="offline → online", caption=f"score rule: {'; '.join(result.rules)}; mean ± std over seeds")
    for column in header:
        table.add_column(column, overflow="fold")
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_row(*rows[-1], style="bold")
    console.print(table)
    for reason in result.left_out:
        console.print(f"left out: {reason}", highlight=False)


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", default="curves.png", show_default=True, type=click.Path(dir_okay=False))
def plot(runs, output) -> None:
    """Draw score against step (offline, then online) for RUNS, with a band over seeds."""
    path = reports.plot(list(runs), output)
    console.print(f"wrote {path}")

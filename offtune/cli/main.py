"""The ``offtune`` command: a click group whose subcommands live one module per group."""

from __future__ import annotations

import contextlib
import io
import sys

import click
from rich.console import Console
from rich.markup import escape

from offtune.errors import OfftuneError

err_console = Console(stderr=True)


class OfftuneGroup(click.Group):
    """Turns user mistakes (``OfftuneError``) into one red line and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OfftuneError as error:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
            sys.exit(2)


@click.group(cls=OfftuneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offtune")
def cli() -> None:
    """Offline-to-online RL: pretrain (IQL, SPOT, MISA), fine-tune online, report, export to SB3."""


def _register() -> None:
    from offtune.cli import dataset, demo, report, sweep, train
    from offtune.cli.export import export as export_command

    cli.add_command(dataset.dataset)
    for command in (train.pretrain, train.finetune, train.evaluate, report.report, report.plot, demo.demo):
        cli.add_command(command)
    cli.add_command(export_command)
    cli.add_command(sweep.sweep)


def _quiet_imports() -> None:
    """gymnasium-robotics prints an Adroit reward notice to stderr on every import; keep our output clean."""
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics  # noqa: F401


def main() -> None:
    _quiet_imports()
    _register()
    cli()

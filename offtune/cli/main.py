"""The ``offtune`` command: a click group whose subcommands live one module per group."""

from __future__ import annotations

import contextlib
import errno
import io
import signal
import sys

import click
import torch
from rich.console import Console
from rich.markup import escape

from offtune.errors import OfftuneError

err_console = Console(stderr=True)

_FULL = "free some space there, or write somewhere else"
_DENIED = "choose a place you can write to"
FILE_SYSTEM_ADVICE = {
    errno.ENOSPC: _FULL, errno.EDQUOT: _FULL, errno.EFBIG: _FULL,
    errno.EROFS: "that file system is read-only; " + _DENIED, errno.EACCES: _DENIED, errno.EPERM: _DENIED,
    errno.ENOENT: "check the path (its folder must exist and hold files)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "that path is a folder; give a file name", errno.ENAMETOOLONG: "use a shorter path",
    errno.EIO: "the storage reported an input/output error; check the disk",
}
"""File-system failures that are the machine's state, not a bug: one line and exit code 1."""


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _out_of_memory(error: BaseException) -> bool:
    """torch's CPU allocator reports a failed allocation as a RuntimeError that only its text tells apart."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


class OfftuneGroup(click.Group):
    """Turns user mistakes (``OfftuneError``) into one red line and exit code 2, and faults of the machine (a
    full or read-only disk, no permission, out of memory) into one line and exit code 1; Ctrl-C outside
    training exits 130. Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OfftuneError as error:
            _fail(str(error), 2)
        except OSError as error:
            if error.errno not in FILE_SYSTEM_ADVICE:
                raise
            where = f"{error.filename}: " if error.filename else ""
            _fail(f"{where}{error.strerror or error}; {FILE_SYSTEM_ADVICE[error.errno]}", 1)
        except (MemoryError, RuntimeError) as error:
            if not _out_of_memory(error):
                raise
            _fail("out of memory; use smaller settings (batch size, buffer size, --num-envs) or a machine with more "
                  "memory", 1)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # more presses must not interrupt the exit itself
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)


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

"""The run directory: ``config.json``, ``metrics.jsonl`` (and CSV), ``scores.json``, ``report.md``.

``scores.json`` is ``{"rule": ..., "evaluations": [{"phase", "step", "score", "std", "episodes"}, ...]}``;
fine-tuning adds ``"before"``, ``"after"`` and, for goal tasks, ``"regret"``.

``metrics.jsonl`` is the record of the metrics; ``metrics.csv`` is always rebuilt from it when its columns
change or the run is resumed, so it keeps every key and never holds rows that the resumed run logs again.
A process holds the directory's lock (``.lock``) while it works in it, so a second run or resume into the
same folder is refused instead of mixing files.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from offtune.errors import OfftuneError
from offtune.policies.checkpoint import remove_partial_saves

try:
    import fcntl
except ImportError:  # Windows: runs work, but nothing stops two processes sharing a folder
    fcntl = None

LOGGERS = ("tensorboard", "wandb")
WANDB_ID_FILE = "wandb-run-id"


@contextlib.contextmanager
def writing(path: Path, temporary: Path | None = None) -> Iterator[None]:
    """A file-system failure while writing ``path`` names it (a full disk's write error names no file), and the
    ``temporary`` file being written in its place never stays behind."""
    try:
        yield
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``path`` through a temporary file and a rename, so a reader or a crash never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with writing(path, temporary):
        temporary.write_text(text)
        os.replace(temporary, path)


def write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, default=str) + "\n")


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; every way it can be wrong is one clear ``OfftuneError``."""
    path = Path(path)
    if not path.exists():
        raise OfftuneError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise OfftuneError(f"{what} {path} is not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise OfftuneError(f"{what} {path} must hold a mapping of key: value")
    return loaded


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _logger_module(kind: str) -> Any:
    """The package behind ``--logger kind``, or an error that says how to install it."""
    try:
        if kind == "tensorboard":
            from torch.utils import tensorboard
            return tensorboard
        if kind == "wandb":
            import wandb
            return wandb
    except ImportError:
        raise OfftuneError(f"--logger {kind} needs: pip install 'offtune[{kind}]'") from None
    raise OfftuneError(f"unknown logger '{kind}'; choose from {', '.join(LOGGERS)}")


def require_logger(kind: str | None) -> None:
    """Fail before a run starts, not after its folder exists, when its logger cannot be used."""
    if kind is not None:
        _logger_module(kind)


class ExternalLogger:
    """Sends metrics to TensorBoard or Weights & Biases (offline mode works without a network).

    A resumed run logs into the same W&B run: its id is kept in the run directory (``wandb-run-id``).
    """

    def __init__(self, kind: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.kind = kind
        module = _logger_module(kind)
        if kind == "tensorboard":
            self.writer = module.SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        else:
            id_file = run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.exists() else module.util.generate_id()
            write_text_atomically(id_file, run_id + "\n")
            self.run = module.init(project="offtune", name=run_dir.name, dir=str(run_dir), config=config,
                                   id=run_id, resume="allow")

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.kind == "tensorboard":
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        else:
            self.run.log(values, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self.writer.close()
        else:
            self.run.finish()


def _lock(path: Path) -> IO[str] | None:
    """An exclusive lock on the run directory for as long as this process works in it; the kernel drops it
    when the process ends, however it ends (SIGKILL included)."""
    if fcntl is None:
        return None
    stream = open(path / ".lock", "a")
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        stream.close()
        raise OfftuneError(f"{path} is in use by another offtune process; wait for it to end, or choose another "
                           "--out") from None
    except OSError:  # a file system without locks (some network mounts): go on unguarded
        pass
    return stream


class RunDirectory:
    """Owns the files of one run; appends metrics and evaluations as they happen.

    Opening it takes the folder's lock and removes what a killed process left half-written (temporary
    files of checkpoints and JSON files); ``close`` releases the lock.
    """

    def __init__(self, path: str | Path, logger: str | None = None) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.path)
        remove_partial_saves(self.checkpoints)
        for temporary in self.path.glob(".*.tmp"):
            temporary.unlink(missing_ok=True)
        self.logger_kind = logger
        self.external: ExternalLogger | None = None
        self._csv_fields: list[str] | None = None
        self.scores: dict[str, Any] = {"evaluations": []}

    def write_config(self, config: dict[str, Any]) -> None:
        if self.logger_kind and self.external is None:
            self.external = ExternalLogger(self.logger_kind, self.path, config)
        write_json(self.path / "config.json", config)

    def log_metrics(self, step: int, phase: str, values: dict[str, float]) -> None:
        row = {"step": step, "phase": phase, "time": round(time.time(), 3), **values}
        metrics = self.path / "metrics.jsonl"
        with writing(metrics), open(metrics, "a") as stream:
            stream.write(json.dumps(row) + "\n")
        if self._csv_fields is None or not row.keys() <= set(self._csv_fields):
            self._write_csv(self._metric_rows())
        else:
            csv_path = self.path / "metrics.csv"
            with writing(csv_path), open(csv_path, "a", newline="") as stream:
                csv.DictWriter(stream, self._csv_fields, restval="").writerow(row)
        if self.external:
            self.external.log(step, {f"{phase}/{k}": v for k, v in values.items()})

    def _metric_rows(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; a line cut short by a killed process is skipped."""
        path = self.path / "metrics.jsonl"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
        return [row for row in rows if isinstance(row, dict) and {"step", "phase"} <= row.keys()]

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        """``metrics.csv`` from ``rows``, with a column for every key any row has, in order of appearance."""
        fields = list(dict.fromkeys(key for row in rows for key in row))
        path = self.path / "metrics.csv"
        temporary = path.with_name(f".{path.name}.tmp")
        with writing(path, temporary):
            with open(temporary, "w", newline="") as stream:
                writer = csv.DictWriter(stream, fields, restval="")
                writer.writeheader()
                writer.writerows(rows)
            os.replace(temporary, path)
        self._csv_fields = fields

    def add_evaluation(self, phase: str, step: int, summary: dict[str, Any], rule: str) -> dict[str, Any]:
        entry = {"phase": phase, "step": step, **summary}
        self.scores["rule"] = rule
        self.scores["evaluations"] = [
            e for e in self.scores["evaluations"] if (e["phase"], e["step"]) != (phase, step)
        ] + [entry]
        write_json(self.path / "scores.json", self.scores)
        if self.external:
            self.external.log(step, {f"{phase}/score": summary["score"]})
        return entry

    def set_scores(self, **values: Any) -> None:
        self.scores.update(values)
        write_json(self.path / "scores.json", self.scores)

    def restart_from(self, phase: str, step: int, scores: dict[str, Any]) -> None:
        """On resume, go back to the checkpoint at ``step``: its score history (``scores``; ``scores.json`` may
        hold later evaluations, or be damaged) and the metrics logged up to it; ``step`` 0 starts over."""
        self.scores = scores
        write_json(self.path / "scores.json", self.scores)
        rows = [row for row in self._metric_rows() if row["phase"] != phase or row["step"] <= step]
        write_text_atomically(self.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        self._write_csv(rows)

    def close(self) -> None:
        """Stop the external logger and release the folder; safe to call more than once."""
        if self.external:
            self.external.close()
            self.external = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

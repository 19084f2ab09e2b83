"""The run directory: ``config.json``, ``metrics.jsonl`` (and CSV), ``scores.json``, ``report.md``.

``scores.json`` is ``{"rule": ..., "evaluations": [{"phase", "step", "score", "std", "episodes"}, ...]}``;
fine-tuning adds ``"before"``, ``"after"`` and, for goal tasks, ``"regret"``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from offtune.errors import OfftuneError

LOGGERS = ("tensorboard", "wandb")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(temporary, path)


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


class ExternalLogger:
    """Sends metrics to TensorBoard or Weights & Biases (offline mode works without a network)."""

    def __init__(self, kind: str, run_dir: Path, config: dict[str, Any]) -> None:
        self.kind = kind
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise OfftuneError("--logger tensorboard needs: pip install 'offtune[tensorboard]'") from None
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise OfftuneError("--logger wandb needs: pip install 'offtune[wandb]'") from None
            self.run = wandb.init(project="offtune", name=run_dir.name, dir=str(run_dir), config=config)
        else:
            raise OfftuneError(f"unknown logger '{kind}'; choose from {', '.join(LOGGERS)}")

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


class RunDirectory:
    """Owns the files of one run; appends metrics and evaluations as they happen."""

    def __init__(self, path: str | Path, logger: str | None = None) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.logger_kind = logger
        self.external: ExternalLogger | None = None
        self._csv_fields: list[str] | None = None
        scores_path = self.path / "scores.json"
        self.scores: dict[str, Any] = read_json(scores_path) if scores_path.exists() else {"evaluations": []}

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.path / "config.json", config)
        if self.logger_kind and self.external is None:
            self.external = ExternalLogger(self.logger_kind, self.path, config)

    def log_metrics(self, step: int, phase: str, values: dict[str, float]) -> None:
        row = {"step": step, "phase": phase, "time": round(time.time(), 3), **values}
        with open(self.path / "metrics.jsonl", "a") as stream:
            stream.write(json.dumps(row) + "\n")
        csv_path = self.path / "metrics.csv"
        if self._csv_fields is None:
            self._csv_fields = list(row)
            if not csv_path.exists():
                with open(csv_path, "w", newline="") as stream:
                    csv.DictWriter(stream, self._csv_fields, extrasaction="ignore").writeheader()
        with open(csv_path, "a", newline="") as stream:
            csv.DictWriter(stream, self._csv_fields, extrasaction="ignore").writerow(row)
        if self.external:
            self.external.log(step, {f"{phase}/{k}": v for k, v in values.items()})

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

    def truncate_after(self, phase: str, step: int) -> None:
        """On resume, forget evaluations and metrics logged after the checkpoint we resume from."""
        self.scores["evaluations"] = [
            e for e in self.scores["evaluations"] if e["phase"] != phase or e["step"] <= step
        ]
        write_json(self.path / "scores.json", self.scores)
        metrics = self.path / "metrics.jsonl"
        if metrics.exists():
            kept = [
                line for line in metrics.read_text().splitlines()
                if line and (json.loads(line)["phase"] != phase or json.loads(line)["step"] <= step)
            ]
            metrics.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self.external:
            self.external.close()

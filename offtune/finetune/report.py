"""Aggregate run directories into the papers' layout and draw learning curves.

One row per dataset, one column per algorithm (or sweep label), each cell ``before → after`` as mean ± std
over seeds (pretraining-only runs show their final offline score), and a total row: each column's means summed
over datasets, or "-" when the column lacks a dataset that another column has, since a sum over fewer datasets
is not comparable. Only finished runs count, one per seed (the latest, when a seed was run again from the same
checkpoint), and a cell never mixes offline-only with fine-tuned runs, so a report taken in the middle of a sweep
is not skewed by seeds that are still running; what is left out is listed below the table. The plot draws the
same runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offtune.buffers import datasets
from offtune.errors import OfftuneError


@dataclass
class RunRecord:
    path: Path
    dataset: str
    column: str
    seed: int
    rule: str
    before: float | None
    after: float
    evaluations: list[dict[str, Any]]
    finished: bool
    regret: float | None = None
    source: str | None = None
    """The checkpoint a fine-tuning run started from (None for pretraining): with the seed, what makes a run."""


@dataclass
class Cell:
    """The runs counted for one (dataset, column): the table's numbers and the plot's curves come from them."""

    runs: list[RunRecord]

    @property
    def before(self) -> list[float]:
        return [r.before for r in self.runs if r.before is not None]

    @property
    def after(self) -> list[float]:
        return [r.after for r in self.runs]

    @property
    def regret(self) -> list[float]:
        return [r.regret for r in self.runs if r.regret is not None]

    def text(self) -> str:
        after = f"{np.mean(self.after):.1f} ± {np.std(self.after):.1f}"
        if not self.before:
            return after
        return f"{np.mean(self.before):.1f} ± {np.std(self.before):.1f} → {after}"


@dataclass(frozen=True)
class BeforeAfterCells:
    """One fine-tuning run's table cells, shared by the terminal table and ``report.md``."""

    before: str
    after: str
    steps: str
    regret: str


def before_after_cells(scores: dict[str, Any]) -> BeforeAfterCells:
    """The cells of a run's ``scores.json``: scores as mean ± std over evaluation episodes, "-" for no regret."""
    before, after, regret = scores["before"], scores["after"], scores.get("regret")
    return BeforeAfterCells(
        f"{before['score']:.1f} ± {before['std']:.1f}", f"{after['score']:.1f} ± {after['std']:.1f}",
        f"{after['step']:,}", "-" if regret is None else f"{regret:.2f}",
    )


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories under ``paths`` (a run directory itself, or any folder above run directories)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise OfftuneError(f"{path} does not exist")
        if (path / "scores.json").exists():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.rglob("scores.json")))
    runs = [p for p in dict.fromkeys(found) if (p / "config.json").exists()]
    if not runs:
        raise OfftuneError(f"no run directories (with scores.json and config.json) under {', '.join(map(str, paths))}")
    fine_tuned = _fine_tuned_checkpoints(runs)
    return [p for p in runs if (p / "checkpoints" / "final.pt").resolve() not in fine_tuned]


def _fine_tuned_checkpoints(runs: list[Path]) -> set[Path]:
    """Checkpoints that fine-tuning runs among ``runs`` started from: such a pretraining run is already the
    "before" of its fine-tuning run (a sweep keeps both under one folder), so it is not counted again."""
    sources = (json.loads((p / "config.json").read_text())["run"].get("checkpoint") for p in runs)
    return {Path(source).resolve() for source in sources if source}


def read_run(path: Path) -> RunRecord | None:
    """A run's final numbers, or None when it has no evaluation yet, or its scores.json is missing or damaged
    (a run killed before its first evaluation, a file cut short): one such run must not stop a report of many."""
    try:
        config = json.loads((path / "config.json").read_text())
        scores = json.loads((path / "scores.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(scores, dict):
        return None
    run = config["run"]
    evaluations = scores.get("evaluations", [])
    if not evaluations:
        return None
    if "after" in scores:
        before, after = scores["before"]["score"], scores["after"]["score"]
    else:
        before, after = None, evaluations[-1]["score"]
    # A fine-tuning run is done once it has its "after" score, whatever checkpoints it left.
    finished = (path / "checkpoints" / "final.pt").exists() and (run.get("phase") != "online" or "after" in scores)
    return RunRecord(path, _row_name(config["dataset"]), run.get("label", run["algo"]), run["seed"],
                     scores.get("rule", ""), before, after, evaluations, finished, scores.get("regret"),
                     str(Path(run["checkpoint"]).resolve()) if run.get("checkpoint") else None)


def _row_name(dataset: dict[str, Any]) -> str:
    """The dataset's name, with its Minari id when that is not the version the name stands for, so that two
    versions of one dataset get two rows."""
    name, minari_id = dataset["name"], dataset["minari_id"]
    try:
        default_id = datasets.resolve(name).minari_id
    except OfftuneError:
        default_id = None
    return name if minari_id in (name, default_id) else f"{name} ({minari_id})"


@dataclass
class Report:
    """The aggregated table: ``left_out`` says which runs were not counted, and why."""

    datasets: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    rules: list[str]
    left_out: list[str]


def aggregate(paths: list[str | Path]) -> Report:
    """Every finished run under ``paths``, by (dataset, column); both the table and the plot select runs here.

    In a cell with fine-tuned runs, runs that were only pretrained are left out, so "before" and "after" are over
    the same seeds; then a seed run more than once from the same start (one checkpoint fine-tuned twice with
    one seed) counts once, as its latest run, so that it does not pass for several seeds.
    """
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    left_out: list[str] = []
    for path in find_runs(paths):
        record = read_run(path)
        if record is None or not record.finished:
            left_out.append(f"{path} (unfinished)")
            continue
        groups[(record.dataset, record.column)].append(record)
    cells: dict[tuple[str, str], Cell] = {}
    for key, records in groups.items():
        if any(r.before is not None for r in records):
            left_out += [f"{r.path} (only pretrained, beside fine-tuned seeds)" for r in records if r.before is None]
            records = [r for r in records if r.before is not None]
        cells[key] = Cell(_one_per_seed(records, left_out))
    if not cells:
        raise OfftuneError(f"no finished runs yet under {', '.join(map(str, paths))} ({len(left_out)} unfinished)")
    datasets = sorted({d for d, _ in cells})
    columns = sorted({c for _, c in cells})
    rules = sorted({r.rule for cell in cells.values() for r in cell.runs})
    return Report(datasets, columns, cells, rules, left_out)


def _one_per_seed(records: list[RunRecord], left_out: list[str]) -> list[RunRecord]:
    """The most recently finished run of each (starting checkpoint, seed), by its final.pt; the others go to
    ``left_out``. Fine-tunings of different pretrained seeds stay apart even when their own seed is the same."""
    by_run: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for record in records:
        by_run[(record.source or "", record.seed)].append(record)
    kept = []
    for (_, seed), runs in sorted(by_run.items()):
        latest = max(runs, key=lambda r: ((r.path / "checkpoints" / "final.pt").stat().st_mtime_ns, str(r.path)))
        left_out += [f"{r.path} (seed {seed} from the same start again; counted: {latest.path})"
                     for r in runs if r is not latest]
        kept.append(latest)
    return kept


def _complete(report: Report, column: str) -> bool:
    """Whether ``column`` has a cell in every dataset row, so that its total compares with the others."""
    return all((d, column) in report.cells for d in report.datasets)


def total_text(report: Report, column: str) -> str:
    """The column's means summed over datasets, or "-" when it lacks a dataset another column has."""
    if not _complete(report, column):
        return "-"
    present = [report.cells[(d, column)] for d in report.datasets]
    after = sum(float(np.mean(c.after)) for c in present)
    if all(c.before for c in present):
        before = sum(float(np.mean(c.before)) for c in present)
        return f"{before:.1f} → {after:.1f}"
    return f"{after:.1f}"


def total_note(report: Report) -> str:
    """Why a total is "-", for the text under the table; empty when every column has every dataset."""
    if all(_complete(report, c) for c in report.columns):
        return ""
    return "Total: each column's means summed; - where a column lacks a dataset that another column has."


def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows (datasets then 'total'), ready for any output format."""
    cells = report.cells
    header = ["dataset", *report.columns]
    rows = [[d, *[cells[(d, c)].text() if (d, c) in cells else "-" for c in report.columns]] for d in report.datasets]
    rows.append(["total", *[total_text(report, c) for c in report.columns]])
    return header, rows


CSV_COLUMNS = ("dataset", "column", "seeds", "before_mean", "before_std", "after_mean", "after_std", "regret_mean",
               "rule")


def cell_numbers(report: Report) -> list[dict[str, Any]]:
    """One record per (dataset, column) with the numbers behind a cell, over seeds: what csv and json hold.

    ``before_*`` are None in pretraining-only cells; ``regret_mean`` is None for envs that report no success.
    """
    records = []
    for (dataset, column), cell in sorted(report.cells.items()):
        records.append({
            "dataset": dataset, "column": column, "seeds": len(cell.after),
            "before_mean": float(np.mean(cell.before)) if cell.before else None,
            "before_std": float(np.std(cell.before)) if cell.before else None,
            "after_mean": float(np.mean(cell.after)), "after_std": float(np.std(cell.after)),
            "regret_mean": float(np.mean(cell.regret)) if cell.regret else None,
            "rule": "; ".join(sorted({run.rule for run in cell.runs})),
        })
    return records


def render(report: Report, fmt: str) -> str:
    """The report as markdown, csv or json text: markdown is the table; csv and json hold one record of numbers
    per cell (csv leaves a missing number empty and holds no ``left_out``)."""
    if fmt == "markdown":
        header, rows = table_rows(report)
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        cells = "before → after fine-tuning" if any("→" in cell for row in rows for cell in row) else "final score"
        lines += ["", f"Score rule: {'; '.join(report.rules)}. Cells: {cells}, mean ± std over seeds."]
        if note := total_note(report):
            lines += ["", note]
        if report.left_out:
            lines += ["", "Left out:", *[f"- {reason}" for reason in report.left_out]]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        stream = io.StringIO()
        writer = csv.DictWriter(stream, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(cell_numbers(report))
        return stream.getvalue()
    if fmt == "json":
        data = {"rules": report.rules, "cells": cell_numbers(report), "left_out": report.left_out}
        return json.dumps(data, indent=2) + "\n"
    raise OfftuneError(f"unknown format '{fmt}'")


def curve(record: RunRecord) -> tuple[np.ndarray, np.ndarray, int | None]:
    """A run's (x, score) with its online steps after its offline steps, and the x where online begins (None
    for a run that was only pretrained)."""
    offline = [e for e in record.evaluations if e["phase"] == "offline"]
    online = [e for e in record.evaluations if e["phase"] == "online"]
    offset = max((e["step"] for e in offline), default=0)
    xs = [e["step"] for e in offline] + [offset + e["step"] for e in online]
    ys = [e["score"] for e in offline] + [e["score"] for e in online]
    return np.asarray(xs), np.asarray(ys), offset if online else None


def score_label(rules: list[str]) -> str:
    """The y-axis label: what the score is, from the rule scores.json records (``ScoreRule.describe``)."""
    labels = []
    for rule in rules:
        if rule.startswith("success rate"):
            labels.append("success rate × 100")
        elif match := re.fullmatch(r"100 x \(R - .*\) / \(.*\) \[(.*)\]", rule):
            labels.append(f"normalised score\n[{match.group(1)}]")
        else:
            labels.append(rule or "score")
    return "; ".join(dict.fromkeys(labels))


PLOT_COLUMNS = 3


def plot(report: Report, output: str | Path) -> Path:
    """Score against step, one panel per dataset (a grid of ``PLOT_COLUMNS`` panels a row) and one line per
    column, with a band of ± std over the runs the table counts.

    The x-axis is the run's whole life: offline updates, then online env steps from where pretraining ended,
    marked by a dashed line. One axis rather than an offline and an online panel, so that the jump or dip when
    online training starts reads directly.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(report.datasets)
    columns = min(count, PLOT_COLUMNS)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.remove()
    for axis, dataset in zip(axes.flat, report.datasets, strict=False):
        boundaries, rules = set(), []
        for (name, column), cell in sorted(report.cells.items()):
            if name != dataset:
                continue
            seeds = [curve(r) for r in cell.runs]
            boundaries |= {start for _, _, start in seeds if start is not None}
            rules += [r.rule for r in cell.runs]
            grid = np.unique(np.concatenate([x for x, _, _ in seeds]))
            values = np.stack([np.interp(grid, x, y) for x, y, _ in seeds])
            mean, std = values.mean(0), values.std(0)
            axis.plot(grid, mean, label=f"{column} ({len(seeds)} seed{'s' * (len(seeds) != 1)})")
            axis.fill_between(grid, mean - std, mean + std, alpha=0.2)
        for boundary in sorted(boundaries):
            axis.axvline(boundary, color="0.4", linestyle="--", linewidth=1)
        if boundaries:
            start = min(boundaries)
            axis.text(start, 1.0, "offline ◂ ", transform=axis.get_xaxis_transform(), ha="right", va="bottom",
                      fontsize=8, color="0.3")
            axis.text(start, 1.0, " ▸ online", transform=axis.get_xaxis_transform(), ha="left", va="bottom",
                      fontsize=8, color="0.3")
        axis.set_title(dataset, pad=14 if boundaries else 6)
        axis.set_xlabel("offline updates, then online env steps")
        axis.set_ylabel(score_label(rules))
        if all(rule.startswith("success rate") for rule in rules):
            axis.set_ylim(-5, 105)  # the whole range, so that panels of success rates compare at a glance
        axis.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output

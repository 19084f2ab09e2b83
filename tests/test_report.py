"""``offtune report`` and ``offtune plot`` over real run directories: grid labels in the rich table, one run per
seed, the plot counting exactly the report's runs, and a total row that only compares complete columns.

The module's runs (tiny IQL, 30 steps, 2 evaluation episodes) are fine-tuned from two pretrained checkpoints:

    pointmaze-umaze-v0                  iql[beta=10]: seed 0 twice (``beta10-first``, then ``beta10-again``)
                                        iql[beta=3]:  seeds 0 and 1
    offtune/pointmaze/umaze-report-v0   iql[beta=10]: seed 0 (iql[beta=3] has no run here)

The sweep's live status table is checked too: run names, messages and nodes in brackets are text, not markup.
"""

import csv
import io
import json
import os
import shutil

import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure
from rich.console import Console

from offtune.buffers import collect
from offtune.cli.main import _register, cli
from offtune.cli.sweep import status_table
from offtune.finetune import report as reports
from offtune.finetune import sweep, trainer

_register()
TINY = {"hidden_dims": "32,32", "batch_size": 32}
UMAZE, OTHER = "pointmaze-umaze-v0", "offtune/pointmaze/umaze-report-v0"
BETA10, BETA3 = "iql[beta=10]", "iql[beta=3]"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def finetune(checkpoint, out, label, seed=0):
    return trainer.finetune(checkpoint, steps=30, eval_episodes=2, seed=seed, device="cpu", out=out, label=label)


@pytest.fixture(scope="module")
def runs(pointmaze_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    other = collect.collect_pointmaze("umaze", steps=1_000, seed=1, dataset_id=OTHER).id
    umaze, second = (trainer.pretrain("iql", dataset, steps=30, eval_episodes=2, device="cpu", overrides=TINY,
                                      out=root / f"offline-{i}").checkpoint
                     for i, dataset in enumerate([pointmaze_dataset, other]))
    finetune(umaze, root / "beta10-first", BETA10)
    finetune(umaze, root / "beta10-again", BETA10)
    finetune(umaze, root / "beta3-s0", BETA3)
    finetune(umaze, root / "beta3-s1", BETA3, seed=1)
    finetune(second, root / "beta10-other", BETA10)
    return root


def test_grid_labels_are_table_headers_not_markup(runs):
    result = run("report", runs)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "dataset" in line)
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == ["dataset", BETA10, BETA3]


def test_a_seed_fine_tuned_twice_counts_once_as_its_latest_run(runs):
    data = json.loads(run("report", runs, "--format", "json").output)
    seeds = {(c["dataset"], c["column"]): c["seeds"] for c in data["cells"]}
    assert seeds == {(UMAZE, BETA10): 1, (UMAZE, BETA3): 2, (OTHER, BETA10): 1}
    again_reason = f"(seed 0 from the same start again; counted: {runs / 'beta10-again'})"
    assert data["left_out"] == [f"{runs / 'beta10-first'} {again_reason}"]
    again = json.loads((runs / "beta10-again" / "scores.json").read_text())
    cell = next(c for c in data["cells"] if (c["dataset"], c["column"]) == (UMAZE, BETA10))
    assert (cell["before_mean"], cell["after_mean"]) == (again["before"]["score"], again["after"]["score"])


def test_the_latest_run_is_the_one_whose_final_checkpoint_is_newest(runs, tmp_path):
    for name in ("beta10-first", "beta10-again"):
        shutil.copytree(runs / name, tmp_path / name)
    newest = (runs / "beta10-again" / "checkpoints" / "final.pt").stat().st_mtime_ns
    os.utime(tmp_path / "beta10-first" / "checkpoints" / "final.pt", ns=(newest + 10**9, newest + 10**9))
    left_out = reports.aggregate([tmp_path]).left_out
    reason = f"(seed 0 from the same start again; counted: {tmp_path / 'beta10-first'})"
    assert left_out == [f"{tmp_path / 'beta10-again'} {reason}"]


def test_plot_draws_the_runs_the_report_counts(runs, tmp_path, monkeypatch):
    unfinished = tmp_path / "beta3-unfinished"
    shutil.copytree(runs / "beta3-s0", unfinished)
    scores = json.loads((unfinished / "scores.json").read_text())
    (unfinished / "scores.json").write_text(json.dumps({k: v for k, v in scores.items() if k != "after"}))
    legends = []
    save = Figure.savefig

    def save_and_read_legends(figure, *args, **kwargs):
        legends.append([[text.get_text() for text in axis.get_legend().get_texts()] for axis in figure.axes])
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", save_and_read_legends)

    plotted = run("plot", runs, unfinished, "-o", tmp_path / "curves.png")
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert legends == [[[f"{BETA10} (1 seed)"], [f"{BETA10} (1 seed)", f"{BETA3} (2 seeds)"]]]  # OTHER, UMAZE
    report = json.loads(run("report", runs, unfinished, "--format", "json").output)
    assert len(report["left_out"]) == 2
    left_out = [line.removeprefix("left out: ") for line in plotted.output.splitlines() if line.startswith("left out")]
    assert left_out == report["left_out"]


def test_plot_marks_where_online_begins_names_the_score_and_lays_datasets_on_a_grid(runs, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: figures.append(figure))
    monkeypatch.setattr(reports, "PLOT_COLUMNS", 1)
    reports.plot(reports.aggregate([runs]), tmp_path / "grid.png")
    (figure,) = figures
    assert [axis.get_title() for axis in figure.axes] == [OTHER, UMAZE]
    assert [axis.get_subplotspec().get_geometry()[:2] for axis in figure.axes] == [(2, 1), (2, 1)]
    for axis in figure.axes:
        assert axis.get_ylabel() == "success rate × 100"
        dashed = [list(line.get_xdata()) for line in axis.get_lines() if line.get_linestyle() == "--"]
        assert dashed == [[30, 30]]  # pretraining's 30 updates, then the online steps
        assert {text.get_text().strip() for text in axis.texts} == {"offline ◂", "▸ online"}


def test_score_rules_become_axis_labels():
    hopper = "100 x (R - -20.2723) / (3234.3 - -20.2723) [D4RL hopper reference returns]"
    assert reports.score_label([hopper, hopper]) == "normalised score\n[D4RL hopper reference returns]"
    assert reports.score_label(["raw return"]) == "raw return"


def test_csv_holds_numbers_one_row_per_cell(runs):
    result = CliRunner().invoke(cli, ["report", str(runs), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    cells = json.loads(run("report", runs, "--format", "json").output)["cells"]
    assert list(rows[0]) == ["dataset", "column", "seeds", "before_mean", "before_std", "after_mean", "after_std",
                             "regret_mean", "rule"]
    assert [(row["dataset"], row["column"]) for row in rows] == [(c["dataset"], c["column"]) for c in cells]
    for row, cell in zip(rows, cells, strict=True):
        assert int(row["seeds"]) == cell["seeds"] and row["rule"] == cell["rule"] == "success rate x 100"
        for key in ("before_mean", "before_std", "after_mean", "after_std", "regret_mean"):
            assert (float(row[key]) if row[key] else None) == cell[key]  # a missing number is an empty field
    assert "left out:" in result.stderr and "left out:" not in result.stdout


def test_a_column_without_every_dataset_has_no_total(runs):
    markdown = run("report", runs, "--format", "markdown").output.splitlines()
    assert markdown[0] == f"| dataset | {BETA10} | {BETA3} |"
    assert markdown[2].startswith(f"| {OTHER} | ") and markdown[2].endswith(" | - |")
    data = json.loads(run("report", runs, "--format", "json").output)
    means = {c["dataset"]: (c["before_mean"], c["after_mean"]) for c in data["cells"] if c["column"] == BETA10}
    before, after = (sum(m[i] for m in means.values()) for i in (0, 1))
    assert markdown[4] == f"| total | {before:.1f} → {after:.1f} | - |"
    assert "Total: each column's means summed; - where a column lacks a dataset that another column has." in markdown

    complete = run("report", runs / "beta3-s0", runs / "beta10-again", "--format", "markdown").output.splitlines()
    assert complete[3].startswith("| total | ") and " - " not in complete[3]
    assert not any(line.startswith("Total:") for line in complete)


def test_sweep_status_table_shows_names_messages_and_nodes_in_brackets():
    rows = [sweep.RunStatus("iql-d-[beta=3]-s0", "failed", score="[0.0]", node="[node-1]",
                            message="--set beta=[bold]: expected a float"),
            sweep.RunStatus("iql-d-[beta=10]-s0", "running", phase="[pretrain] 10/60")]
    console = Console(width=200, record=True)
    console.print(status_table(rows))
    text = console.export_text()
    for shown in ("iql-d-[beta=3]-s0", "[0.0]", "[node-1]", "--set beta=[bold]: expected", "iql-d-[beta=10]-s0",
                  "[pretrain] 10/60"):
        assert shown in text


def test_fine_tunings_of_different_pretrained_seeds_are_different_seeds(pointmaze_dataset, tmp_path):
    for seed in (0, 1):
        offline = trainer.pretrain("iql", pointmaze_dataset, steps=10, seed=seed, eval_episodes=1, device="cpu",
                                   overrides=TINY, out=tmp_path / f"offline-s{seed}")
        online = trainer.finetune(offline.checkpoint, steps=10, eval_episodes=1, device="cpu",
                                  out=tmp_path / f"s{seed}")
        assert json.loads((online.run_dir / "config.json").read_text())["run"]["seed"] == seed
    result = reports.aggregate([tmp_path / "s0", tmp_path / "s1"])
    assert len(result.cells[(UMAZE, "iql")].runs) == 2 and result.left_out == []
    again = trainer.finetune(tmp_path / "offline-s1", steps=10, seed=0, eval_episodes=1, device="cpu",
                             out=tmp_path / "s1-seed0")
    result = reports.aggregate([tmp_path / "s0", tmp_path / "s1", again.run_dir])
    assert len(result.cells[(UMAZE, "iql")].runs) == 3 and result.left_out == []

"""Sweeps: grid expansion and names, run states, a real small sweep on a local Ray (2 CPUs), reruns that skip
finished runs and resume interrupted ones, and one failing grid point that leaves the others done."""

import json

import pytest
import torch
from click.testing import CliRunner

from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError
from offtune.finetune import sweep, trainer

_register()
TINY = {"hidden_dims": "32,32", "batch_size": 32}
TINY_SPOT = {"vae_steps": 20, "vae_hidden_dim": 32}
STEPS = ["--pretrain-steps", "60", "--finetune-steps", "60", "--eval-episodes", "2"]
TINY_SETS = ["--set", "hidden_dims=32,32", "--set", "batch_size=32"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def words(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_grid_expansion_names_labels_and_overrides(tmp_path):
    plan = sweep.SweepPlan(
        ["iql", "spot"], ["antmaze-umaze-v2", "D4RL/antmaze/medium-play-v1"], [0, 1], tmp_path,
        settings={"batch_size": 64, "lam": 9.0}, algo_settings={"iql": {"beta": 10.0}},
        algo_grids={"spot": {"lam": [0.05, 0.25], "hidden_dims": [[64, 64]]}},
    )
    plan.algo_settings["spot"] = {}
    with pytest.raises(OfftuneError, match="unknown setting 'lam' for iql"):
        plan.runs()
    plan.settings = {"batch_size": 64}
    runs = plan.runs()
    assert len(runs) == 2 * 2 + 2 * 2 * 2
    names = [r.name for r in runs]
    assert names[0] == "iql-antmaze-umaze-v2-s0"
    assert "spot-D4RL_antmaze_medium-play-v1-lam=0.25-hidden_dims=64,64-s1" in names
    spot = next(r for r in runs if r.algo == "spot")
    assert spot.label == "spot[lam=0.05,hidden_dims=64,64]"
    assert spot.overrides == {"batch_size": 64, "lam": 0.05, "hidden_dims": [64, 64]}
    assert runs[0].label == "iql" and runs[0].overrides == {"batch_size": 64, "beta": 10.0}
    assert all(r.name == r.name.strip() and "/" not in r.name for r in runs)


def test_sweep_file_and_its_mistakes(tmp_path):
    good = tmp_path / "sweep.yaml"
    good.write_text("algos: [IQL, spot]\ndatasets: antmaze-umaze-v2\nseeds: [0, 1, 2]\npretrain_steps: 10\n"
                    "set: {batch_size: 64}\nmatmul_precision: Medium\nspot:\n  grid: {lam: [0.1, 0.2]}\n")
    values = sweep.read_sweep_file(good)
    assert values["matmul_precision"] == "medium"
    unset = tmp_path / "unset.yaml"
    unset.write_text("algos: [iql]\ndatasets: [antmaze-umaze-v2]\nmatmul_precision: null\n")
    assert sweep.read_sweep_file(unset)["matmul_precision"] is None
    assert values["algos"] == ["iql", "spot"] and values["datasets"] == ["antmaze-umaze-v2"]
    assert values["seeds"] == [0, 1, 2] and values["algo_grids"] == {"spot": {"lam": [0.1, 0.2]}}
    assert len(sweep.SweepPlan(out=tmp_path, **values).runs()) == 3 + 2 * 3
    for text, message in [
        ("algoss: [iql]\n", "Did you mean: algos"),
        ("spot:\n  grid: {lam: 0.1}\n", "must be a non-empty list"),
        ("spot:\n  sets: {lam: 0.1}\n", "takes only set and grid"),
        ("misa:\n  grid: {lam: [0.1]}\n", "'misa', which is not among"),
        ("datasets: [antmaze-umazee-v2]\n", "antmaze-umaze-v2"),
        ("algos: [iqll]\n", "Did you mean: iql"),
        ("pretrain_steps: 1e6\nseeds: [0, one]\n", "seeds takes whole numbers, got 'one'"),
        ("matmul_precision: meduim\n", "Did you mean: medium"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text("algos: [iql, spot]\ndatasets: [antmaze-umaze-v2]\nseeds: [0]\n" + text)
        with pytest.raises(OfftuneError, match=message):
            sweep.SweepPlan(out=tmp_path, **sweep.read_sweep_file(bad)).runs()


def test_run_state_from_the_run_folder(tmp_path):
    assert sweep.run_state(tmp_path) == "queued"
    for path, state in [("pretrain/checkpoints/last.pt", "interrupted"), ("pretrain/checkpoints/final.pt",
                        "interrupted"), ("finetune/checkpoints/last.pt", "interrupted"),
                        ("finetune/checkpoints/final.pt", "done")]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
        assert sweep.run_state(tmp_path) == state


def test_missing_datasets_are_named_before_anything_runs(tmp_path, pointmaze_dataset):
    plan = sweep.SweepPlan(["iql"], [pointmaze_dataset, "pointmaze-medium-v0"], [0], tmp_path / "out")
    with pytest.raises(OfftuneError, match=r"this machine \(.*\) lacks pointmaze-medium-v0: .*dataset collect"):
        sweep.run_sweep(plan, use_ray=False)
    assert not any((tmp_path / "out").glob("*/pretrain"))
    typed = run("sweep", "--algos", "IQL", "--datasets", "D4RL/antmaze/large-play-v1", "--sequential",
                "--pretrain-steps", 1, "--finetune-steps", 1, "--out", tmp_path)
    assert typed.exit_code == 2 and "lacks D4RL/antmaze/large-play-v1" in words(typed)


def test_sweep_on_local_ray_reports_every_run_and_a_rerun_skips_them(tmp_path, pointmaze_dataset):
    pytest.importorskip("ray")
    (tmp_path / "sweep.yaml").write_text("spot:\n  set: {vae_steps: 20, vae_hidden_dim: 32}\n")
    args = ["sweep", "--config", tmp_path / "sweep.yaml", "--algos", "iql,spot", "--datasets", pointmaze_dataset,
            "--seeds", "0,1", *STEPS, "--out", tmp_path / "out", *TINY_SETS, "--cpus-per-run", "1"]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "4 to run on Ray (local)" in words(result) and "sweep: 4 done" in words(result)
    finals = sorted((tmp_path / "out").glob("*/finetune/checkpoints/final.pt"))
    assert len(finals) == 4
    statuses = sweep.run_statuses(tmp_path / "out", sweep.SweepPlan(
        ["iql", "spot"], [pointmaze_dataset], [0, 1], tmp_path / "out").runs())
    assert [s.state for s in statuses] == ["done"] * 4 and all("→" in s.score for s in statuses)

    table = json.loads(run("report", tmp_path / "out", "--format", "json").output)
    assert [(c["dataset"], c["column"], c["seeds"]) for c in table["cells"]] == [
        ("pointmaze-umaze-v0", "iql", 2), ("pointmaze-umaze-v0", "spot", 2)]
    assert all(c["before_mean"] is not None for c in table["cells"])
    markdown = run("report", tmp_path / "out", "--format", "markdown").output.splitlines()
    assert markdown[0] == "| dataset | iql | spot |" and markdown[3].startswith("| total |")
    assert "pointmaze-umaze-v0" in result.output and "total" in result.output

    stamps = [path.stat().st_mtime_ns for path in finals]
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "4 finished earlier (skipped), 0 to run" in words(again)
    assert [path.stat().st_mtime_ns for path in finals] == stamps


def test_a_failing_grid_point_on_ray_leaves_the_others_done(tmp_path, pointmaze_dataset):
    pytest.importorskip("ray")
    (tmp_path / "sweep.yaml").write_text(
        f"algos: [iql]\ndatasets: [{pointmaze_dataset}]\nseeds: [0]\nout: {tmp_path / 'out'}\n"
        "grid:\n  expectile: [0.8, high]\n")
    result = run("sweep", "--config", tmp_path / "sweep.yaml", *STEPS, *TINY_SETS)
    assert result.exit_code == 1, result.output
    bad = tmp_path / "out" / "iql-offtune_pointmaze_umaze-v0-expectile=high-s0"
    good = tmp_path / "out" / "iql-offtune_pointmaze_umaze-v0-expectile=0.8-s0"
    assert "expected a value of type float" in (bad / "error.txt").read_text()
    assert "Traceback" in (bad / "error.txt").read_text()
    assert "failed iql-offtune_pointmaze_umaze-v0-expectile=high-s0: --set expectile=high" in words(result)
    assert sweep.run_state(good) == "done" and not (good / "error.txt").exists()
    config = json.loads((good / "finetune" / "config.json").read_text())
    assert config["run"]["label"] == "iql[expectile=0.8]" and config["algo_config"]["expectile"] == 0.8
    lines = run("report", tmp_path / "out", "--format", "csv").output.splitlines()
    assert lines[0].startswith("dataset,column,seeds,") and len(lines) == 2
    assert lines[1].startswith("pointmaze-umaze-v0,iql[expectile=0.8],1,")


def test_sequential_sweep_resumes_an_interrupted_run_and_keeps_finished_phases(
    tmp_path, pointmaze_dataset, ctrl_c_at
):
    plan = sweep.SweepPlan(["iql"], [pointmaze_dataset], [0, 1], tmp_path, pretrain_steps=40, finetune_steps=30,
                           eval_every=20, eval_episodes=2, settings=TINY)
    cut, done_offline = (tmp_path / run.name for run in plan.runs())
    with pytest.raises(trainer.Interrupted):
        trainer.pretrain("iql", pointmaze_dataset, steps=40, seed=0, eval_every=20, eval_episodes=2,
                         out=cut / "pretrain", overrides=TINY, label="iql", progress=ctrl_c_at(25))
    trainer.pretrain("iql", pointmaze_dataset, steps=40, seed=1, eval_every=20, eval_episodes=2,
                     out=done_offline / "pretrain", overrides=TINY, label="iql")
    offline_final = done_offline / "pretrain" / "checkpoints" / "final.pt"
    stamp = offline_final.stat().st_mtime_ns
    assert [sweep.run_state(cut), sweep.run_state(done_offline)] == ["interrupted", "interrupted"]

    result = sweep.run_sweep(plan, use_ray=False)
    assert {o.state for o in result.outcomes.values()} == {"done"} and result.skipped == []
    assert offline_final.stat().st_mtime_ns == stamp
    steps = [e["step"] for e in json.loads((cut / "pretrain" / "scores.json").read_text())["evaluations"]]
    assert steps == [20, 40]
    scores = json.loads((cut / "finetune" / "scores.json").read_text())
    assert scores["after"]["step"] == 30 and json.loads((cut / "status.json").read_text())["state"] == "done"
    assert sweep.run_sweep(plan, use_ray=False).skipped == [run.name for run in plan.runs()]


def test_without_ray_the_sweep_runs_here_and_says_how_to_get_ray(tmp_path, pointmaze_dataset, monkeypatch):
    monkeypatch.setattr(sweep, "ray_installed", lambda: False)
    args = ["sweep", "--algos", "iql", "--datasets", pointmaze_dataset, *STEPS, "--out", tmp_path, *TINY_SETS]
    assert "--address needs Ray" in words(run(*args, "--address", "auto"))
    before = torch.get_float32_matmul_precision()
    result = run(*args, "--matmul-precision", "MEDIUM")
    assert result.exit_code == 0, result.output
    assert torch.get_float32_matmul_precision() == before
    assert "1 to run one at a time here" in words(result) and "pip install 'offtune[ray]'" in words(result)
    run_dir = tmp_path / "iql-offtune_pointmaze_umaze-v0-s0"
    assert sweep.run_state(run_dir) == "done"
    for phase in ("pretrain", "finetune"):
        assert json.loads((run_dir / phase / "config.json").read_text())["run"]["matmul_precision"] == "medium"

"""The training commands as a user types them: output, files, exit codes, reports and plots."""

import json
import shutil

import pytest
from click.testing import CliRunner

from offtune.cli.main import _register, cli
from offtune.finetune import trainer

_register()
TINY = ["--set", "hidden_dims=32,32", "--set", "batch_size=32"]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pretrained(pointmaze_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "iql"
    result = run("pretrain", "iql", pointmaze_dataset, "--steps", 30, "--eval-episodes", 2, "--out", out,
                 "--device", "cpu", *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_pretrain_prints_the_score_table_and_checkpoint(pretrained):
    scores = json.loads((pretrained / "scores.json").read_text())
    assert scores["evaluations"][0]["step"] == 30
    assert (pretrained / "checkpoints" / "final.pt").exists()


def test_evaluate_json(pretrained):
    result = run("evaluate", pretrained / "checkpoints" / "final.pt", "--episodes", 3, "--json")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["episodes"] == 3 and len(data["returns"]) == 3 and data["rule"] == "success rate x 100"


def test_finetune_report_and_plot(pretrained, tmp_path):
    result = run("finetune", pretrained / "checkpoints" / "final.pt", "--steps", 40, "--eval-every", 20,
                 "--eval-episodes", 2, "--out", tmp_path / "ft", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "after" in result.output
    second = run("finetune", pretrained / "checkpoints" / "final.pt", "--steps", 40, "--eval-episodes", 2,
                 "--seed", 1, "--out", tmp_path / "ft-seed1", "--device", "cpu", "--matmul-precision", "medium")
    assert second.exit_code == 0, second.output
    assert json.loads((tmp_path / "ft-seed1" / "config.json").read_text())["run"]["matmul_precision"] == "medium"
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["run"]["matmul_precision"] == "highest"

    markdown = run("report", tmp_path / "ft", tmp_path / "ft-seed1", "--format", "markdown")
    lines = markdown.output.splitlines()
    assert lines[0] == "| dataset | iql |"
    assert lines[2].startswith("| pointmaze-umaze-v0 | ") and "→" in lines[2]
    assert lines[3].startswith("| total |")
    data = json.loads(run("report", tmp_path, "--format", "json").output)
    assert data["cells"][0]["seeds"] == 2
    assert run("report", tmp_path, "--format", "csv").output.startswith("dataset,column,seeds,before_mean,")
    assert run("report", tmp_path).exit_code == 0
    plotted = run("plot", tmp_path, "-o", tmp_path / "curves.png")
    assert plotted.exit_code == 0 and (tmp_path / "curves.png").stat().st_size > 1000


def test_report_in_the_middle_of_a_sweep_counts_finished_runs_over_the_same_seeds(
    pretrained, pointmaze_dataset, tmp_path, ctrl_c_at
):
    checkpoint = pretrained / "checkpoints" / "final.pt"
    finished = run("finetune", checkpoint, "--steps", 30, "--eval-episodes", 2, "--out", tmp_path / "ft-s0")
    assert finished.exit_code == 0, finished.output
    with pytest.raises(trainer.Interrupted):
        trainer.finetune(checkpoint, steps=30, eval_episodes=2, seed=1, out=tmp_path / "ft-s1",
                         progress=ctrl_c_at(10))
    offline = run("pretrain", "iql", pointmaze_dataset, "--steps", 30, "--eval-episodes", 2, "--seed", 2,
                  "--out", tmp_path / "offline-s2", *TINY)
    assert offline.exit_code == 0, offline.output

    scores = json.loads((tmp_path / "ft-s0" / "scores.json").read_text())
    shutil.copytree(tmp_path / "ft-s0", tmp_path / "ft-s3")
    (tmp_path / "ft-s3" / "scores.json").write_text(json.dumps({k: v for k, v in scores.items() if k != "after"}))
    expected = f"{scores['before']['score']:.1f} ± 0.0 → {scores['after']['score']:.1f} ± 0.0"
    markdown = run("report", tmp_path, "--format", "markdown").output
    assert markdown.splitlines()[2] == f"| pointmaze-umaze-v0 | {expected} |"
    assert f"- {tmp_path / 'ft-s1'} (unfinished)" in markdown
    assert f"- {tmp_path / 'ft-s3'} (unfinished)" in markdown
    assert f"- {tmp_path / 'offline-s2'} (only pretrained, beside fine-tuned seeds)" in markdown
    data = json.loads(run("report", tmp_path, "--format", "json").output)
    assert data["cells"][0]["seeds"] == 1 and len(data["left_out"]) == 3
    csv = CliRunner().invoke(cli, ["report", str(tmp_path), "--format", "csv"])
    before, after = float(scores["before"]["score"]), float(scores["after"]["score"])
    assert scores["regret"] is None  # no online episode ended in 30 steps: the regret field is empty
    assert csv.stdout.splitlines()[1] == f"pointmaze-umaze-v0,iql,1,{before!r},0.0,{after!r},0.0,,success rate x 100"
    assert "left out:" not in csv.stdout and csv.stderr.count("left out:") == 3
    alone = CliRunner().invoke(cli, ["report", str(tmp_path / "ft-s1")])
    assert alone.exit_code == 2 and "no finished runs yet" in alone.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrain", "iqll", "pointmaze-umaze"], "Did you mean: iql"),
        (["pretrain", "iql", "antmaze-umazee-v2"], "antmaze-umaze-v2"),
        (["pretrain", "iql", "pointmaze-umaze", "--set", "expectile=high"], "expected a value of type float"),
        (["pretrain", "iql", "pointmaze-umaze", "--set", "expectle=0.9"], "Did you mean: expectile"),
        (["evaluate", "missing.pt"], "does not exist"),
        (["report", "nowhere"], "does not exist"),
        (["pretrain", "iql", "pointmaze-umaze", "--matmul-precision", "low"], "'highest', 'high', 'medium'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message, pointmaze_dataset):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "Invalid value for '--steps': 0 is not in the range x>=1"),
        (["--eval-episodes", "0"], "Invalid value for '--eval-episodes'"),
        (["--set", "batch_size=-5"], "batch_size must be at least 1, got -5"),
        (["--set", "hidden_dims=0"], "hidden_dims must be at least 1"),
    ],
)
def test_out_of_range_values_exit_2(args, message, pointmaze_dataset):
    result = CliRunner().invoke(cli, ["pretrain", "iql", pointmaze_dataset, *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_pretrain_resume_needs_only_the_run_directory(pointmaze_dataset, tmp_path, ctrl_c_at):
    with pytest.raises(trainer.Interrupted):
        trainer.pretrain("iql", pointmaze_dataset, steps=30, eval_episodes=2, out=tmp_path / "cut", device="cpu",
                         overrides={"hidden_dims": (32, 32), "batch_size": 32}, progress=ctrl_c_at(10))
    wrong_algo = CliRunner().invoke(cli, ["pretrain", "spot", "--resume", str(tmp_path / "cut")])
    assert wrong_algo.exit_code == 2 and "holds a run of iql, not spot" in " ".join(wrong_algo.output.split())
    wrong_data = CliRunner().invoke(cli, ["pretrain", "iql", "hopper-medium-v2", "--resume", str(tmp_path / "cut")])
    assert wrong_data.exit_code == 2
    assert "not hopper-medium-v2: leave DATASET out" in " ".join(wrong_data.output.split())
    ignored = CliRunner().invoke(cli, ["pretrain", "--resume", str(tmp_path / "cut"), "--steps", "50", "--set", "a=1"])
    assert ignored.exit_code == 2 and "leave out --steps, --set" in " ".join(ignored.output.split())
    resumed = run("pretrain", "--resume", tmp_path / "cut")
    assert resumed.exit_code == 0, resumed.output
    assert "IQL offline on pointmaze-umaze-v0" in resumed.output
    assert json.loads((tmp_path / "cut" / "scores.json").read_text())["evaluations"][-1]["step"] == 30


def test_finetune_resume_refuses_options_it_would_ignore(tmp_path):
    result = CliRunner().invoke(cli, ["finetune", "--resume", str(tmp_path), "--steps", "5000", "--eval-episodes", "7"])
    assert result.exit_code == 2 and "leave out --steps, --eval-episodes" in " ".join(result.output.split())


def test_corrupt_checkpoint_exits_2(tmp_path, pretrained):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((pretrained / "checkpoints" / "final.pt").read_bytes()[:1000])
    result = CliRunner().invoke(cli, ["finetune", str(broken), "--steps", "5"])
    assert result.exit_code == 2 and "truncated" in result.output


def test_compiled_pretraining_logs_its_compile_time_and_its_checkpoint_fine_tunes_eagerly(pointmaze_dataset, tmp_path):
    result = run("pretrain", "spot", pointmaze_dataset, "--steps", 30, "--eval-episodes", 2, "--out", tmp_path / "on",
                 "--device", "cpu", "--compile", "on", "--set", "vae_steps=10", "--set", "vae_hidden_dim=16", *TINY)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "on" / "config.json").read_text())["run"]["compile"] == "on"
    rows = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    compile_times = [row["compile_s"] for row in rows if "compile_s" in row]
    assert len(compile_times) == 1 and compile_times[0] > 0
    online = run("finetune", tmp_path / "on" / "checkpoints" / "final.pt", "--steps", 20, "--eval-episodes", 2,
                 "--out", tmp_path / "ft", "--device", "cpu")
    assert online.exit_code == 0, online.output
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["run"]["compile"] == "auto"
    assert not any("compile_s" in line for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines())

"""``offtune dataset``: list, info, download and collect through the real click group."""

from __future__ import annotations

import importlib.util
import json

import minari
import pytest
from click.testing import CliRunner

from offtune.cli.main import _register, cli

_register()


def run(*args: str):
    return CliRunner().invoke(cli, ["dataset", *args])


def test_list_shows_the_registry_and_local_datasets(pointmaze_dataset, antmaze_umaze_dataset):
    result = run("list")
    assert result.exit_code == 0, result.output
    for name in ("antmaze-umaze-v2", "hopper-medium-replay-v2", "maze2d-large-v1", "pointmaze-umaze-v0"):
        assert name in result.output
    local = run("list", "--local")
    assert "antmaze-umaze-v2" in local.output and "KB" in local.output
    assert "antmaze-large-play-v2" not in local.output


def test_info_json(pointmaze_dataset, antmaze_umaze_dataset):
    result = run("info", "pointmaze-umaze", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["minari_id"], summary["steps"], summary["obs_dim"]) == (pointmaze_dataset, 5000, 6)
    assert summary["score_rule"] == "success rate x 100" and summary["task_mode"] == "goal"
    goal_mode = json.loads(run("info", "antmaze-umaze-v2", "--task-mode", "goal", "--json").output)
    assert (goal_mode["obs_dim"], goal_mode["task_mode"], goal_mode["episodes"]) == (31, "goal", 6)


def test_info_table(antmaze_umaze_dataset):
    result = run("info", antmaze_umaze_dataset)
    assert result.exit_code == 0, result.output
    assert "success rate x 100" in result.output and "[-4.0, 4.0]" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "antmaze-umaz-v2"), "Did you mean: antmaze-umaze-v2"),
        (("info", "walker2d-medium-v2"), "offtune dataset download walker2d-medium-v2"),
        (("info", "halfcheetah-medium-replay-v2"), "halfcheetah-medium-v2"),
        (("collect", "hopper-medium-v2"), "--env ENV_ID --policy"),
        (("collect", "--env", "Pendulum-v1"), "--policy or --random"),
    ],
)
def test_user_errors_exit_2_without_traceback(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


@pytest.mark.skipif(
    importlib.util.find_spec("huggingface_hub") is not None, reason="download extra installed"
)
def test_download_needs_the_hf_extra():
    result = run("download", "hopper-expert-v2")
    assert result.exit_code == 2 and "pip install offtune[hf]" in result.output


def test_collect_pointmaze_and_overwrite(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    args = (
        "collect",
        "pointmaze-medium",
        "--steps",
        "300",
        "--seed",
        "1",
        "--id",
        "test/pointmaze/medium-v0",
    )
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "wrote test/pointmaze/medium-v0" in result.output
    assert minari.load_dataset("test/pointmaze/medium-v0").total_steps == 300
    again = run(*args)
    assert again.exit_code == 2 and "--force" in again.output
    assert run(*args, "--force", "--noise", "0.1").exit_code == 0


def test_collect_random_in_any_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    result = run(
        "collect", "--env", "Pendulum-v1", "--random", "--steps", "120", "--id", "test/pendulum/random-v0"
    )
    assert result.exit_code == 0, result.output
    dataset = minari.load_dataset("test/pendulum/random-v0")
    assert (dataset.total_steps, dataset.env_spec.id) == (120, "Pendulum-v1")

"""Online experience kept as a dataset (``finetune --record-dataset``) and fine-tuning on logged data without a
live env (``finetune --data``), on the tiny PointMaze settings of ``test_trainer.py``."""

from __future__ import annotations

import json

import gymnasium as gym
import imageio.v3 as iio
import minari
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from offtune.buffers import collect, datasets
from offtune.buffers.transforms import Normalizer, RewardTransform
from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError
from offtune.finetune import envs, trainer
from offtune.finetune import report as reports
from offtune.finetune.evaluate import to_env_actions
from offtune.policies.checkpoint import load_checkpoint
from offtune.policies.config import config_from_dict

_register()

TINY = {"hidden_dims": "32,32", "batch_size": 32}
RECORDED = "test/recorded/online-v0"
"""An id that names no family, so that reading it as the checkpoint's task is ``--data``'s doing, not the id's."""


@pytest.fixture(scope="module")
def pretrained(pointmaze_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("logged") / "offline"
    return trainer.pretrain("iql", pointmaze_dataset, steps=20, eval_every=20, eval_episodes=1, out=out, device="cpu",
                            overrides=TINY)


@pytest.fixture(scope="module")
def recorded(pretrained, tmp_path_factory):
    """A fine-tuning run of 60 env steps in one env that records them as ``RECORDED``."""
    out = tmp_path_factory.mktemp("logged") / "ft"
    return trainer.finetune(pretrained.checkpoint, steps=60, eval_every=30, eval_episodes=1, out=out, device="cpu",
                            record_dataset=RECORDED)


def same_weights(first: dict, second: dict) -> None:
    for name, value in first.items():
        if torch.is_tensor(value):
            assert torch.equal(value, second[name]), name
        elif isinstance(value, dict):
            same_weights(value, second[name])


# --- --record-dataset -----------------------------------------------------------------------------------


def test_the_recorded_dataset_is_declared_like_the_source_and_holds_the_env_own_steps(recorded, pointmaze_dataset):
    dataset, source = minari.load_dataset(RECORDED), minari.load_dataset(pointmaze_dataset)
    assert dataset.observation_space == source.observation_space and dataset.action_space == source.action_space
    assert dataset.env_spec == source.env_spec
    assert dataset.storage.metadata["eval_env_spec"] == source.storage.metadata["eval_env_spec"]
    assert dataset.total_steps == 60
    for episode in dataset.iterate_episodes():
        steps = len(episode.rewards)
        assert set(episode.observations) == {"achieved_goal", "desired_goal", "observation"}
        assert episode.observations["observation"].shape == (steps + 1, 4)
        assert episode.observations["observation"].dtype == np.float64
        assert episode.actions.dtype == np.float32 and np.abs(episode.actions).max() <= 1.0
        assert episode.terminations[-1] or episode.truncations[-1]


def test_the_recorded_dataset_read_as_the_task_is_the_online_buffer(recorded):
    """The env's own steps, relabelled on load as the checkpoint's task, give back exactly what fine-tuning
    trained on: the online part of ``last.pt``'s buffer (one env, so both are in step order)."""
    last = load_checkpoint(recorded.run_dir / "checkpoints" / "last.pt")
    info = datasets.DatasetInfo.from_dict(last["dataset"])
    config = config_from_dict(trainer.algorithm("iql")[0], last["config"])
    loaded = datasets.load(RECORDED, task_mode=info.task_mode, family=info.family)
    batch = trainer.prepare_offline(loaded, config, Normalizer.from_dict(last["normalizer"]),
                                    RewardTransform(**last["reward_transform"])).transitions
    online = last["buffer"]["online"].numpy()
    observations, actions, rewards, next_observations, dones = np.split(
        online, np.cumsum([info.obs_dim, info.action_dim, 1, info.obs_dim]), axis=1)
    np.testing.assert_array_equal(batch.observations, observations)
    np.testing.assert_array_equal(batch.next_observations, next_observations)
    np.testing.assert_array_equal(batch.rewards, rewards[:, 0])
    np.testing.assert_array_equal(batch.dones, dones[:, 0])
    env_actions = to_env_actions(actions, info).astype(np.float32)
    np.testing.assert_array_equal(loaded.actions, env_actions)


def test_pretrain_reads_the_recorded_dataset_as_its_source_task_under_any_id(recorded, pretrained, tmp_path):
    run = trainer.pretrain("iql", RECORDED, steps=5, eval_episodes=1, out=tmp_path / "run", device="cpu",
                           overrides=TINY)
    read = json.loads((run.run_dir / "config.json").read_text())["dataset"]
    source = load_checkpoint(pretrained.checkpoint)["dataset"]
    assert read["steps"] == 60 and read["family"] == "pointmaze" == source["family"]
    assert (read["obs_keys"], read["eval_env_spec"], read["goal"]) == (source["obs_keys"], source["eval_env_spec"],
                                                                       source["goal"])


def test_recording_survives_an_interruption_and_a_kill_after_the_dataset_was_written(pretrained, tmp_path,
                                                                                    ctrl_c_at):
    dataset_id = "test/recorded/resumed-v0"
    with pytest.raises(trainer.Interrupted):
        trainer.finetune(pretrained.checkpoint, steps=60, eval_every=30, eval_episodes=1, out=tmp_path / "cut",
                         device="cpu", num_envs=2, record_dataset=dataset_id, progress=ctrl_c_at(20))
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    kept = last["recorded"]
    assert sum(len(episode["rewards"]) for episode in kept) == last["step"] >= 20
    assert all(episode["truncations"][-1] or episode["terminations"][-1] for episode in kept)
    resumed = trainer.finetune(resume=tmp_path / "cut", device="cpu")
    dataset = minari.load_dataset(dataset_id)
    assert dataset.total_steps == 60 == resumed.scores["after"]["step"]
    episodes = list(dataset.iterate_episodes())
    for episode, saved in zip(episodes, kept, strict=False):
        np.testing.assert_array_equal(episode.observations["observation"], saved["observations"]["observation"])
        np.testing.assert_array_equal(episode.actions, saved["actions"])

    (tmp_path / "cut" / "checkpoints" / "final.pt").unlink()  # killed between the dataset and final.pt
    trainer.finetune(resume=tmp_path / "cut", device="cpu")
    assert minari.load_dataset(dataset_id).total_steps == 60
    with pytest.raises(OfftuneError, match=f"dataset {dataset_id} already exists locally"):
        trainer.finetune(pretrained.checkpoint, steps=10, out=tmp_path / "other", device="cpu",
                         record_dataset=dataset_id)
    assert not (tmp_path / "other").exists()


# --- --data ---------------------------------------------------------------------------------------------


def test_data_trains_on_the_recorded_dataset_reports_and_resumes_exactly(recorded, pretrained, tmp_path, ctrl_c_at):
    options = {"data": RECORDED, "steps": 30, "eval_every": 15, "eval_episodes": 1, "device": "cpu"}
    whole = trainer.finetune(pretrained.checkpoint, out=tmp_path / "whole", **options)
    scores = json.loads((tmp_path / "whole" / "scores.json").read_text())
    assert [(e["phase"], e["step"]) for e in scores["evaluations"]] == [
        ("offline", 20), ("online", 0), ("online", 15), ("online", 30)]
    assert scores["before"]["step"] == 0 and scores["after"]["step"] == 30
    run = json.loads((tmp_path / "whole" / "config.json").read_text())["run"]
    assert (run["phase"], run["data"], run["buffer_size"]) == ("online", RECORDED, 60)
    metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["phase"] == "online" and metrics[-1]["updates_per_s"] > 0
    report = reports.aggregate([tmp_path / "whole"])
    assert report.datasets == ["pointmaze-umaze-v0"] and report.columns == ["iql"]

    with pytest.raises(trainer.Interrupted):
        trainer.finetune(pretrained.checkpoint, out=tmp_path / "cut", progress=ctrl_c_at(10), **options)
    assert "buffer" in load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    resumed = trainer.finetune(resume=tmp_path / "cut", device="cpu")
    same_weights(torch.load(whole.checkpoint, weights_only=True)["agent"],
                 torch.load(resumed.checkpoint, weights_only=True)["agent"])
    assert resumed.scores["after"]["score"] == whole.scores["after"]["score"]


def test_data_needs_the_live_env_for_evaluation_and_says_so(recorded, pretrained, tmp_path, monkeypatch):
    def missing(*args, **kwargs):
        raise gym.error.NameNotFound("Environment `PointMaze_UMaze` doesn't exist.")

    monkeypatch.setattr(envs, "make_gym_env", missing)
    with pytest.raises(OfftuneError, match="evaluating a --data run of pointmaze-umaze-v0 needs the live env "
                                           "PointMaze_UMaze-v3, which cannot be built here"):
        trainer.finetune(pretrained.checkpoint, data=RECORDED, steps=5, out=tmp_path / "run", device="cpu")


@pytest.fixture(scope="module")
def pendulum_dataset(minari_root):
    return collect.collect_policy("Pendulum-v1", steps=50, seed=0, dataset_id="test/pendulum/random-v0").id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-dataset", "DATASET"], "dataset offtune/pointmaze/umaze-v0 already exists locally; choose another "
                                          "--record-dataset id"),
        (["--record-dataset", "not an id"], "--record-dataset 'not an id' is not a valid Minari dataset id"),
        (["--data", "PENDULUM"], "dataset test/pendulum/random-v0 has observations of size 3 and actions of size 1, "
                                 "but the checkpoint (trained on pointmaze-umaze-v0) takes 6 and 2"),
        (["--data", "DATASET", "--utd", "4", "--num-envs", "2"], "--data trains on logged transitions, one update "
                                                                  "per step, without a live env; leave out --utd, "
                                                                  "--num-envs"),
        (["--data", "DATASET", "--record-dataset", "a/b-v0"], "leave out --record-dataset"),
    ],
)
def test_refused_options_are_one_line_and_exit_2(args, message, pretrained, pointmaze_dataset, pendulum_dataset,
                                                  tmp_path):
    where = {"DATASET": pointmaze_dataset, "PENDULUM": pendulum_dataset}
    result = CliRunner().invoke(cli, ["finetune", str(pretrained.checkpoint), "--out", str(tmp_path / "run"),
                                      *[where.get(arg, arg) for arg in args]])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and message in result.output
    assert not (tmp_path / "run").exists()


def test_cli_records_and_trains_on_logged_data(pretrained, tmp_path):
    recorded = CliRunner().invoke(cli, ["finetune", str(pretrained.checkpoint), "--steps", "20", "--eval-episodes",
                                        "1", "--out", str(tmp_path / "ft"), "--record-dataset", "test/cli/online-v0"])
    assert recorded.exit_code == 0, recorded.output
    assert "online transitions: dataset test/cli/online-v0" in recorded.output
    logged = CliRunner().invoke(cli, ["finetune", str(pretrained.checkpoint), "--data", "test/cli/online-v0",
                                      "--steps", "10", "--eval-episodes", "1", "--out", str(tmp_path / "data")])
    assert logged.exit_code == 0, logged.output
    assert "offline → logged data test/cli/online-v0" in logged.output
    table = CliRunner().invoke(cli, ["report", str(tmp_path / "data"), "--format", "json"])
    assert json.loads(table.output)["cells"][0]["seeds"] == 1


# --- --video-every --------------------------------------------------------------------------------------


def test_videos_at_the_evaluations_past_every_n_steps_and_none_again_after_a_resume(pretrained, tmp_path, ctrl_c_at):
    """Evaluations at 0, 10, 20, 30, 40; a video at 0, then at the first evaluation at or past each multiple of 15
    (20, 30). The run stops at 35, after its video at 30: resumed, it records none at 40."""
    with pytest.raises(trainer.Interrupted):
        trainer.finetune(pretrained.checkpoint, steps=40, eval_every=10, eval_episodes=1, out=tmp_path / "run",
                         device="cpu", video_every=15, video_max_steps=3, progress=ctrl_c_at(35))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["last_video"] == 30
    trainer.finetune(resume=tmp_path / "run", device="cpu")
    videos = sorted((tmp_path / "run" / "videos").iterdir())
    assert [video.name for video in videos] == ["step_0.mp4", "step_20.mp4", "step_30.mp4"]
    for video in videos:
        frames = np.stack(list(iio.imiter(video, plugin="FFMPEG")))
        assert frames.shape == (3 + 1, 480, 480, 3)


def test_video_max_steps_goes_with_video_every(pretrained, tmp_path):
    result = CliRunner().invoke(cli, ["finetune", str(pretrained.checkpoint), "--video-max-steps", "5", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output == "error: --video-max-steps goes with --video-every\n"

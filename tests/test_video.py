"""Videos of a checkpoint's episodes, rendered offscreen by MuJoCo and decoded back: frame count, size, content.

Episodes are cut at a few steps (``max_steps``): the software renderer takes tens of milliseconds a frame.
"""

import json

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from offtune.cli.main import _register, cli
from offtune.finetune import trainer
from offtune.finetune.video import VideoSchedule, record_video
from offtune.policies.checkpoint import load_agent

_register()


@pytest.fixture(scope="module")
def checkpoint(pointmaze_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "iql"
    return trainer.pretrain("iql", pointmaze_dataset, steps=20, eval_episodes=1, device="cpu", out=out,
                            overrides={"hidden_dims": (32, 32), "batch_size": 32}).checkpoint


def test_mp4_holds_one_frame_per_state_of_each_episode(checkpoint, tmp_path):
    loaded = load_agent(checkpoint)
    recording = record_video(loaded.agent, loaded.info, loaded.normalizer, tmp_path / "clips" / "two.mp4",
                             episodes=2, seed=3, max_steps=6)
    frames = np.stack(list(iio.imiter(recording.path, plugin="FFMPEG")))
    assert recording.evaluation.lengths == [6, 6] and recording.cut == 2
    assert len(frames) == recording.frames == 2 * (6 + 1)
    assert frames.shape[1:] == (recording.height, recording.width, 3) == (480, 480, 3)
    assert iio.immeta(recording.path, plugin="FFMPEG")["fps"] == recording.fps == 50
    # Rendered scenes, not blank frames: the maze has walls and floor of many colours.
    assert all(len(np.unique(frame.reshape(-1, 3), axis=0)) > 50 for frame in frames[[0, -1]])


def test_cli_writes_a_gif_with_format_gif(checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), "--video", str(tmp_path / "clip"), "--format",
                                      "gif", "--max-steps", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    video = data["video"]
    assert video["path"] == str(tmp_path / "clip.gif") and data["episodes"] == 1
    frames = iio.imread(tmp_path / "clip.gif", index=None)
    assert frames.shape[1:] == (video["height"], video["width"], 3) == (480, 480, 3)
    # Pillow merges identical consecutive frames into one longer frame; the playing time is what stays exact.
    durations = [iio.immeta(tmp_path / "clip.gif", index=i)["duration"] for i in range(len(frames))]
    assert video["frames"] == 4 + 1 and sum(durations) == video["frames"] * 1000 / video["fps"]


def test_cli_prints_the_recorded_episodes_and_the_video(checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(checkpoint), "--video", str(tmp_path / "ep.mp4"),
                                      "--episodes", "2", "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "video" in result.stdout and "2 episode(s) cut at 2 steps" in result.stdout
    assert len(list(iio.imiter(tmp_path / "ep.mp4", plugin="FFMPEG"))) == 2 * 3


def test_schedule_records_at_its_steps_into_its_folder(checkpoint, tmp_path):
    loaded = load_agent(checkpoint)
    schedule = VideoSchedule(tmp_path / "videos", every=500, fmt="gif", max_steps=2)
    assert [step for step in range(0, 1_600, 250) if schedule.due(step)] == [0, 500, 1_000, 1_500]
    recording = schedule.record(loaded.agent, loaded.info, loaded.normalizer, 1_000, seed=0)
    assert recording.path == tmp_path / "videos" / "step_1000.gif" and recording.path.stat().st_size > 0


@pytest.mark.parametrize(
    ("video", "extra", "message"),
    [
        ("clip.avi", [], "a video is written as .mp4 or .gif, not .avi"),
        ("clip.mp4", ["--format", "gif"], "clip.mp4 ends in .mp4, but the format asked for is gif"),
        ("file/clip.mp4", [], "file is a file, not a folder"),
        ("folder", [], "is a directory"),
        (None, ["--max-steps", "5"], "--format and --max-steps go with --video"),
    ],
)
def test_bad_video_requests_exit_2_with_one_line_before_any_work(video, extra, message, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    args = ["evaluate", str(tmp_path / "missing.pt"), *extra]
    if video is not None:
        args += ["--video", str(tmp_path / video)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "missing.pt" not in result.output

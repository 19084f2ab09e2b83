"""Progress where no one watches a terminal (a file, a pipe, CI): plain lines every few seconds, not a live bar
that reaches the file only when it stops."""

import io
import re

from click.testing import CliRunner
from rich.console import Console

from offtune.cli.display import RichProgress
from offtune.cli.main import _register, cli

_register()


def test_pretrain_into_a_pipe_prints_plain_lines(pointmaze_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("OFFTUNE_PROGRESS_INTERVAL", "0")
    result = CliRunner().invoke(cli, ["pretrain", "iql", pointmaze_dataset, "--steps", "30", "--eval-every", "15",
                                      "--eval-episodes", "1", "--out", str(tmp_path / "run"), "--device", "cpu",
                                      "--set", "hidden_dims=32,32", "--set", "batch_size=32"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert "━" not in result.stderr
    assert lines[0] == "IQL offline 0/30 (0%) 0:00:00"
    status = [line for line in lines if re.fullmatch(r"IQL offline [\d,]+/30 \(\d+%\) [\d,]+ upd/s \d:\d\d:\d\d .*",
                                                     line)]
    assert status and all("critic_loss=" in line and "actor_loss=" in line for line in status)
    assert status[-1].startswith("IQL offline 30/30 (100%) ") and " score 0±0@15 " in status[-1]
    for step in (15, 30):
        assert f"offline evaluation at step {step}: score 0.0 ± 0.0 over 1 episodes" in lines


def test_lines_come_at_the_interval_and_when_a_stage_ends():
    out, now = io.StringIO(), [0.0]
    with RichProgress(Console(file=out, width=80), interval=25) as progress:
        progress.bar.get_time = lambda: now[0]
        progress.stage("VAE", 100)
        for _ in range(10):
            now[0] += 10
            progress.advance(10, {"updates_per_s": 1234.0, "vae_loss": 0.5})
        progress.stage("SPOT offline", 50)
        progress.evaluation("offline", 10, {"score": 42.0, "std": 3.0, "episodes": 5})
        now[0] += 10
        progress.advance(10, {"updates_per_s": 99.0, "critic_loss": 2.0})
    assert out.getvalue().splitlines() == [
        "VAE 0/100 (0%) 0:00:00",
        "VAE 30/100 (30%) 1,234 upd/s 0:00:30 vae_loss=0.5",
        "VAE 60/100 (60%) 1,234 upd/s 0:01:00 vae_loss=0.5",
        "VAE 90/100 (90%) 1,234 upd/s 0:01:30 vae_loss=0.5",
        "VAE 100/100 (100%) 1,234 upd/s 0:01:40 vae_loss=0.5",
        "SPOT offline 0/50 (0%) 0:00:00",
        "offline evaluation at step 10: score 42.0 ± 3.0 over 5 episodes",
        "SPOT offline 10/50 (20%) 99 upd/s 0:00:10 score 42±3@10 critic_loss=2",
    ]


def test_a_terminal_gets_the_live_bar_and_no_lines():
    out = io.StringIO()
    with RichProgress(Console(file=out, force_terminal=True, width=80), interval=0) as progress:
        progress.stage("IQL offline", 10)
        progress.advance(10, {"updates_per_s": 5.0})
    assert progress.live and "IQL offline 10/10 (100%)" not in out.getvalue()


def test_a_bad_interval_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFTUNE_PROGRESS_INTERVAL", "soon")
    result = CliRunner().invoke(cli, ["pretrain", "iql", "pointmaze-umaze", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    message = "OFFTUNE_PROGRESS_INTERVAL must be a number of seconds (0 or more), got 'soon'"
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_warning_is_one_line_printed_as_given():
    out = io.StringIO()
    with RichProgress(Console(file=out, width=80)) as progress:
        progress.stage("IQL offline", 10)
        progress.warning("step 52: mean q is 1e+06, far outside [-100, 0] (try --set lam=[0.5])")
    assert "warning: step 52: mean q is 1e+06, far outside [-100, 0] (try --set lam=[0.5])\n" in out.getvalue()

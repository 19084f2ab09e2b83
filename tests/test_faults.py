"""Faults a user or the machine can cause, end to end (issue 15).

(a) Real ``offtune pretrain`` / ``offtune finetune`` processes are SIGKILLed at random moments, once as soon as a
    checkpoint is being written, and stopped by a triple Ctrl-C; resuming must give the weights of an
    uninterrupted run (pretraining, SPOT's VAE stage included) and leave consistent files.
(b) Checkpoints with random bytes written into them are refused by name, never loaded.
(c) A full and a read-only file system (a small tmpfs, mounted when the test runs as root) give one line and exit
    code 1, leave no temporary files and keep the last checkpoint.
(d) A table of bad inputs over every command: exit code, one line that says what is wrong, no traceback.

Everything runs on the tiny settings of ``test_trainer.py``; the killed processes are the slow part.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError
from offtune.finetune import trainer
from offtune.finetune.scores import RunDirectory
from offtune.policies.checkpoint import load_checkpoint
from offtune.policies.iql import IQLAgent

_register()

TINY = {"hidden_dims": "32,32", "batch_size": 32}
SPOT = {**TINY, "vae_steps": 150, "vae_hidden_dim": 32}
CHECKPOINT_MINUTES = 0.002
"""A checkpoint every ~0.1 s, so that kills land before, between and inside saves."""


def as_sets(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]


# --- helpers ----------------------------------------------------------------------------------------------


def offtune_process(*args: object) -> subprocess.Popen:
    """The real command line in its own process (one torch thread, like the tests' in-process runs)."""
    command = [sys.executable, "-c", "from offtune.cli.main import main; main()", *map(str, args)]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def started(run: Path, since: float, delay: float) -> Callable[[], bool]:
    """True ``delay`` seconds after the process that started at ``since`` opened the run (wrote config.json)."""
    seen: list[float] = []

    def ready() -> bool:
        config = run / "config.json"
        if not seen and config.exists() and config.stat().st_mtime >= since:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return ready


def saving(run: Path, since: float) -> Callable[[], bool]:
    """True while the process that started at ``since`` is writing a checkpoint over an earlier ``last.pt``
    (the new one's temporary file exists)."""
    opened = started(run, since, 0.0)
    checkpoints = run / "checkpoints"
    return lambda: opened() and (checkpoints / "last.pt").exists() and any(checkpoints.glob(".*.tmp"))


def stop_when(process: subprocess.Popen, ready: Callable[[], bool], stop: Callable[[], None]) -> tuple[bool, str]:
    """Call ``stop`` as soon as ``ready()`` holds, wait for the process and return whether it was stopped (not
    finished first) and its stderr."""
    deadline = time.monotonic() + 300
    stopped = False
    while process.poll() is None:
        if ready():
            stop()
            stopped = True
            break
        assert time.monotonic() < deadline, "the process neither finished nor reached the moment to stop it"
        time.sleep(0.002)
    _, errors = process.communicate(timeout=300)
    return stopped, errors


def finish(process: subprocess.Popen) -> None:
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors


def tensors(tree: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from tensors(value, f"{prefix}.{key}")
    else:
        yield prefix, tree


def assert_same_agent(first: Path, second: Path) -> None:
    """Every weight, optimiser state and counter of the two checkpoints' agents is bit-identical."""
    one = dict(tensors(torch.load(first, weights_only=True)["agent"]))
    two = dict(tensors(torch.load(second, weights_only=True)["agent"]))
    assert one.keys() == two.keys()
    for name, value in one.items():
        if torch.is_tensor(value):
            assert torch.equal(value, two[name]), name
        else:
            assert value == two[name], name


def assert_consistent_run(run: Path, phase: str, evaluation_steps: list[int]) -> None:
    """No temporary file left; each evaluation and each metrics row once, metrics.csv equal to metrics.jsonl."""
    assert not [path.name for path in run.rglob("*.tmp")]
    evaluations = json.loads((run / "scores.json").read_text())["evaluations"]
    assert [e["step"] for e in evaluations if e["phase"] == phase] == evaluation_steps
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), steps
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1
    assert set(csv_lines[0].split(",")) == {key for row in rows for key in row}


def one_line(output: str, fragment: str) -> None:
    """The message is one line that holds ``fragment``; no traceback."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1 and fragment in errors[0], output


@pytest.fixture(scope="module")
def tiny_run(pointmaze_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny IQL pretraining run (read-only for the tests)."""
    out = tmp_path_factory.mktemp("faults") / "iql"
    trainer.pretrain("iql", pointmaze_dataset, steps=20, eval_episodes=1, out=out, device="cpu", overrides=TINY)
    return out


# --- (a) killed processes ---------------------------------------------------------------------------------


def test_pretrain_killed_at_random_moments_and_mid_save_resumes_to_an_uninterrupted_runs_weights(
    pointmaze_dataset, tmp_path
):
    rng = random.Random(15)
    whole = trainer.pretrain("spot", pointmaze_dataset, steps=100, eval_every=50, eval_episodes=1,
                             out=tmp_path / "whole", device="cpu", overrides=SPOT)
    run = tmp_path / "cut"
    stops = []
    since = time.time()
    process = offtune_process("pretrain", "spot", pointmaze_dataset, "--steps", 100, "--eval-every", 50,
                              "--eval-episodes", 1, "--out", run, "--device", "cpu",
                              "--checkpoint-every-minutes", CHECKPOINT_MINUTES, *as_sets(SPOT))
    stops.append(stop_when(process, started(run, since, rng.uniform(0.1, 0.6)), process.kill)[0])
    since = time.time()
    process = offtune_process("pretrain", "--resume", run)
    stops.append(stop_when(process, saving(run, since), process.kill)[0])
    load_checkpoint(run / "checkpoints" / "last.pt")  # the checkpoint before the one cut short is intact
    since = time.time()
    process = offtune_process("pretrain", "--resume", run)
    stops.append(stop_when(process, started(run, since, rng.uniform(0.0, 1.0)), process.kill)[0])

    def triple_ctrl_c() -> None:
        for _ in range(3):
            process.send_signal(signal.SIGINT)
            time.sleep(0.005)

    since = time.time()
    process = offtune_process("pretrain", "--resume", run)
    stopped, errors = stop_when(process, started(run, since, rng.uniform(0.0, 0.5)), triple_ctrl_c)
    if stopped:  # a Ctrl-C that lands as the last update finishes may find nothing left to stop
        finished = process.returncode == 0 and (run / "checkpoints" / "final.pt").exists()
        assert (process.returncode == 130 or finished) and "Traceback" not in errors, errors
    finish(offtune_process("pretrain", "--resume", run))

    assert_same_agent(whole.checkpoint, run / "checkpoints" / "final.pt")
    assert_consistent_run(run, "offline", [50, 100])
    assert any(stops), "no process was stopped before it finished"


def test_triple_ctrl_c_exits_130_without_a_traceback(pointmaze_dataset, tmp_path):
    run = tmp_path / "run"
    since = time.time()
    process = offtune_process("pretrain", "iql", pointmaze_dataset, "--steps", 5000, "--eval-episodes", 1,
                              "--out", run, "--device", "cpu", *as_sets(TINY))
    opened = started(run, since, 0.0)
    # wait for the first metrics row: past loading and compiling, inside the update loop
    while process.poll() is None and not (opened() and (run / "metrics.jsonl").exists()):
        time.sleep(0.002)
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.01)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors
    assert "Traceback" not in errors and f"continue with --resume {run}" in " ".join(errors.split())


def test_finetune_killed_at_random_moments_resumes_to_a_consistent_run(tiny_run, tmp_path):
    """Fine-tuning restores everything but the live envs (episodes restart after a resume), so the check is
    that every kill leaves a run that finishes with consistent files, and that resuming is deterministic."""
    rng = random.Random(16)
    run = tmp_path / "cut"
    since = time.time()
    process = offtune_process("finetune", tiny_run / "checkpoints" / "final.pt", "--steps", 200, "--eval-every", 100,
                              "--eval-episodes", 1, "--out", run, "--device", "cpu",
                              "--checkpoint-every-minutes", CHECKPOINT_MINUTES)
    stop_when(process, started(run, since, rng.uniform(0.1, 0.8)), process.kill)
    since = time.time()
    process = offtune_process("finetune", "--resume", run)
    stop_when(process, saving(run, since), process.kill)
    load_checkpoint(run / "checkpoints" / "last.pt")
    shutil.copytree(run, tmp_path / "copy")
    finish(offtune_process("finetune", "--resume", run))
    again = trainer.finetune(resume=tmp_path / "copy", device="cpu")

    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 200
    assert_consistent_run(run, "online", [0, 100, 200])
    assert_same_agent(run / "checkpoints" / "final.pt", again.checkpoint)


def test_spot_resumes_exactly_from_a_checkpoint_written_on_the_clock_inside_its_vae_stage(pointmaze_dataset,
                                                                                         tmp_path):
    class CtrlCInTheVAE:
        """Presses Ctrl-C at the VAE's first progress report, once a wall-clock checkpoint exists there."""

        def __init__(self) -> None:
            self.vae, self.saved_during_vae = False, None

        def stage(self, name: str, total: int, completed: int = 0) -> None:
            self.vae = name == "VAE"

        def advance(self, count: int, metrics: dict) -> None:
            if self.vae and self.saved_during_vae is None:
                self.saved_during_vae = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
                signal.raise_signal(signal.SIGINT)

        def evaluation(self, phase: str, step: int, summary: dict) -> None:
            pass

    common = {"steps": 30, "eval_every": 30, "eval_episodes": 1, "device": "cpu", "overrides": SPOT}
    whole = trainer.pretrain("spot", pointmaze_dataset, out=tmp_path / "whole", **common)
    progress = CtrlCInTheVAE()
    with pytest.raises(trainer.Interrupted) as stopped:
        trainer.pretrain("spot", pointmaze_dataset, out=tmp_path / "cut", progress=progress,
                         checkpoint_minutes=1e-9, **common)
    assert progress.saved_during_vae["step"] == 0 and 0 < progress.saved_during_vae["stage_step"] <= 100
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert stopped.value.step == 0 and last["stage_step"] == 100 and "vae_optimizer" in last["agent"]
    resumed = trainer.pretrain(resume=tmp_path / "cut", device="cpu")
    assert_same_agent(whole.checkpoint, resumed.checkpoint)


def test_a_run_that_stopped_before_its_first_checkpoint_is_never_a_dead_end(pointmaze_dataset, tmp_path):
    class FailsAtFirstLog:
        def stage(self, name: str, total: int, completed: int = 0) -> None:
            pass

        def advance(self, count: int, metrics: dict) -> None:
            raise MemoryError

        def evaluation(self, phase: str, step: int, summary: dict) -> None:
            pass

    common = {"steps": 20, "eval_episodes": 1, "device": "cpu", "overrides": TINY}
    whole = trainer.pretrain("iql", pointmaze_dataset, out=tmp_path / "whole", **common)
    with pytest.raises(MemoryError):
        trainer.pretrain("iql", pointmaze_dataset, out=tmp_path / "dead", progress=FailsAtFirstLog(), **common)
    assert (tmp_path / "dead" / "config.json").exists()
    assert not (tmp_path / "dead" / "checkpoints" / "last.pt").exists()
    with pytest.raises(OfftuneError, match="has no checkpoint yet .* start it over with --resume"):
        trainer.pretrain("iql", pointmaze_dataset, out=tmp_path / "dead", **common)
    resumed = trainer.pretrain(resume=tmp_path / "dead", device="cpu")
    assert_same_agent(whole.checkpoint, resumed.checkpoint)
    assert_consistent_run(tmp_path / "dead", "offline", [20])

    with pytest.raises(MemoryError):
        trainer.finetune(whole.checkpoint, steps=20, eval_episodes=1, out=tmp_path / "ft", device="cpu",
                         progress=FailsAtFirstLog())
    assert not (tmp_path / "ft" / "checkpoints" / "last.pt").exists()
    online = trainer.finetune(resume=tmp_path / "ft", device="cpu")
    assert [e["step"] for e in online.scores["evaluations"] if e["phase"] == "online"] == [0, 20]
    assert_consistent_run(tmp_path / "ft", "online", [0, 20])


def test_a_folder_in_use_by_another_process_is_refused(tiny_run, pointmaze_dataset, tmp_path):
    holder = RunDirectory(tmp_path / "busy")
    try:
        with pytest.raises(OfftuneError, match="in use by another offtune process"):
            trainer.pretrain("iql", pointmaze_dataset, steps=5, out=tmp_path / "busy", device="cpu", overrides=TINY)
    finally:
        holder.close()


def test_a_diverging_run_stops_with_its_last_good_checkpoint(pointmaze_dataset, tmp_path, monkeypatch):
    real_update = IQLAgent.update
    calls = []

    def update_that_diverges_after_25(agent, batch):
        calls.append(1)
        if len(calls) > 25:
            with torch.no_grad():
                next(agent.actor.parameters()).fill_(float("nan"))
        return real_update(agent, batch)

    monkeypatch.setattr(IQLAgent, "update", update_that_diverges_after_25)
    with pytest.raises(OfftuneError, match=r"training diverged by step \d+: .*, \S+last\.pt \(step 20\), is kept"):
        trainer.pretrain("iql", pointmaze_dataset, steps=100, eval_every=20, eval_episodes=1, out=tmp_path / "run",
                         device="cpu", overrides=TINY)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["step"] == 20 and not (tmp_path / "run" / "checkpoints" / "final.pt").exists()
    weights = [t for _, t in tensors(last["agent"]) if torch.is_tensor(t) and t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in weights)


def test_metrics_csv_keeps_every_key_and_is_trimmed_like_the_jsonl(tmp_path):
    directory = RunDirectory(tmp_path / "run")
    directory.log_metrics(1, "online", {"loss": 1.0})
    directory.log_metrics(2, "online", {"loss": 2.0, "regret": 0.5})
    directory.log_metrics(3, "online", {"loss": 3.0, "regret": 0.25})
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",")[-2:] == ["loss", "regret"] and lines[1].endswith(",1.0,") and len(lines) == 4
    directory.restart_from("online", 2, {"evaluations": []})
    directory.log_metrics(3, "online", {"loss": 3.5, "regret": 0.2, "new": 1.0})
    directory.close()
    lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["step", "1", "2", "3"] and lines[3].endswith(",3.5,0.2,1.0")
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [
        1, 2, 3]


def test_wandb_resumes_the_run_it_started(tmp_path, monkeypatch):
    """W&B itself is an optional extra: a stand-in module records what offtune asks of it."""
    calls = []

    class Run:
        def __init__(self, **kwargs) -> None:
            calls.append(kwargs)
            self.id = kwargs["id"]

        def log(self, values: dict, step: int) -> None:
            pass

        def finish(self) -> None:
            pass

    class Util:
        @staticmethod
        def generate_id() -> str:
            return "abc123"

    stand_in = type(sys)("wandb")
    stand_in.init, stand_in.util = Run, Util
    monkeypatch.setitem(sys.modules, "wandb", stand_in)
    for _ in range(2):
        directory = RunDirectory(tmp_path / "run", "wandb")
        directory.write_config({"run": {}})
        directory.close()
    assert [(c["id"], c["resume"]) for c in calls] == [("abc123", "allow"), ("abc123", "allow")]


def test_damaged_scores_and_metrics_stop_neither_a_report_nor_a_resume(tiny_run, tmp_path):
    broken, good = tmp_path / "runs" / "broken", tmp_path / "runs" / "good"
    shutil.copytree(tiny_run, broken)
    shutil.copytree(tiny_run, good)
    (broken / "scores.json").write_text('{"evaluations": [')
    with open(broken / "metrics.jsonl", "a") as stream:
        stream.write('{"step": 21, "pha')  # a line cut short by a kill
    report = CliRunner().invoke(cli, ["report", str(tmp_path / "runs"), "--format", "json"])
    assert report.exit_code == 0, report.output
    data = json.loads(report.output)
    assert data["cells"][0]["seeds"] == 1 and any(str(broken) in entry for entry in data["left_out"])
    resumed = trainer.pretrain(resume=broken, device="cpu")
    assert [e["step"] for e in resumed.scores["evaluations"]] == [20]
    assert_consistent_run(broken, "offline", [20])


# --- (b) damaged checkpoints ------------------------------------------------------------------------------


def test_a_damaged_checkpoint_is_refused_by_name_and_never_loaded(tiny_run, tmp_path):
    original = tiny_run / "checkpoints" / "final.pt"
    data = original.read_bytes()
    rng = random.Random(1)
    damaged = tmp_path / "damaged.pt"
    middle = len(data) // 2
    damaged.write_bytes(data[:middle] + rng.randbytes(1000) + data[middle + 1000:])  # the dd
    for args in (["finetune", damaged, "--steps", 5], ["evaluate", damaged], ["export", damaged, "-o", "x.zip"]):
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 2
        one_line(result.output, f"{damaged} is damaged")

    reference = load_checkpoint(original)
    refused = 0
    for position in range(0, len(data), max(1, len(data) // 250)):
        flipped = bytearray(data)
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(flipped))
        try:
            loaded = load_checkpoint(damaged)
        except OfftuneError:
            refused += 1
            continue
        assert dict(tensors(loaded["agent"])).keys() == dict(tensors(reference["agent"])).keys()
        for name, value in tensors(loaded["agent"]):  # a byte that was not part of the payload (zip padding)
            expected = dict(tensors(reference["agent"]))[name]
            assert torch.equal(value, expected) if torch.is_tensor(value) else value == expected
    assert refused > 200

    for length in (0, 100, len(data) // 2, len(data) - 1):
        damaged.write_bytes(data[:length])
        with pytest.raises(OfftuneError):
            load_checkpoint(damaged)


def test_resuming_from_a_damaged_last_checkpoint_names_it(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    result = CliRunner().invoke(cli, ["pretrain", "--resume", str(run)])
    assert result.exit_code == 2
    one_line(result.output, f"{last} is damaged")


# --- (c) full and read-only file systems ------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs; skipped where the test cannot mount one."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root and mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the file system's free space."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "wb") as stream:
        stream.write(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


def test_a_full_disk_is_one_line_exit_1_keeps_the_last_checkpoint_and_leaves_no_temporary_files(
    small_disk, pointmaze_dataset, ctrl_c_at
):
    run = small_disk / "run"
    with pytest.raises(trainer.Interrupted):
        trainer.pretrain("iql", pointmaze_dataset, steps=60, eval_every=20, eval_episodes=1, out=run, device="cpu",
                         overrides=TINY, progress=ctrl_c_at(10))
    filler = fill(small_disk, leave=48_000)
    result = CliRunner().invoke(cli, ["pretrain", "--resume", str(run)])
    assert result.exit_code == 1, result.output
    one_line(result.output, "No space left on device")
    assert not list(small_disk.rglob("*.tmp"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 10
    filler.unlink()
    assert CliRunner().invoke(cli, ["pretrain", "--resume", str(run)]).exit_code == 0

    fresh = small_disk / "fresh"
    filler = fill(small_disk, leave=48_000)
    args = ["pretrain", "iql", pointmaze_dataset, "--steps", "20", "--eval-episodes", "1", "--out", str(fresh),
            *as_sets(TINY)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and not list(small_disk.rglob("*.tmp"))
    one_line(result.output, "free some space there")
    filler.unlink()
    again = CliRunner().invoke(cli, args)
    if (fresh / "config.json").exists():
        assert again.exit_code == 2 and "start it over with --resume" in again.output
        again = CliRunner().invoke(cli, ["pretrain", "--resume", str(fresh)])
    assert again.exit_code == 0, again.output


def test_a_read_only_output_is_one_line_exit_1(small_disk, pointmaze_dataset, tiny_run):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        for args in (["pretrain", "iql", pointmaze_dataset, "--out", str(small_disk / "run")],
                     ["finetune", str(tiny_run / "checkpoints" / "final.pt"), "--out", str(small_disk / "ft")],
                     ["export", str(tiny_run / "checkpoints" / "final.pt"), "-o", str(small_disk / "policy.zip")]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 1, result.output
            one_line(result.output, os.strerror(errno.EROFS))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=False)


# --- (d) bad inputs ---------------------------------------------------------------------------------------

BIG = str(10**23)
BAD_INPUTS = [
    # pretrain
    (["pretrain", "iqll", "DATASET"], 2, "Did you mean: iql"),
    (["pretrain", "iql", "antmaze-umazee-v2"], 2, "antmaze-umaze-v2"),
    (["pretrain"], 2, "ALGO and DATASET are required"),
    (["pretrain", "iql", "DATASET", "--seed", "-1"], 2, "'--seed': -1 is not in the range 0<=x<=4294967295"),
    (["pretrain", "iql", "DATASET", "--seed", BIG], 2, f"'--seed': {BIG} is not in the range"),
    (["pretrain", "iql", "DATASET", "--steps", "0"], 2, "'--steps': 0 is not in the range x>=1"),
    (["pretrain", "iql", "DATASET", "--batch-size", "100000000"], 2, "a batch of 100,000,000 needs at least"),
    (["pretrain", "iql", "DATASET", "--set", "batch_size=100000000"], 2, "a batch of 100,000,000 needs at least"),
    (["pretrain", "iql", "DATASET", "--set", "hidden_dims=[256,abc]"], 2,
     "--set hidden_dims=[256,abc]: expected a comma-separated list of int"),
    (["pretrain", "iql", "DATASET", "--set", "critic_lr=inf"], 2, "critic_lr must be a finite number, got inf"),
    (["pretrain", "iql", "DATASET", "--set", "discount=nan"], 2, "discount must be a finite number, got nan"),
    (["pretrain", "iql", "DATASET", "--set", "log_std_min=5"], 2, "log_std_min must be below log_std_max"),
    (["pretrain", "iql", "DATASET", "--set", "batch_size=inf"], 2, "batch_size=inf: expected a value of type int"),
    (["pretrain", "iql", "DATASET", "--set", "expectile=high"], 2, "expected a value of type float"),
    (["pretrain", "iql", "DATASET", "--set", "expectle=0.9"], 2, "Did you mean: expectile"),
    (["pretrain", "iql", "DATASET", "--set", "expectile"], 2, "--set expects key=value"),
    (["pretrain", "spot", "DATASET", "--set", "vae_steps=-1"], 2, "vae_steps must be at least 0, got -1"),
    (["pretrain", "iql", "DATASET", "--device", "cpu:abc"], 2, "unknown device 'cpu:abc'"),
    (["pretrain", "iql", "DATASET", "--device", "cuda:99"], 2, "--device cuda:99 was asked for"),
    (["pretrain", "iql", "DATASET", "--matmul-precision", "low"], 2, "'highest', 'high', 'medium'"),
    (["pretrain", "iql", "DATASET", "--compile", "yes"], 2, "'auto', 'on', 'off'"),
    (["pretrain", "iql", "DATASET", "--checkpoint-every-minutes", "0"], 2, "'--checkpoint-every-minutes'"),
    (["pretrain", "iql", "DATASET", "--protocol", "paper"], 2, "'--protocol'"),
    (["pretrain", "iql", "DATASET", "--checkpoint-every-minutes", "nan"], 2, "must be positive, got nan"),
    (["pretrain", "iql", "DATASET", "--config", "missing.yaml"], 2, "config file missing.yaml does not exist"),
    (["pretrain", "iql", "DATASET", "--logger", "nope"], 2, "'--logger'"),
    (["pretrain", "iql", "DATASET", "--out", "/proc/offtune-run"], 1, "/proc/offtune-run"),
    (["pretrain", "--resume", "nowhere"], 2, "nowhere holds no run to resume"),
    (["pretrain", "--resume", "RUN", "--steps", "5"], 2, "leave out --steps"),
    # finetune
    (["finetune"], 2, "CHECKPOINT is required"),
    (["finetune", "CKPT", "--seed", "-1"], 2, "'--seed': -1 is not in the range"),
    (["finetune", "CKPT", "--seed", BIG], 2, "is not in the range 0<=x<=4294967295"),
    (["finetune", "CKPT", "--steps", str(10**12)], 2, "an online buffer of 1,000,000,000,000 transitions needs"),
    (["finetune", "CKPT", "--buffer-size", str(10**12)], 2, "needs at least"),
    (["finetune", "CKPT", "--num-envs", "100000"], 2, "'--num-envs': 100000 is not in the range 1<=x<=1024"),
    (["finetune", "CKPT", "--online-ratio", "nan"], 2, "must be between 0 and 1"),
    (["finetune", "CKPT", "--utd", "0"], 2, "'--utd': 0 is not in the range"),
    (["finetune", "CKPT", "--set", "actor_lr=-inf"], 2, "actor_lr must be a finite number"),
    (["finetune", "CKPT", "--device", "cpu:abc"], 2, "unknown device 'cpu:abc'"),
    (["finetune", "CKPT", "--compile", "always"], 2, "'auto', 'on', 'off'"),
    (["finetune", "missing.pt"], 2, "checkpoint missing.pt does not exist"),
    (["finetune", "TEXT"], 2, "not a file written by torch.save"),
    (["finetune", "CKPT", "--out", "/proc/offtune-ft"], 1, "/proc/offtune-ft"),
    (["finetune", "--resume", "RUN"], 2, "holds a pretraining run; resume it with `offtune pretrain --resume`"),
    (["finetune", "--resume", "nowhere"], 2, "holds no run to resume"),
    (["finetune", "CKPT", "--record-dataset", "DATASET"], 2, "already exists locally; choose another --record-dataset"),
    (["finetune", "CKPT", "--record-dataset", "no/such id"], 2, "'no/such id' is not a valid Minari dataset id"),
    (["finetune", "CKPT", "--data", "nosuch/logged/data-v0"], 2, "dataset nosuch/logged/data-v0 is not in"),
    (["finetune", "CKPT", "--data", "DATASET", "--utd", "2"], 2, "without a live env; leave out --utd"),
    (["finetune", "--resume", "RUN", "--data", "DATASET"], 2, "leave out --data"),
    (["finetune", "CKPT", "--video-every", "0"], 2, "'--video-every': 0 is not in the range x>=1"),
    (["finetune", "CKPT", "--video-max-steps", "5"], 2, "--video-max-steps goes with --video-every"),
    # evaluate
    (["evaluate", "CKPT", "--device", "cpu:abc"], 2, "unknown device 'cpu:abc'"),
    (["evaluate", "CKPT", "--device", "cuda:99"], 2, "--device cuda:99 was asked for"),
    (["evaluate", "missing.pt"], 2, "does not exist"),
    (["evaluate", "EMPTY"], 2, "is a directory without checkpoints/final.pt"),
    # export
    (["export", "CKPT"], 2, "give -o/--out FILE.zip, --rl-zoo DIR, or both"),
    (["export", "CKPT", "-o", "/proc/offtune.zip"], 1, "/proc/"),
    (["export", "CKPT", "--rl-zoo", "/proc/offtune-zoo"], 1, "/proc/offtune-zoo"),
    (["export", "CKPT", "--seed", "-1", "-o", "x.zip"], 2, "'--seed': -1 is not in the range"),
    (["export", "CKPT", "--format", "nope", "-o", "x.zip"], 2, "'--format'"),
    # report, plot, dataset, sweep
    (["report", "nowhere"], 2, "does not exist"),
    (["plot", "RUN", "-o", "/proc/offtune.png"], 1, "/proc/offtune.png"),
    (["dataset", "info", "nosuch-v0"], 2, "unknown dataset 'nosuch-v0'"),
    (["sweep", "--algos", "iql", "--datasets", "DATASET", "--seeds", "0"], 2, "--out is required"),
    # demo: every option is checked before it collects anything
    (["demo", "--algo", "foo"], 2, "unknown algorithm 'foo'"),
    (["demo", "--pretrain-steps", "0"], 2, "'--pretrain-steps': 0 is not in the range"),
    (["demo", "--finetune-steps", "-1"], 2, "'--finetune-steps': -1 is not in the range"),
    (["demo", "--seed", "-1"], 2, "'--seed': -1 is not in the range"),
    (["demo", "--device", "cpu:abc"], 2, "unknown device 'cpu:abc'"),
]


@pytest.mark.parametrize(("args", "code", "message"), BAD_INPUTS, ids=[" ".join(a) for a, _, _ in BAD_INPUTS])
def test_bad_input_exits_with_one_line_and_no_traceback(args, code, message, tiny_run, pointmaze_dataset, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "empty").mkdir()
    where = {"DATASET": pointmaze_dataset, "RUN": str(tiny_run), "CKPT": str(tiny_run / "checkpoints" / "final.pt"),
             "TEXT": str(tmp_path / "text.pt"), "EMPTY": str(tmp_path / "empty")}
    result = CliRunner().invoke(cli, [where.get(arg, arg) for arg in args])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    one_line(result.output, message)
    assert not list(tmp_path.rglob("*.tmp"))


def test_the_table_covers_every_command():
    commands = {args[0] for args, _, _ in BAD_INPUTS}
    assert commands == set(cli.commands) and len(BAD_INPUTS) >= 40

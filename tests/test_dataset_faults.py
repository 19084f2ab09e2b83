"""Faults in datasets and in the folder that holds them, as a user meets them: NaN and inf in the data,
actions outside their bounds, truncated and overwritten files, bad ``collect`` options, an unusable
``MINARI_DATASETS_PATH`` and a full disk. Each ends in one line, never a traceback: exit code 2 for what the
user can fix in the command, 1 for the machine's state (a full or read-only disk); nothing half-written stays.
"""

from __future__ import annotations

import errno
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result
from minari.data_collector import EpisodeBuffer

from offtune.buffers import checks, collect, storage
from offtune.buffers.datasets import load
from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError

_register()
TINY = ["--set", "hidden_dims=32,32", "--set", "batch_size=32", "--device", "cpu"]
POINTMAZE = "offtune/pointmaze/umaze-v0"


def run(*args) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_one_line(result, code: int, *phrases: str) -> None:
    """Exit ``code``, one error line holding every phrase (offtune's ``error:`` or click's ``Error:`` after its
    usage lines), no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith("error")]
    assert len(errors) == 1, result.output
    for phrase in phrases:
        assert phrase in errors[0], errors[0]


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private, still empty ``MINARI_DATASETS_PATH``."""
    path = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


# --- values and shapes -------------------------------------------------------------------------------------


def write_pendulum(dataset_id: str, edit=None, episodes: int = 3, steps: int = 10) -> None:
    """A small Pendulum-v1 dataset (actions in [-2, 2]) written by offtune's own writer after ``edit``."""
    rng = np.random.default_rng(0)
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=rng.uniform(-1, 1, (steps + 1, 3)).astype(np.float32),
            actions=rng.uniform(-1, 1, (steps, 1)).astype(np.float32),
            rewards=rng.normal(size=steps),
            terminations=np.zeros(steps, bool),
            truncations=np.arange(steps) == steps - 1,
        )
        for i in range(episodes)
    ]
    if edit is not None:
        edit(buffers)
    collect.write_dataset(dataset_id, buffers, gym.make("Pendulum-v1"))


def setting(field: str, episode: int, index: tuple[int, ...], value: float):
    """An edit for :func:`write_pendulum`: one value of one episode's field."""

    def edit(buffers: list[EpisodeBuffer]) -> None:
        getattr(buffers[episode], field)[index] = value

    return edit


def refusal(name: str) -> str:
    """The one-line error loading ``name`` raises."""
    with pytest.raises(OfftuneError) as caught:
        load(name)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("field", "episode", "index", "value", "message"),
    [
        ("observations", 1, (4, 2), np.nan, "episode 1, step 4: the observation is nan at index 2"),
        ("observations", 2, (10, 0), np.inf, "episode 2, step 10: the observation is inf at index 0"),
        ("actions", 0, (3, 0), -np.inf, "episode 0, step 3: the action is -inf at index 0"),
        ("rewards", 2, (0,), np.nan, "episode 2, step 0: the reward is nan"),
        ("actions", 1, (7, 0), 2.5, "episode 1, step 7: the action is 2.5 at index 0, outside [-2, 2]"),
    ],
)
def test_bad_values_are_refused_by_episode_and_step(root, field, episode, index, value, message):
    write_pendulum("faults/pendulum/bad-v0", setting(field, episode, index, value))
    assert f"dataset faults/pendulum/bad-v0 cannot be trained on: {message}" in refusal("faults/pendulum/bad-v0")


def test_the_first_bad_step_in_dataset_order_is_named(root):
    def edit(buffers):
        buffers[2].observations[1, 0] = np.nan
        buffers[1].rewards[5] = np.inf
        buffers[0].observations[10, 1] = np.nan  # episode 0's last observation comes before both

    write_pendulum("faults/pendulum/two-v0", edit)
    assert "episode 0, step 10: the observation is nan at index 1" in refusal("faults/pendulum/two-v0")


def test_actions_within_the_tolerance_load(root):
    tolerance = checks.ACTION_TOLERANCE * 4.0  # Pendulum's bounds are [-2, 2]
    write_pendulum("faults/pendulum/edge-v0", setting("actions", 0, (0, 0), 2 + tolerance / 2))
    assert load("faults/pendulum/edge-v0").actions[0, 0] == np.float32(2 + tolerance / 2)
    write_pendulum("faults/pendulum/over-v0", setting("actions", 0, (0, 0), 2 + tolerance * 2))
    assert "episode 0, step 0: the action is 2.008" in refusal("faults/pendulum/over-v0")


def test_episode_shapes_are_checked(root):
    def drop_last_observation(buffers):
        buffers[1] = EpisodeBuffer(**{**buffers[1].__dict__, "observations": buffers[1].observations[:-1]})

    write_pendulum("faults/pendulum/short-v0", drop_last_observation)
    assert "episode 1: 10 observations for 10 actions (Minari keeps one more)" in refusal("faults/pendulum/short-v0")


def test_info_refuses_bad_values_in_one_line(root):
    write_pendulum("faults/pendulum/nan-v0", setting("actions", 1, (2, 0), np.nan))
    assert_one_line(run("dataset", "info", "faults/pendulum/nan-v0"), 2, "episode 1, step 2: the action is nan")


# --- damaged files, through every command that loads -------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_setup(tmp_path_factory: pytest.TempPathFactory):
    """A private folder holding offtune/pointmaze/umaze-v0 (600 steps), an IQL checkpoint pretrained on it,
    and the dataset's pristine files to restore after each test damages them."""
    folder = tmp_path_factory.mktemp("damaged")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(folder / "minari"))
        collect.collect_pointmaze("umaze", steps=600, seed=0)
        result = run("pretrain", "iql", "pointmaze-umaze", "--steps", 4, "--eval-episodes", 1, "--out",
                     folder / "run", *TINY)
        assert result.exit_code == 0, result.output
        data = folder / "minari" / POINTMAZE / "data"
        pristine = {path: path.read_bytes() for path in data.iterdir()}
        yield data, folder / "run" / "checkpoints" / "final.pt", pristine


@pytest.fixture
def damaged(damaged_setup):
    data, checkpoint, pristine = damaged_setup
    yield data, checkpoint
    for path, content in pristine.items():
        path.write_bytes(content)


def truncate(data: Path) -> str:
    path = data / "main_data.hdf5"
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)
    return "main_data.hdf5 cannot be used (truncated file"


def overwrite_structure(data: Path) -> str:
    """Random bytes over the h5py bookkeeping (a symbol-table node) nearest the middle of the file."""
    path = data / "main_data.hdf5"
    content = bytearray(path.read_bytes())
    spots = [spot.start() for spot in re.finditer(rb"SNOD|TREE|HEAP", content)]
    start = min(spots, key=lambda spot: abs(spot - len(content) // 2))
    content[start : start + 256] = random.Random(0).randbytes(256)
    path.write_bytes(content)
    return "main_data.hdf5 cannot be used ("


def overwrite_data(data: Path) -> str:
    """Random bytes over the observations of episode 3: h5py reads them without complaint."""
    path = data / "main_data.hdf5"
    with h5py.File(path, "r") as file:
        chunk = file["episode_3/observations/observation"].id.get_chunk_info(0)  # Minari writes one chunk
        offset, size = chunk.byte_offset, chunk.size
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(random.Random(1).randbytes(size))
    return "main_data.hdf5 cannot be used (its data differ from the checksum offtune recorded"


def cut_metadata(data: Path) -> str:
    path = data / "metadata.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "metadata.json cannot be used ("


@pytest.mark.parametrize("damage", [truncate, overwrite_structure, overwrite_data, cut_metadata])
@pytest.mark.parametrize("command", ["info", "pretrain", "finetune"])
def test_damaged_files_are_one_line_in_every_command(damaged, damage, command, tmp_path):
    data, checkpoint = damaged
    expected = damage(data)
    args = {
        "info": ("dataset", "info", "pointmaze-umaze"),
        "pretrain": ("pretrain", "iql", "pointmaze-umaze", "--steps", 2, "--out", tmp_path / "run", *TINY),
        "finetune": ("finetune", checkpoint, "--steps", 2, "--out", tmp_path / "ft", "--device", "cpu"),
    }[command]
    how = f"Delete {data.parent} and get it again with `offtune dataset collect pointmaze-umaze`."
    assert_one_line(run(*args), 2, f"dataset {POINTMAZE} is damaged", expected, how)


def test_random_overwrites_never_reach_training_unnoticed(damaged):
    """Bytes overwritten anywhere: the load fails with OfftuneError, or gives exactly the pristine data."""
    data, _ = damaged
    path = data / "main_data.hdf5"
    pristine, reference = path.read_bytes(), load(POINTMAZE)
    rng = random.Random(2)
    refused = 0
    for _ in range(30):
        content = bytearray(pristine)
        start = rng.randrange(len(content) - 64)
        content[start : start + 64] = rng.randbytes(64)
        path.write_bytes(content)
        try:
            loaded = load(POINTMAZE)
        except OfftuneError:
            refused += 1
            continue
        for name in ("observations", "actions", "rewards", "next_observations", "terminals", "episode_ends"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
    assert refused > 0


# --- collect options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--noise", "nan"), "'--noise': nan is not a finite number >= 0"),
        (("--noise", "inf"), "'--noise': inf is not a finite number >= 0"),
        (("--noise", "-0.5"), "'--noise': -0.5 is not a finite number >= 0"),
        (("--seed", "-1"), "'--seed': -1 is not in the range"),
        (("--steps", "0"), "'--steps': 0 is not in the range x>=1"),
        (("--steps", str(10**13)), "collect fewer --steps"),
    ],
)
def test_collect_refuses_bad_numbers_before_writing(root, options, message):
    assert_one_line(run("dataset", "collect", "pointmaze-umaze", *options), 2, message)
    assert not (root / POINTMAZE).exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"noise": float("nan")}, "--noise is a standard deviation: a finite number, 0 or more, not nan"),
        ({"noise": -1.0}, "not -1.0"),
        ({"seed": -1}, "--seed must be 0 or more"),
        ({"steps": 0}, "--steps must be at least 1"),
    ],
)
def test_the_collectors_check_their_numbers_too(root, settings, message):
    with pytest.raises(OfftuneError, match=re.escape(message)):
        collect.collect_pointmaze("umaze", **{"steps": 10, **settings})
    with pytest.raises(OfftuneError, match=re.escape(message)):
        collect.collect_policy("Pendulum-v1", **{"steps": 10, **settings})
    assert not root.exists() or not any(root.rglob("*-v0"))


def test_collect_random_takes_no_noise(root):
    result = run("dataset", "collect", "--env", "Pendulum-v1", "--random", "--noise", "0.2", "--steps", 10)
    assert_one_line(result, 2, "--random actions take no noise")


# --- where datasets live -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("list",), ("info", "pointmaze-umaze"), ("download", "hopper-medium-v2"), ("collect", "pointmaze-umaze")],
)
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_a_file_as_minari_datasets_path_is_one_line(monkeypatch, tmp_path, args, where):
    file = tmp_path / "datasets"
    file.write_text("not a folder")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(file if where == "file" else file / "inside"))
    assert_one_line(run("dataset", *args, *(["--steps", 10] if args[0] == "collect" else [])), 2,
                    "MINARI_DATASETS_PATH")


def test_a_failed_write_leaves_the_folder_as_it_was(root):
    """A write that fails halfway (here: a full disk, raised by hand) removes what it created and gives the
    replaced dataset back."""
    collect.collect_policy("Pendulum-v1", steps=20, dataset_id="faults/pendulum/keep-v0")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for dataset_id, replace in (("faults/other/new-v0", False), ("faults/pendulum/keep-v0", True)):
        with pytest.raises(OSError) as caught, storage.writing_dataset(dataset_id, replace=replace) as path:
            (path / "data").mkdir(parents=True, exist_ok=True)
            (path / "data" / "main_data.hdf5").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        assert caught.value.errno == errno.ENOSPC and "nothing of it was kept" in caught.value.strerror
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert len(load("faults/pendulum/keep-v0")) == 20


def test_missing_datasets_suggest_only_what_can_get_them(root):
    for name in ("pointmaze-umaze", POINTMAZE):
        message = refusal(name)
        assert "Get it with `offtune dataset collect pointmaze-umaze`." in message and "download" not in message
    own = refusal("offtune/hopper/random-v0")
    assert "download" not in own and "no remote offtune knows has it" in own
    assert "offtune dataset collect --env ENV_ID --policy model.zip --id offtune/hopper/random-v0" in own
    assert "offtune dataset download walker2d-expert-v2" in refusal("walker2d-expert-v2")
    assert_one_line(run("dataset", "download", "offtune/hopper/random-v0"), 2, "no remote has it")


# --- a read-only and a full disk, each mounted in a private mount namespace ---------------------------------


def _mount_namespaces() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run([unshare, "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    sys.platform != "linux" or not _mount_namespaces(),
    reason="needs `unshare -m` and mount rights (root, or a user namespace) to make a small file system",
)


def offtune_on_tmpfs(tmp_path: Path, mount_options: str, *args: str) -> tuple[int, list[str], list[str]]:
    """Run ``offtune ARGS`` with MINARI_DATASETS_PATH on a fresh tmpfs (in its own mount namespace, so
    nothing needs unmounting); return the exit code, the stderr lines and the files left on the tmpfs."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    command = (
        f"mount -t tmpfs -o {mount_options} tmpfs {mount_point} && "
        f'MINARI_DATASETS_PATH={mount_point} "{sys.executable}" -c "from offtune.cli.main import main; main()" '
        + " ".join(args)
        + f"; code=$?; find {mount_point} -mindepth 1 >&2; exit $code"
    )
    process = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    lines = process.stderr.splitlines()
    left = [line for line in lines if line.startswith(str(mount_point))]
    return process.returncode, [line for line in lines if line not in left], left


@needs_mounts
def test_a_read_only_datasets_folder(tmp_path):
    code, errors, _ = offtune_on_tmpfs(tmp_path, "ro,size=1m", "dataset", "collect", "pointmaze-umaze", "--steps", "50")
    assert code == 1 and len(errors) == 1, errors
    assert "Read-only file system: MINARI_DATASETS_PATH cannot take dataset offtune/pointmaze/umaze-v0" in errors[0]


@needs_mounts
def test_a_full_disk_while_collecting(tmp_path):
    code, errors, left = offtune_on_tmpfs(tmp_path, "size=300k", "dataset", "collect", "pointmaze-umaze",
                                          "--steps", "3000")
    assert code == 1 and len(errors) == 1, errors
    assert "not enough space for dataset offtune/pointmaze/umaze-v0: it needs about" in errors[0]
    assert left == []

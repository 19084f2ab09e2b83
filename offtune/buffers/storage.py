"""The local Minari folder: where it is, which dataset ids it holds, their versions and sizes, and writing
into it so that a failure leaves it as it was.

Nothing here knows offtune's dataset names, so the registry can list local ids in its suggestions and
:mod:`offtune.buffers.sources` can build on both without an import cycle.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from offtune.errors import OfftuneError

HDF5_OBJECT_BYTES = 4096
"""Room one array of one episode takes in ``main_data.hdf5`` besides its data (object header, heap and
B-tree entries): about 3 KB measured on PointMaze and Hopper datasets, rounded up."""


def _root_setting() -> str:
    """The datasets folder as the user set it, for messages."""
    return os.environ.get("MINARI_DATASETS_PATH") or str(Path.home() / ".minari" / "datasets")


MACHINE_FAULTS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
"""File-system errors that are the machine's state (full, read-only, forbidden, failing), not a mistake in
what the user asked: they go up as an OSError naming the path, which the CLI prints in one line with exit
code 1. Other OSErrors become an :class:`OfftuneError` (exit code 2)."""


def _fault(error: OSError, context: str, path: str | Path) -> OSError:
    """``error`` again, with ``context`` after its reason and ``path`` as its file name."""
    return OSError(error.errno, f"{error.strerror or error}{context}", str(path))


def _root_error(error: OSError, doing: str) -> Exception:
    """The one line for a datasets folder that cannot be used at all."""
    setting = _root_setting()
    if error.errno in MACHINE_FAULTS:
        return _fault(error, " (the datasets folder, MINARI_DATASETS_PATH)", setting)
    reason = (error.strerror or str(error)).lower()
    problem = "is a file" if Path(setting).is_file() else f"cannot be {doing} ({reason})"
    return OfftuneError(
        f"the datasets folder {setting} (MINARI_DATASETS_PATH) {problem}; "
        "set MINARI_DATASETS_PATH to a folder you can write to"
    )


def datasets_root() -> Path:
    """Where Minari keeps datasets (``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``).

    Minari creates the folder on first use; when that fails (the path is a file, or lies on a read-only
    disk) the error names the setting instead of surfacing as an OSError deep inside Minari.
    """
    from minari.storage import get_dataset_path

    try:
        return Path(get_dataset_path())
    except OSError as error:
        raise _root_error(error, "created") from error


def base_id(minari_id: str) -> str:
    """A Minari id without its ``-vN`` version: the part every version of a dataset shares."""
    return re.sub(r"-v\d+$", "", minari_id)


def id_version(minari_id: str) -> int:
    """The ``N`` of a Minari id's ``-vN``; -1 when it has none, so any versioned id sorts above it."""
    match = re.search(r"-v(\d+)$", minari_id)
    return int(match.group(1)) if match else -1


def valid_dataset_id(dataset_id: str) -> bool:
    """Whether Minari accepts ``dataset_id`` (``namespace/name-vN``; letters, digits, ``-`` and ``_``)."""
    from minari.dataset.minari_dataset import parse_dataset_id

    try:
        parse_dataset_id(dataset_id)
    except ValueError:
        return False
    return True


def local_ids() -> list[str]:
    """Ids of the Minari datasets under ``datasets_root()``.

    A stray folder whose name Minari cannot parse makes ``minari.list_local_datasets`` fail for every
    dataset; then the folders are listed directly and the malformed ones skipped. A dataset whose
    ``metadata.json`` cannot be read is not listed (Minari skips it); :mod:`offtune.buffers.sources`
    reports it as damaged when it is asked for.
    """
    import minari

    root = datasets_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return list(minari.list_local_datasets())
        except ValueError:
            found = (str(p.parent.parent.relative_to(root)) for p in root.glob("**/data/metadata.json"))
            return sorted(i for i in found if valid_dataset_id(i))
        except OSError as error:
            raise _root_error(error, "read") from error


def human_size(num_bytes: float) -> str:
    """``512 B``, ``1.5 KB``, ``2.3 MB``, ``4.0 GB``: sizes for people."""
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def local_size(minari_id: str) -> int:
    """Bytes on disk of a local dataset."""
    path = datasets_root() / minari_id
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def local_version(minari_id: str, available: Sequence[str] | None = None) -> str | None:
    """``minari_id`` if it is local, else the newest local version of the same dataset, else None."""
    available = local_ids() if available is None else available
    if minari_id in available:
        return minari_id
    same = [other for other in available if base_id(other) == base_id(minari_id)]
    return max(same, key=id_version) if same else None


# --- writing ---------------------------------------------------------------------------------------------


def _arrays(value: Any) -> Iterator[np.ndarray]:
    """The arrays of a (nested dict of) array(s); nothing for None."""
    if isinstance(value, dict):
        for part in value.values():
            yield from _arrays(part)
    elif value is not None:
        yield np.asarray(value)


def hdf5_bytes(episodes: Iterable[Any]) -> int:
    """Room Minari's ``main_data.hdf5`` needs for these ``EpisodeBuffer``s: their data plus a fixed cost per
    array per episode (:data:`HDF5_OBJECT_BYTES`), which dominates for short episodes."""
    total = 0
    for episode in episodes:
        for field in ("observations", "actions", "rewards", "terminations", "truncations", "infos"):
            for array in _arrays(getattr(episode, field)):
                total += array.nbytes + HDF5_OBJECT_BYTES
    return total


def _write_error(what: str, error: OSError, context: str) -> Exception:
    """One line for a failed write into the datasets folder: a machine fault, else a folder not written to."""
    root = _root_setting()
    if error.errno in MACHINE_FAULTS:
        return _fault(error, context, root)
    reason = (error.strerror or str(error)).lower()
    return OfftuneError(
        f"cannot write {what} into {root} ({reason}); set MINARI_DATASETS_PATH to a folder you can write to"
    )


def check_room(what: str, needed_bytes: int) -> Path:
    """The datasets folder, once it is known to be writable and to have ``needed_bytes`` free.

    Checked before writing because h5py does not report a full disk as an exception: the failed writes
    surface while its objects are freed, and the process can crash (seen: a segfault) after leaving a
    half-written ``main_data.hdf5``.
    """
    root = datasets_root()
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".offtune-probe-", dir=root))
    except OSError as error:
        raise _write_error(what, error, f": MINARI_DATASETS_PATH cannot take {what}") from error
    free = shutil.disk_usage(root).free
    if free < needed_bytes:
        raise OSError(
            errno.ENOSPC,
            f"not enough space for {what}: it needs about {human_size(needed_bytes)}, {human_size(free)} are free",
            str(root),
        )
    return root


@contextmanager
def writing_dataset(dataset_id: str, needed_bytes: int = 0, replace: bool = False) -> Iterator[Path]:
    """Write a dataset into ``datasets_root() / dataset_id`` so that a failure leaves the folder as it was.

    Checks room first (:func:`check_room`). On any failure, Ctrl-C included, the folders the write created
    are removed (Minari creates namespace folders as it goes) and a file-system error says what was being
    written. With ``replace``, the dataset already there is moved aside, not deleted, and comes back if the
    write fails.
    """
    what = f"dataset {dataset_id}"
    root = check_room(what, needed_bytes)
    path = root / dataset_id
    previous = None
    if replace and path.exists():
        previous = root / f".offtune-replaced-{uuid.uuid4().hex}"
        path.rename(previous)
    created = next((p for p in reversed([path, *path.parents]) if not p.exists()), None)
    try:
        yield path
    except BaseException as error:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if previous is not None:
            previous.rename(path)
        if isinstance(error, OSError) and error.errno is not None:
            raise _write_error(what, error, f" while writing {what}; nothing of it was kept") from error
        raise
    if previous is not None:
        shutil.rmtree(previous)

"""Where a dataset's data come from: the local folder first, then Minari's remote or local parts.

``open_dataset`` is the one way in: a local copy (the newest version, unless the name was an exact Minari
id), else a dataset joined from local parts (D4RL's medium-expert = medium + expert), else a download when
allowed. Offline and missing, it raises one error that says how to get the data; a local copy whose files
cannot be read (a truncated or overwritten ``main_data.hdf5``, a broken ``metadata.json``) raises one that
names the file and says how to replace it, and so does ``read_episodes`` for damage found while reading.
"""

from __future__ import annotations

import errno
import importlib.util
import re
from collections.abc import Iterator
from typing import Any

from offtune.buffers.registry import LOCAL_NAMESPACE, REGISTRY, RegistryEntry, resolve
from offtune.buffers.storage import (
    base_id,
    check_room,
    datasets_root,
    id_version,
    local_ids,
    local_size,
    local_version,
    writing_dataset,
)
from offtune.errors import OfftuneError, suggest

UNREADABLE = (OSError, RuntimeError, KeyError, ValueError, AssertionError, TypeError)
"""What Minari and h5py raise for files they cannot parse: h5py's OSError ("truncated file"), RuntimeError
and KeyError (a damaged heap or B-tree), json's ValueError, Minari's asserts on what it finds."""


def open_dataset(entry: RegistryEntry, download_missing: bool = False) -> Any:
    """The ``MinariDataset`` for an entry: local first, then (if allowed) downloaded or combined."""
    import minari

    if entry.minari_id is None:
        raise _unavailable(entry)
    if entry.exact:
        found = entry.minari_id if entry.minari_id in local_ids() else None
    else:
        found = local_version(entry.minari_id)
    if found is None and (datasets_root() / entry.minari_id / "data").is_dir():
        found = entry.minari_id  # on disk but not listed by Minari: opening it says what is wrong
    if found is None and entry.parts:
        try:
            found = combine(entry)
        except OfftuneError:
            if not download_missing:
                raise
    if found is None:
        if not download_missing:
            raise OfftuneError(_how_to_get(entry, entry.minari_id))
        found = download(entry.minari_id if entry.exact else entry.name)
    data = datasets_root() / found / "data"
    try:
        return minari.load_dataset(found)
    except UNREADABLE as error:
        damaged_file = "main_data.hdf5" if not (data / "main_data.hdf5").is_file() else "metadata.json"
        raise damaged(entry, found, damaged_file, _reason(error)) from error


def read_episodes(entry: RegistryEntry, dataset: Any) -> Iterator[Any]:
    """The dataset's episodes in order, as Minari reads them; a ``main_data.hdf5`` h5py cannot read is
    reported by :func:`damaged`, never as h5py's traceback."""
    episodes = dataset.iterate_episodes()
    while True:
        try:
            episode = next(episodes)
        except StopIteration:
            return
        except UNREADABLE as error:
            if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EPERM):
                raise OfftuneError(f"cannot read dataset {dataset.id}: {error.strerror}") from error
            raise damaged(entry, dataset.id, "main_data.hdf5", _reason(error)) from error
        yield episode


def _reason(error: Exception) -> str:
    """A few words from what h5py, json or Minari said: h5py's "Unable to open file (truncated file: ...)"
    becomes what is inside the parentheses."""
    text = (str(error).splitlines() or [type(error).__name__])[0].strip("'\"")
    inner = re.fullmatch(r"(Unable to|Can't) [^(]*\((.*)\)", text)
    return (inner.group(2) if inner else text)[:120]


def damaged(entry: RegistryEntry, minari_id: str, file_name: str, reason: str) -> OfftuneError:
    """One line for a local dataset whose file is damaged: which file, why, and how to replace it."""
    folder = datasets_root() / minari_id
    path = folder / "data" / file_name
    if not path.is_file():
        reason = "it is missing"
    ways = _ways(entry, minari_id)
    return OfftuneError(
        f"dataset {minari_id} is damaged: {path} cannot be used ({reason}). "
        f"Delete {folder} and get it again with " + ", or ".join(ways) + "."
    )


def download(name: str) -> str:
    """Download a dataset (every part, for a locally combined one); return the Minari id now local."""
    import minari

    entry = resolve(name)
    if entry.minari_id is None:
        raise _unavailable(entry)
    if entry.collect_maze:
        raise OfftuneError(
            f"{entry.name} is made locally, not downloaded: `offtune dataset collect {entry.short_name}`"
        )
    if entry.minari_id.split("/")[0] == LOCAL_NAMESPACE and not entry.parts:
        raise OfftuneError(
            f"{entry.minari_id} is written locally by offtune, never downloaded: no remote has it. "
            f"Write it with {_ways(entry, entry.minari_id)[0]}."
        )
    check_room(f"dataset {entry.name}", 0)
    if importlib.util.find_spec("huggingface_hub") is None:
        raise OfftuneError("downloading needs Minari's download extra: `pip install offtune[hf]`")
    remote = remote_ids()
    exact_target = entry.exact and not entry.parts
    for target in entry.parts or (entry.minari_id,):
        chosen = target
        if remote is not None:
            same = [other for other in remote if base_id(other) == base_id(target)]
            if not same or (exact_target and target not in same):
                raise OfftuneError(f"{target} is not on the Minari remote.{suggest(target, remote)}")
            chosen = target if target in same else max(same, key=id_version)
        try:
            with writing_dataset(chosen):
                minari.download_dataset(chosen)
        except OfftuneError:
            raise
        except Exception as error:  # network, hub and storage errors all mean the same to the user
            raise OfftuneError(f"downloading {chosen} failed: {error}") from error
    if entry.parts:
        return combine(entry)
    return entry.minari_id if entry.exact else local_version(entry.minari_id) or entry.minari_id


def remote_ids() -> list[str] | None:
    """What the installed Minari lists remotely, or None when that fails (offline, no hf extra)."""
    import minari

    try:
        return list(minari.list_remote_datasets())
    except Exception:  # any network or client failure just means "use the table"
        return None


def combine(entry: RegistryEntry) -> str:
    """Join the local parts into ``entry.minari_id`` (D4RL's medium-expert = medium + expert)."""
    import minari

    available = local_ids()
    parts = [local_version(part, available) for part in entry.parts]
    if any(part is None for part in parts):
        missing = [p for p, got in zip(entry.parts, parts, strict=True) if got is None]
        substitute = REGISTRY[entry.substitute]
        raise OfftuneError(
            f"{entry.name} is built locally from {' + '.join(entry.parts)}; missing from {datasets_root()}: "
            f"{', '.join(missing)}. Download the parts with `offtune dataset download {entry.name}`, "
            f"or use the nearest substitute {substitute.name} ({substitute.minari_id})."
        )
    with writing_dataset(entry.minari_id, sum(local_size(part) for part in parts)) as path:
        path.parent.mkdir(parents=True, exist_ok=True)
        minari.combine_datasets([minari.load_dataset(part) for part in parts], entry.minari_id)
    return entry.minari_id


def _unavailable(entry: RegistryEntry) -> OfftuneError:
    """The error for a D4RL name Minari has no port of, naming the nearest one it has."""
    substitute = REGISTRY[entry.substitute]
    env = entry.name.split("-")[0]
    return OfftuneError(
        f"{entry.name} has no Minari port (Minari publishes simple, medium and expert data for {env}). "
        f"Nearest substitute: {substitute.name} ({substitute.minari_id}); mujoco/{env}/simple-v0 has "
        f"lower-quality data."
    )


def _ways(entry: RegistryEntry, minari_id: str) -> list[str]:
    """Every way offtune knows to get ``minari_id``, as commands: collect what offtune makes, download only
    what a remote has (never an ``offtune/`` id), else write it from a policy."""
    if entry.collect_maze:
        other_id = minari_id != REGISTRY[entry.name].minari_id
        return [f"`offtune dataset collect {entry.short_name}" + (f" --id {minari_id}`" if other_id else "`")]
    if entry.parts:
        return [f"`offtune dataset download {entry.name}` (downloads its parts and joins them)"]
    own = f"`offtune dataset collect --env ENV_ID --policy model.zip --id {minari_id}` (or `--random`)"
    if entry.downloadable:
        name = minari_id if entry.exact else entry.name
        return [f"`offtune dataset download {name}` (needs `pip install offtune[hf]` and internet)", own]
    return [own]


def _how_to_get(entry: RegistryEntry, minari_id: str) -> str:
    """The message for a dataset that is not local: every way offtune knows to get it."""
    local_only = not (entry.downloadable or entry.parts or entry.collect_maze)
    remote = " (no remote offtune knows has it)" if local_only else ""
    ways = ", or ".join(_ways(entry, minari_id))
    return f"dataset {minari_id} is not in {datasets_root()}{remote}. Get it with {ways}."

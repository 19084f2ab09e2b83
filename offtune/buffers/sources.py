"""Where a dataset's data come from: the local folder first, then Minari's remote or local parts.

``open_dataset`` is the one way in: a local copy (the newest version, unless the name was an exact Minari
id), else a dataset joined from local parts (D4RL's medium-expert = medium + expert), else a download when
allowed. Offline and missing, it raises one error that says how to get the data.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from offtune.buffers.registry import REGISTRY, RegistryEntry, resolve
from offtune.buffers.storage import base_id, datasets_root, id_version, local_ids, local_version
from offtune.errors import OfftuneError, suggest


def open_dataset(entry: RegistryEntry, download_missing: bool = False) -> Any:
    """The ``MinariDataset`` for an entry: local first, then (if allowed) downloaded or combined."""
    import minari

    if entry.minari_id is None:
        raise _unavailable(entry)
    if entry.exact:
        found = entry.minari_id if entry.minari_id in local_ids() else None
    else:
        found = local_version(entry.minari_id)
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
    return minari.load_dataset(found)


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
            minari.download_dataset(chosen)
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
    (datasets_root() / entry.minari_id).parent.mkdir(parents=True, exist_ok=True)
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


def _how_to_get(entry: RegistryEntry, minari_id: str) -> str:
    """The message for a dataset that is not local: every way offtune knows to get it."""
    name = minari_id if entry.exact else entry.name
    ways = [f"`offtune dataset download {name}` (needs `pip install offtune[hf]` and internet)"]
    if entry.collect_maze:
        ways.insert(0, f"`offtune dataset collect {entry.short_name}" + (f" --id {minari_id}`" if entry.exact else "`"))
    else:
        ways.append(
            f"write your own with `offtune dataset collect --env ENV_ID --policy model.zip --id {minari_id}`"
        )
    return f"dataset {minari_id} is not in {datasets_root()}. Get it with " + ", or ".join(ways) + "."

"""The local Minari folder: where it is, which dataset ids it holds, their versions and sizes.

Nothing here knows offtune's dataset names, so the registry can list local ids in its suggestions and
:mod:`offtune.buffers.sources` can build on both without an import cycle.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path


def datasets_root() -> Path:
    """Where Minari keeps datasets (``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``)."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


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
    dataset; then the folders are listed directly and the malformed ones skipped.
    """
    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return list(minari.list_local_datasets())
        except ValueError:
            root = datasets_root()
            found = (str(p.parent.parent.relative_to(root)) for p in root.glob("**/data/metadata.json"))
            return sorted(i for i in found if valid_dataset_id(i))


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

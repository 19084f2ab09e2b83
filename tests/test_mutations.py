"""The mutation list of ``benchmarks/mutations.py`` still matches the code; the check itself takes minutes
(``python benchmarks/mutations.py``), this only keeps its list from going stale."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmarks_mutations", ROOT / "benchmarks" / "mutations.py")
mutations = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutations  # dataclasses look their module up there
_spec.loader.exec_module(mutations)


def test_every_mutation_matches_one_place_of_the_code_and_parses():
    assert mutations.check_list() == []


def test_apply_edits_exactly_one_line_of_a_copy(tmp_path: Path):
    mutation = next(m for m in mutations.MUTATIONS if m.name == "misa: HMC term +0.1 → -7.0")
    (tmp_path / Path(mutation.file).parent).mkdir(parents=True)
    shutil.copy(ROOT / mutation.file, tmp_path / mutation.file)
    mutations.apply(mutation, tmp_path)
    before = (ROOT / mutation.file).read_text().splitlines()
    after = (tmp_path / mutation.file).read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert len(changed) == 1 and "- 7.0 * log_pi_improved.mean()" in changed[0][1]
    with pytest.raises(ValueError, match="occurs 0 times"):
        mutations.apply(mutation, tmp_path)

"""Checks that a dataset is fit to train on, run by :func:`offtune.buffers.datasets.load` on every load.

A NaN or inf in the data, or an action outside the action space, does not fail anywhere by itself: it turns
the losses into NaN and the run goes on. So loading refuses such data with the dataset, the first bad
episode (Minari's episode id) and step, and what is wrong with it.

What is checked is what training sees: every observation of an episode (its ``n + 1``, flattened as
offtune uses them), its ``n`` actions and the rewards after any relabelling. Keys offtune does not use and
rewards it replaces cannot harm a run and are not checked. The shapes are checked per episode as it is
read (a few comparisons each), and so is the checksum of the datasets offtune wrote itself; the values
once for the whole dataset, one vectorised pass per array.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from offtune.errors import OfftuneError

CHECKSUM_KEY = "offtune_crc32"
"""The ``metadata.json`` key under which offtune records :func:`data_crc` of a dataset it writes. Bytes
overwritten inside ``main_data.hdf5`` often land in the data, where h5py notices nothing: of 150 random
64-byte overwrites of a small PointMaze dataset, h5py refused 24 and 17 changed the data offtune trains on,
which only this checksum caught (the other 109 touched infos or unused header space). Published datasets
carry no checksum and get the other checks only."""

ACTION_TOLERANCE = 1e-3
"""How far an action may lie outside its bounds, as a fraction of the bounds' width (0.002 for [-1, 1]):
far above float32 rounding and a rescaled action's round-off, far below anything a policy or controller
would do on purpose. The algorithms clip actions to the bounds, so this little does no harm."""


def _fail(dataset_id: str, episode_id: int, what: str, step: int | None = None) -> OfftuneError:
    where = f"episode {episode_id}" + ("" if step is None else f", step {step}")
    return OfftuneError(
        f"dataset {dataset_id} cannot be trained on: {where}: {what}. Fix the dataset or make it again"
    )


def _leaves(value: Any, space: Any, key: str = "") -> Iterator[tuple[str, np.ndarray, Any]]:
    """(key path, array, its space) for every array of a (nested dict) observation; the space may be None."""
    if isinstance(value, dict):
        spaces = getattr(space, "spaces", {})
        for name, part in value.items():
            yield from _leaves(part, spaces.get(name), f"{key}/{name}" if key else name)
    else:
        yield key, np.asarray(value), space


def check_episode(dataset_id: str, episode: Any, observation_space: Any, action_space: Any) -> None:
    """An episode as Minari stores it: ``n >= 1`` actions, rewards and flags, ``n + 1`` observations, each
    array shaped as its space says."""
    steps = len(episode.rewards)
    if steps == 0:
        raise _fail(dataset_id, episode.id, "it has no steps")
    for name in ("actions", "terminations", "truncations"):
        count = len(getattr(episode, name))
        if count != steps:
            raise _fail(dataset_id, episode.id, f"{count} {name} for {steps} rewards")
    actions = np.asarray(episode.actions)
    if actions.shape[1:] != action_space.shape:
        raise _fail(dataset_id, episode.id, f"actions of shape {actions.shape[1:]}, not {action_space.shape}")
    for key, array, space in _leaves(episode.observations, observation_space):
        label = f"observations[{key!r}]" if key else "observations"
        if len(array) != steps + 1:
            raise _fail(
                dataset_id, episode.id, f"{len(array)} {label} for {steps} actions (Minari keeps one more)"
            )
        shape = getattr(space, "shape", None)
        if shape is not None and array.shape[1:] != shape:
            raise _fail(dataset_id, episode.id, f"{label} of shape {array.shape[1:]}, not {shape}")


def data_crc(episode: Any, crc: int = 0) -> int:
    """CRC-32 of an episode's observations (by key), actions, rewards, terminations and truncations, continued
    from ``crc``: the same for the ``EpisodeBuffer`` offtune writes and the episode Minari reads back."""
    observations = sorted(_leaves(episode.observations, None), key=lambda leaf: leaf[0])
    for array in [leaf[1] for leaf in observations] + [
        episode.actions,
        episode.rewards,
        episode.terminations,
        episode.truncations,
    ]:
        crc = zlib.crc32(np.ascontiguousarray(array), crc)
    return crc


def _first_bad(bad: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first True in a 1-d or 2-d mask, or None."""
    rows = bad.reshape(len(bad), -1)
    hits = np.flatnonzero(rows.any(axis=1))
    return None if len(hits) == 0 else (int(hits[0]), int(np.argmax(rows[hits[0]])))


def _first_non_finite(values: np.ndarray) -> tuple[int, int] | None:
    """Where ``values`` first holds NaN or inf; one pass over the array when it holds none."""
    return None if np.isfinite(values).all() else _first_bad(~np.isfinite(values))


def check_values(
    dataset_id: str,
    arrays: dict[str, np.ndarray],
    episode_ids: np.ndarray,
    action_low: np.ndarray,
    action_high: np.ndarray,
) -> None:
    """Finite observations (all ``n + 1`` of each episode), actions and rewards, and actions within their
    bounds; raises for the dataset's first bad step.

    ``arrays`` are :class:`~offtune.buffers.datasets.OfflineData`'s: transition ``i`` is step ``t`` of its
    episode, and its ``next_observations`` row is that episode's observation ``t + 1``.
    """
    starts = np.concatenate([[0], np.flatnonzero(arrays["episode_ends"])[:-1] + 1])
    problems: list[tuple[int, int, str]] = []  # (transition, step offset, what is wrong)
    for name, key, offset in (
        ("observation", "observations", 0),
        ("observation", "next_observations", 1),
        ("action", "actions", 0),
        ("reward", "rewards", 0),
    ):
        values = arrays[key]
        hit = _first_non_finite(values)
        if hit is not None:
            where = f" at index {hit[1]}" if values.ndim > 1 else ""
            problems.append((hit[0], offset, f"the {name} is {values.reshape(len(values), -1)[hit]}{where}"))
    actions = arrays["actions"]
    width = action_high - action_low
    tolerance = ACTION_TOLERANCE * np.where(np.isfinite(width), width, 0.0)
    outside = (actions < action_low - tolerance) | (actions > action_high + tolerance)
    hit = _first_bad(outside) if outside.any() else None
    if hit is not None:
        row, column = hit
        bounds = f"[{action_low[column]:.6g}, {action_high[column]:.6g}] (tolerance {tolerance[column]:.2g})"
        problems.append((row, 0, f"the action is {actions[row, column]:.6g} at index {column}, outside {bounds}"))
    if problems:
        row, offset, what = min(problems, key=lambda problem: problem[:2])
        episode = int(np.searchsorted(starts, row, side="right")) - 1
        step = row - int(starts[episode]) + offset
        raise _fail(dataset_id, int(episode_ids[episode]), what, step)

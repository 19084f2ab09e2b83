"""Maze facts: the maps the published maze data use, goal radii, task modes and cell geometry.

A maze map is gymnasium-robotics' list of rows: ``1`` a wall, ``0`` free, ``"g"`` the goal cell and ``"r"``
the reset cell. ``live_task`` picks the maze env a dataset is evaluated in and, in D4RL task mode, the one
goal its rewards are relabelled to.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np

from offtune.buffers.gym_make import make_gym_env
from offtune.errors import OfftuneError

MazeMap = list[list[int | str]]

# The maze D4RL/antmaze/umaze-v1 was collected in: D4RL's start (r, bottom-left) and goal (g, top-left).
ANTMAZE_UMAZE_MAP: MazeMap = [
    [1, 1, 1, 1, 1],
    [1, "g", 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, "r", 0, 0, 1],
    [1, 1, 1, 1, 1],
]
# Minari's evaluation maps for D4RL/antmaze/*-v1 (generation scripts): one r and one g cell. The umaze one is
# the left-right mirror image of the maze the data was collected in (Minari #304).
ANTMAZE_EVAL_MAPS: dict[str, MazeMap] = {
    "umaze": [[1, 1, 1, 1, 1], [1, 0, 0, "r", 1], [1, 0, 1, 1, 1], [1, 0, 0, "g", 1], [1, 1, 1, 1, 1]],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, "r", 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, "g", 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
# PointMaze evaluation maps of the published datasets: a single fixed g, resets from every free cell.
POINTMAZE_EVAL_MAPS: dict[str, MazeMap] = {
    "umaze": [[1, 1, 1, 1, 1], [1, "g", 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, "g", 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, "g", 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
D4RL_SUCCESS_RADIUS = 0.5  # D4RL's antmaze relabelling and evaluation
MINARI_SUCCESS_RADIUS = 0.45  # gymnasium-robotics' info["success"] and sparse reward
MAZE_FAMILIES = ("antmaze", "pointmaze")
TASK_MODES = {"antmaze": ("d4rl", "goal"), "pointmaze": ("goal", "d4rl")}


def maze_cell(maze_map: Sequence[Sequence[int | str]], marker: str) -> tuple[int, int]:
    """(row, col) of the single cell marked ``marker`` (``"g"`` or ``"r"``)."""
    cells = [(r, c) for r, row in enumerate(maze_map) for c, cell in enumerate(row) if cell == marker]
    if len(cells) != 1:
        raise OfftuneError(f"the maze map has {len(cells)} {marker!r} cells; offtune needs exactly one")
    return cells[0]


def cell_xy(maze_map: Sequence[Sequence[int | str]], cell: tuple[int, int], scaling: float) -> np.ndarray:
    """Centre of a maze cell in simulator coordinates (gymnasium-robotics: row index grows toward -y)."""
    rows, cols = len(maze_map), len(maze_map[0])
    row, col = cell
    return np.array([(col + 0.5) * scaling - cols * scaling / 2, rows * scaling / 2 - (row + 0.5) * scaling])


def maze_scaling(spec: Any) -> float:
    """``maze_size_scaling`` of a maze EnvSpec (ant mazes 4, point mazes 1).

    gymnasium-robotics fixes it inside each maze class's constructor rather than in the spec's kwargs, so
    the only faithful way to read it is from a built env.
    """
    env = make_gym_env(spec)
    try:
        return float(env.unwrapped.maze.maze_size_scaling)
    finally:
        env.close()


def success_radius(family: str, relabelled: bool) -> float | None:
    """How close to the goal counts as reaching it: D4RL's radius for relabelled data, else the env's own."""
    if family not in MAZE_FAMILIES:
        return None
    return D4RL_SUCCESS_RADIUS if relabelled else MINARI_SUCCESS_RADIUS


def live_task(family: str, mode: str | None, env_spec: Any, eval_spec: Any) -> tuple[Any, list[float] | None]:
    """The EnvSpec of the live env and, in d4rl mode, the single goal every reward refers to.

    AntMaze umaze: Minari's evaluation map mirrors the maze the data came from (Minari #304), so the live
    env is the collection maze with D4RL's start and goal cells. Everything else uses the dataset's
    evaluation env, whose ``g`` cell is D4RL's goal.
    """
    if family not in MAZE_FAMILIES:
        return eval_spec, None
    if env_spec.kwargs.get("reward_type") == "dense" or eval_spec.kwargs.get("reward_type") == "dense":
        raise OfftuneError(
            "dense-reward maze datasets are not supported: offtune's maze tasks are sparse "
            "goal reaching; use the sparse dataset (e.g. D4RL/pointmaze/umaze-v2)"
        )
    if mode != "d4rl":
        return eval_spec, None
    live = eval_spec
    if family == "antmaze" and env_spec.id.startswith("AntMaze_UMaze"):
        live = copy.deepcopy(env_spec)
        live.kwargs = {**live.kwargs, "maze_map": ANTMAZE_UMAZE_MAP}
    maze_map = live.kwargs.get("maze_map")
    if maze_map is None:
        raise OfftuneError(f"{live.id} has no maze map with a goal cell; use task mode 'goal'")
    goal = cell_xy(maze_map, maze_cell(maze_map, "g"), maze_scaling(live))
    return live, [float(v) for v in goal]

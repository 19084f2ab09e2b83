"""The scripted expert of the published PointMaze datasets: a planner over maze cells and a PD controller.

``MazePlanner`` runs Q-iteration over the cells of a maze map to find, for every cell, the next cell toward
a goal; ``WaypointController`` steers the point mass through those cells with a PD law and adds Gaussian
noise, as the D4RL/pointmaze data were made. :mod:`offtune.buffers.collect` records what it does.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class MazePlanner:
    """Q-iteration over the maze's cells (4 moves, stay put when blocked, reward 1 for entering the goal).

    ``next_cells(goal)`` gives, for every cell, the neighbouring cell to head for; it is cached per goal
    cell because a maze has only a few dozen of them.
    """

    MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))

    def __init__(self, maze_map: list[list[int | str]], sweeps: int = 50, discount: float = 0.99) -> None:
        self.free = np.array([[cell != 1 for cell in row] for row in maze_map])
        self.rows, self.cols = self.free.shape
        self.sweeps, self.discount = sweeps, discount
        successor = np.empty((self.rows * self.cols, len(self.MOVES)), dtype=np.int64)
        for row in range(self.rows):
            for col in range(self.cols):
                for move, (d_row, d_col) in enumerate(self.MOVES):
                    r, c = row + d_row, col + d_col
                    inside = 0 <= r < self.rows and 0 <= c < self.cols and self.free[r, c]
                    successor[row * self.cols + col, move] = (
                        r * self.cols + c if inside else row * self.cols + col
                    )
        self.successor = successor
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def next_cells(self, goal: tuple[int, int]) -> np.ndarray:
        """Flat index of the next cell from every cell toward ``goal`` (row, col)."""
        if goal not in self._cache:
            reward = (self.successor == goal[0] * self.cols + goal[1]).astype(np.float64)
            q = np.zeros_like(reward)
            for _ in range(self.sweeps):  # Q(s, a) = r(s, a) + γ max_a' Q(s', a')
                q = reward + self.discount * q.max(axis=1)[self.successor]
            self._cache[goal] = self.successor[np.arange(len(q)), q.argmax(axis=1)]
        return self._cache[goal]


class WaypointController:
    """PD control toward the next planned cell: a = clip(10 (waypoint - x) - 1 v), plus Gaussian noise.

    Intermediate waypoints are cell centres shifted by up to ``jitter`` (so paths vary); the last one is the
    goal itself. A waypoint counts as reached within ``threshold``.
    """

    def __init__(
        self,
        maze: Any,
        rng: np.random.Generator,
        noise: float = 0.5,
        p_gain: float = 10.0,
        d_gain: float = -1.0,
        threshold: float = 0.1,
        jitter: float = 0.2,
    ) -> None:
        self.maze, self.rng, self.noise = maze, rng, noise
        self.planner = MazePlanner(maze.maze_map)
        self.p_gain, self.d_gain, self.threshold, self.jitter = p_gain, d_gain, threshold, jitter
        self.goal_xy: np.ndarray | None = None
        self.goal_cell = (0, 0)
        self.target_cell = (0, 0)
        self.target_xy = np.zeros(2)

    def _cell(self, xy: np.ndarray) -> tuple[int, int]:
        row, col = self.maze.cell_xy_to_rowcol(xy)
        return int(row), int(col)

    def _aim_at(self, cell: tuple[int, int]) -> None:
        self.target_cell = cell
        if cell == self.goal_cell:
            self.target_xy = self.goal_xy
        else:
            self.target_xy = (
                self.maze.cell_rowcol_to_xy(np.array(cell)) - self.rng.uniform(size=2) * self.jitter
            )

    def _advance(self) -> None:
        following = int(
            self.planner.next_cells(self.goal_cell)[
                self.target_cell[0] * self.planner.cols + self.target_cell[1]
            ]
        )
        self._aim_at(divmod(following, self.planner.cols))

    def waypoint(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The point to steer for: the next planned cell's (jittered) centre, or the goal once in its cell.

        A new ``desired_goal`` re-plans from the agent's cell; a waypoint within ``threshold`` hands on to
        the next. The AntMaze collector steers its ant with the same waypoints.
        """
        position, goal = observation["achieved_goal"], observation["desired_goal"]
        if self.goal_xy is None or np.linalg.norm(goal - self.goal_xy) > 1e-3:
            self.goal_xy, self.goal_cell = goal.copy(), self._cell(goal)
            self.target_cell = self._cell(position)
            if self.target_cell == self.goal_cell:
                self._aim_at(self.goal_cell)
            else:
                self._advance()
        if self.target_cell != self.goal_cell and np.linalg.norm(self.target_xy - position) <= self.threshold:
            self._advance()
        return self.target_xy

    def action(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The noiseless PD action (the expert the published datasets' reference scores use)."""
        target = self.waypoint(observation)
        position, velocity = observation["achieved_goal"], observation["observation"][2:]
        return np.clip(self.p_gain * (target - position) + self.d_gain * velocity, -1.0, 1.0)

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        action = self.action(observation) + self.noise * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

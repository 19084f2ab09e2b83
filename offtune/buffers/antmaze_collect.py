"""AntMaze datasets written the way D4RL/antmaze/*-v1 were: maze waypoints, a goal-reaching ant, action noise.

The published generator (minari-dataset-generation-scripts, ``scripts/antmaze``) plans a chain of maze cells
with Q-iteration, walks a goal-reaching SAC ant from waypoint to waypoint (a waypoint counts as reached within
0.45 m; intermediate ones are jittered by up to 0.2), adds Gaussian noise of 0.2 to every action, and records
``AntMaze_*-v4`` with ``continuing_task=True, reset_target=False`` for 1M steps: episodes end at the time
limit (700 steps in umaze, 1000 elsewhere) or at the reset forced every 200k steps, and each reset uses the
next seed. offtune does the same with its own ant (:mod:`offtune.buffers.ant_controller`) instead of the SAC
policy, which cannot be downloaded here; the planner is PointMaze's (:mod:`offtune.buffers.maze_expert`).

Everything else matches the published data: env id and kwargs (umaze: the maze with D4RL's goal top left
and start bottom left; diverse: the ``*_Diverse_GR`` maps; play: every free cell), the dict observation,
the infos (success, qpos, qvel, goal) and the evaluation env (the collection spec with a one-r/one-g map).
The published ``ref_min_score``/``ref_max_score`` (returns of random and noiseless runs on the evaluation
env) are not computed: offtune scores AntMaze by success rate.

``generator="d4rl"`` collects instead as D4RL's own ``generate_ant_maze_datasets.py`` did for the original
antmaze-*-v2 data the IQL and SPOT papers trained on (same env, observation, noise and evaluation env). Two
things differ from the Minari port, and both change what an offline learner sees:

- goals: D4RL's play data draw each episode's goal from a few hand-picked cells (the ``G`` cells of its
  ``maze_env.py`` maps) and its start from every other free cell; Minari's play data draw both from every free
  cell, so the ant also stands at the evaluation start. umaze keeps D4RL's one start and one goal; diverse
  draws both from every free cell (the D4RL wiki: random goals from random starts);
- the ant at its goal: D4RL's SAC ant was always shown a goal 10 m away in the goal's direction, so it never
  slowed down and kept circling its goal; Minari's ant stops there, and the ant standing at its goal is then
  about half of a medium dataset.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import minari
import numpy as np

from offtune.buffers.ant_controller import Gait, GoalReachingAnt
from offtune.buffers.collect import (
    PROGRESS_EVERY,
    EpisodeRecorder,
    antmaze_info,
    check_not_taken,
    check_settings,
    write_dataset,
)
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.maze_expert import WaypointController
from offtune.buffers.mazes import ANTMAZE_EVAL_MAPS, ANTMAZE_UMAZE_MAP, D4RL_SUCCESS_RADIUS, live_task
from offtune.buffers.storage import valid_dataset_id
from offtune.errors import OfftuneError

NOISE = 0.2  # D4RL's and Minari's action noise for AntMaze
WAYPOINT_RADIUS = 0.45
WAYPOINT_JITTER = 0.2
FORCED_RESET_EVERY = 200_000  # the published generator reset the env at each of its 200k-step checkpoints
METADATA_KEY = "offtune_antmaze"


@dataclass(frozen=True)
class AntMazeRecipe:
    """How one published AntMaze dataset was collected: env id, its maze map (None: the registered one)."""

    dataset: str
    env_id: str
    maze_map: list[list[int | str]] | None
    maze: str
    stop_at_goal: bool = True
    """Minari's ant stops at its goal; D4RL's circled it (``generator="d4rl"``)."""

    @property
    def minari_id(self) -> str:
        return f"offtune/antmaze/{self.dataset}-v0"

    @property
    def made_like(self) -> str:
        """The published dataset this recipe copies: Minari's port, or D4RL's original for the d4rl generator."""
        if self.dataset.endswith("-d4rl"):
            return f"D4RL's antmaze-{self.dataset.removesuffix('-d4rl')}-v2"
        return f"D4RL/antmaze/{self.dataset}-v1"


RECIPES = {
    recipe.dataset: recipe
    for recipe in (
        AntMazeRecipe("umaze", "AntMaze_UMaze-v4", ANTMAZE_UMAZE_MAP, "umaze"),
        AntMazeRecipe("umaze-diverse", "AntMaze_UMaze-v4", None, "umaze"),
        AntMazeRecipe("medium-play", "AntMaze_Medium-v4", None, "medium"),
        AntMazeRecipe("medium-diverse", "AntMaze_Medium_Diverse_GR-v4", None, "medium"),
        AntMazeRecipe("large-play", "AntMaze_Large-v4", None, "large"),
        AntMazeRecipe("large-diverse", "AntMaze_Large_Diverse_GR-v4", None, "large"),
    )
}
KINDS = ("play", "diverse")
GENERATORS = ("minari", "d4rl")
# The hand-picked goal cells (row, column) of D4RL's dataset maps (maze_env.py: BIG_MAZE, HARDEST_MAZE); the
# maze layouts are gymnasium-robotics' own, and the cells keep the evaluation maps' orientation.
D4RL_GOAL_CELLS = {
    "medium": ((2, 6), (5, 1), (6, 5)),
    "large": ((1, 6), (3, 5), (3, 10), (5, 2), (7, 4), (7, 6), (7, 9)),
}


def _d4rl_goal_map(maze: str) -> list[list[int | str]]:
    """The maze with D4RL's goal cells marked ``g`` and no ``r``: goals from those cells, starts from the rest."""
    maze_map = [[0 if cell in ("r", "g") else cell for cell in row] for row in ANTMAZE_EVAL_MAPS[maze]]
    for row, column in D4RL_GOAL_CELLS[maze]:
        maze_map[row][column] = "g"
    return maze_map


D4RL_RECIPES = {
    recipe.dataset: recipe
    for recipe in (
        AntMazeRecipe("umaze-d4rl", "AntMaze_UMaze-v4", ANTMAZE_UMAZE_MAP, "umaze", stop_at_goal=False),
        AntMazeRecipe("umaze-diverse-d4rl", "AntMaze_UMaze-v4", None, "umaze", stop_at_goal=False),
        AntMazeRecipe("medium-play-d4rl", "AntMaze_Medium-v4", _d4rl_goal_map("medium"), "medium", stop_at_goal=False),
        AntMazeRecipe("medium-diverse-d4rl", "AntMaze_Medium-v4", None, "medium", stop_at_goal=False),
        AntMazeRecipe("large-play-d4rl", "AntMaze_Large-v4", _d4rl_goal_map("large"), "large", stop_at_goal=False),
        AntMazeRecipe("large-diverse-d4rl", "AntMaze_Large-v4", None, "large", stop_at_goal=False),
    )
}


def recipe_for(name: str, kind: str | None = None, generator: str | None = None) -> AntMazeRecipe:
    """The recipe a collect name asks for: ``antmaze-umaze|medium|large`` plus ``kind`` (play or diverse) and
    ``generator`` (minari or d4rl), or a full name (``antmaze-medium-play``, ``antmaze-umaze-diverse-v2``,
    ``D4RL/antmaze/large-play-v1``, ``offtune/antmaze/umaze-v0``, ``antmaze-medium-play-d4rl``)."""
    stem = re.sub(r"-v\d+$", "", name.lower())
    for prefix in ("offtune/antmaze/", "d4rl/antmaze/", "offtune-", "antmaze-"):
        stem = stem.removeprefix(prefix)
    named_generator = "d4rl" if stem.endswith("-d4rl") else None
    stem = stem.removesuffix("-d4rl")
    if generator not in (None, *GENERATORS):
        raise OfftuneError(f"--generator is minari or d4rl, not {generator!r}")
    if named_generator and generator == "minari":
        raise OfftuneError(f"{name} is the D4RL generator's dataset; --generator minari contradicts it")
    generator = named_generator or generator or "minari"
    maze, _, named_kind = stem.partition("-")
    if maze not in ("umaze", "medium", "large") or named_kind not in ("", *KINDS):
        raise OfftuneError(
            f"offtune collects antmaze-umaze, antmaze-medium and antmaze-large (with --kind play|diverse), not {name!r}"
        )
    if named_kind and kind and named_kind != kind:
        raise OfftuneError(f"{name} is the {named_kind} dataset; --kind {kind} contradicts it")
    kind = named_kind or kind
    if maze == "umaze" and kind == "play":
        raise OfftuneError("antmaze-umaze has no play dataset: omit --kind (umaze) or pass --kind diverse")
    if maze != "umaze" and kind is None:
        kind = "play"
    dataset = maze if kind is None else f"{maze}-{kind}"
    return RECIPES[dataset] if generator == "minari" else D4RL_RECIPES[f"{dataset}-d4rl"]


def is_antmaze_name(name: str) -> bool:
    """Whether ``offtune dataset collect NAME`` means an AntMaze dataset (the rest is PointMaze's)."""
    lowered = name.lower()
    return lowered.startswith(("antmaze", "offtune/antmaze/", "offtune-antmaze", "d4rl/antmaze/"))


class AntMazeExpert:
    """Maze waypoints (the published planner and thresholds) walked by the goal-reaching ant, plus noise.

    Counts the intermediate waypoints it aimed at and reached (the goal itself is the episode's success),
    which ``offtune dataset info`` reports.
    """

    def __init__(
        self,
        maze: Any,
        rng: np.random.Generator,
        noise: float = NOISE,
        gait: Gait | None = None,
        stop_at_goal: bool = True,
    ) -> None:
        self.route = WaypointController(maze, rng, noise=0.0, threshold=WAYPOINT_RADIUS, jitter=WAYPOINT_JITTER)
        self.ant = GoalReachingAnt(gait)
        self.rng, self.noise, self.stop_at_goal = rng, noise, stop_at_goal
        self.waypoints_set = 0
        self.waypoints_reached = 0
        self._target: np.ndarray | None = None

    def reset(self) -> None:
        """A new episode: the ant was put back at a start, so the route starts over."""
        self.route.goal_xy = None
        self._target = None

    def action(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """The noiseless action: walk to the current waypoint (slowing down only at the goal itself, and only
        when ``stop_at_goal``; otherwise the ant walks through its goal and circles it)."""
        goal_before = self.route.goal_xy
        target = self.route.waypoint(observation)
        if target is not self._target:  # waypoint() hands out a new array whenever it moves on
            if goal_before is self.route.goal_xy and self._target is not None:
                self.waypoints_reached += 1  # same goal, new waypoint: the route moved on from a reached one
            self._target = target
            self.waypoints_set += self.route.target_cell != self.route.goal_cell
        final = self.stop_at_goal and self.route.target_cell == self.route.goal_cell
        return self.ant(observation, target, final)

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        action = self.action(observation) + self.noise * self.rng.standard_normal(8)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def _check(dataset_id: str, steps: int, seed: int, noise: float, force: bool) -> None:
    """Fail before collecting, in one line, on settings that would fail later or give a useless dataset."""
    check_settings(steps, seed, noise)
    if not valid_dataset_id(dataset_id):
        raise OfftuneError(
            f"'{dataset_id}' is not a valid Minari dataset id: use namespace/name-vN with letters, digits, - and _"
        )
    check_not_taken(dataset_id, force)


def collect_antmaze(
    recipe: AntMazeRecipe,
    steps: int,
    seed: int = 0,
    noise: float = NOISE,
    dataset_id: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
    gait: Gait | None = None,
) -> minari.MinariDataset:
    """Collect ``steps`` steps as the published ``recipe`` dataset was collected, and write them."""
    dataset_id = dataset_id or recipe.minari_id
    _check(dataset_id, steps, seed, noise, force)
    maze_kwargs = {} if recipe.maze_map is None else {"maze_map": recipe.maze_map}
    env = make_gym_env(recipe.env_id, continuing_task=True, reset_target=False, **maze_kwargs)
    eval_spec = copy.deepcopy(env.spec)
    eval_spec.kwargs = {**eval_spec.kwargs, "maze_map": ANTMAZE_EVAL_MAPS[recipe.maze]}
    expert = AntMazeExpert(env.unwrapped.maze, np.random.default_rng(seed), noise, gait, recipe.stop_at_goal)
    resets = 0
    observation, info = env.reset(seed=seed)
    recorder = EpisodeRecorder(observation, antmaze_info(observation, bool(info.get("success", False))))
    episodes = []
    for step in range(1, steps + 1):
        action = expert(observation)
        observation, reward, terminated, truncated, info = env.step(action)
        forced = step % FORCED_RESET_EVERY == 0
        recorder.add(
            action, observation, reward, terminated, truncated or forced, antmaze_info(observation, info["success"])
        )
        if progress is not None and step % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
        if (terminated or truncated or forced) and step < steps:
            episodes.append(recorder.to_buffer(len(episodes)))
            resets += 1
            observation, info = env.reset(seed=seed + resets)
            expert.reset()
            recorder = EpisodeRecorder(observation, antmaze_info(observation, bool(info.get("success", False))))
    episodes.append(recorder.to_buffer(len(episodes), truncate_end=True))
    circling = "" if recipe.stop_at_goal else " (circling its goal, as D4RL's ant did)"
    if progress is not None and steps % PROGRESS_EVERY:
        progress(steps % PROGRESS_EVERY)
    written = write_dataset(
        dataset_id,
        episodes,
        env,
        eval_spec,
        algorithm_name="QIteration waypoints + offtune CPG ant",
        description=(
            f"Made like {recipe.made_like}: Q-iteration waypoints walked by offtune's CPG goal-reaching ant"
            f"{circling}, Gaussian action noise sigma={noise}; {steps} steps, seed {seed}."
        ),
        force=force,
    )
    written.storage.update_metadata(
        {METADATA_KEY: {"waypoints_set": expert.waypoints_set, "waypoints_reached": expert.waypoints_reached}}
    )
    env.close()
    return written


def goal_counts(minari_id: str) -> dict[str, Any]:
    """Episodes that reach D4RL's goal (within 0.5) and their own commanded goal (Minari's reward), and, for
    data offtune collected, the waypoints its ant reached: what ``offtune dataset info`` adds for AntMaze."""
    dataset = minari.load_dataset(minari_id)
    from gymnasium.envs.registration import EnvSpec

    eval_json = dataset.storage.metadata.get("eval_env_spec")
    eval_spec = EnvSpec.from_json(eval_json) if eval_json else dataset.env_spec
    _, goal = live_task("antmaze", "d4rl", dataset.env_spec, eval_spec)
    d4rl = commanded = total = 0
    for episode in dataset.iterate_episodes():
        reach = np.linalg.norm(episode.observations["achieved_goal"][1:] - np.asarray(goal), axis=-1)
        d4rl += bool(np.any(reach <= D4RL_SUCCESS_RADIUS))
        commanded += bool(np.any(np.asarray(episode.rewards) > 0))
        total += 1
    counts: dict[str, Any] = {
        "episodes_reaching_d4rl_goal": f"{d4rl} of {total} ({100 * d4rl / total:.1f}%)",
        "episodes_reaching_own_goal": f"{commanded} of {total} ({100 * commanded / total:.1f}%)",
    }
    waypoints = dataset.storage.metadata.get(METADATA_KEY)
    if waypoints:
        reached, aimed = waypoints["waypoints_reached"], waypoints["waypoints_set"]
        counts["waypoints_reached"] = f"{reached} of {aimed} ({100 * reached / max(aimed, 1):.1f}%)"
    return counts

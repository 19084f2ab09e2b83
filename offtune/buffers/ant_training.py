"""Tuning the goal-reaching ant's gait with CMA-ES, and measuring how well it reaches goals.

Why CMA-ES on a gait rather than SAC on a network: Minari's GoalReachAnt took 30M SAC steps on 16 envs; a
2-core CPU steps the ant at about 2,000 steps/s, so an hour buys a few million steps, which is enough to
tune a ~40-number gait (:mod:`offtune.buffers.ant_controller`) but not to train a 4x256 network.

The search steps the ant's own MuJoCo model (gymnasium's ``ant.xml``, the one ``AntMaze_*-v4`` builds its
maze around, timestep 0.01 x 5 frames) directly, without the gymnasium wrappers: an open floor needs no
maze, and the bare simulator runs at about twice the env's speed. Every candidate of one generation walks
the same episode (start heading, four goals 2-4 m apart, each relative to where the ant stands when it is
set, and the Gaussian action noise of 0.2 that the AntMaze collector adds), so candidates are ranked on
equal terms. Fitness per goal: how much of the distance the ant removed
on average over 150 steps, plus 0.5 for coming within 0.45 m, minus twice the mean tilt of the torso (1 - the
z component of its up axis: a rocking, bouncing gait is the one that falls); a fall scores -1 for every
goal left.

The search walks the gait on a clock (:class:`~offtune.buffers.ant_controller.ClockedAnt`); once it has
spent its budget, the phase is read from the legs instead and ``phase_lead``, how far ahead of it the joint
targets are set, is picked from ``PHASE_LEADS`` by reach rate in the real env, then by speed. The shipped gait
was made this way. A search with the phase read from the legs throughout (this command on 2026-12-03, which
tuned ``phase_lead`` with the rest) made a gait that reaches its goals as well, but whose umaze data IQL
learned nothing from offline in 100,000 updates (0, where this one's gave 32; README, "Datasets").

Each generation's samples and episode come from random generators seeded by (seed, generation), and the
simulator is deterministic, so a resumed run equals an uninterrupted one. The checkpoint (CMA-ES state,
the best-validated point of the search so far) is rewritten after every generation.

The reach and corridor measures run the real ``AntMaze_*-v4`` env, so they also show that the gait
transfers from the bare simulator to the env the datasets use.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

from offtune.buffers.ant_controller import DIMENSION, PARAMETERS, ClockedAnt, Gait, GoalReachingAnt
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.mazes import MINARI_SUCCESS_RADIUS
from offtune.errors import OfftuneError

FRAME_SKIP = 5
SEGMENT_STEPS = 150
GOALS_PER_EPISODE = 4
REACH_BONUS = 0.5
# Falls are rare, so a sample seldom shows one; rocking and bouncing precede them and show on every step.
TILT_WEIGHT = 2.0
POPULATION = 16
START_SIGMA = 0.2
VALIDATE_EVERY = 10
VALIDATION_EPISODES = 16
REACH_LIMIT = 200
ACTION_NOISE = 0.2  # the AntMaze collectors' noise: the gait must walk through it
CHECKPOINT = "checkpoint.json"
GAIT_FILE = "gait.json"
LOG_FILE = "progress.jsonl"
# The search tunes every number but the last, ``phase_lead``, which only the phase-from-legs controller uses.
SEARCHED = DIMENSION - PARAMETERS[-1].size
PHASE_LEADS = (0.5, 1.0, 1.5, 2.0)  # radians; below about 0.75 the ant walks nowhere
LEAD_TRIALS = 100

# A trot to start from: diagonal legs (roles 1, 3 and 2, 4) swing together, each ankle a quarter period
# after its hip, so a leg lifts while it swings forward.
START_GAIT = dict(
    frequency=1.5,
    hip_amplitude=0.3,
    hip_offset=0.0,
    hip_phase=[math.pi, 0.0, math.pi],
    ankle_amplitude=0.25,
    ankle_offset=0.85,
    ankle_phase=[math.pi / 2, -math.pi / 2, math.pi / 2, -math.pi / 2],
    turn_amplitude=0.0,
    turn_phase=0.0,
    turn_gain=1.0,
    heading=0.0,
    kp=2.0,
    kd=0.1,
    slow_radius=0.8,
    min_speed=0.3,
    phase_lead=1.5,
)
START_UNIT = Gait.from_values(**START_GAIT).unit


class AntArena:
    """The AntMaze ant on an open floor, stepped with MuJoCo directly (same model, same 5-frame step)."""

    def __init__(self) -> None:
        from gymnasium.envs.mujoco import ant_v4

        xml = Path(ant_v4.__file__).parent / "assets" / "ant.xml"
        self.model = mujoco.MjModel.from_xml_path(str(xml))
        self.data = mujoco.MjData(self.model)

    def reset(self, heading: float) -> None:
        """The env's start pose (no noise, as AntMaze resets) turned to ``heading``."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[3:7] = [math.cos(heading / 2), 0.0, 0.0, math.sin(heading / 2)]
        mujoco.mj_forward(self.model, self.data)

    def step(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=FRAME_SKIP)

    def observation(self) -> np.ndarray:
        """The 27-d ``observation`` part of AntMaze's dict (the x, y it drops are ``position``)."""
        return np.concatenate([self.data.qpos[2:], self.data.qvel])

    def position(self) -> np.ndarray:
        return self.data.qpos[:2].copy()

    def uprightness(self) -> float:
        """The z component of the torso's up axis: 1 upright, 0 on its side, -1 on its back."""
        x, y = self.data.qpos[4], self.data.qpos[5]
        return 1.0 - 2.0 * (x * x + y * y)

    def fallen(self) -> bool:
        """Whether the torso tipped past 70 degrees or sank to the floor: an ant there rarely gets up again."""
        return self.uprightness() < 0.35 or self.data.qpos[2] < 0.3


@dataclass(frozen=True)
class Episode:
    """A start heading, the goals one after another (each an offset from where the ant then stands) and the
    action noise added on the way, per goal and step."""

    heading: float
    offsets: np.ndarray
    noise: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Episode:
        goals = GOALS_PER_EPISODE
        distance = rng.uniform(2.0, 4.0, size=goals)
        angle = rng.uniform(-math.pi, math.pi, size=goals)
        offsets = np.stack([distance * np.cos(angle), distance * np.sin(angle)], axis=1)
        noise = ACTION_NOISE * rng.standard_normal((goals, REACH_LIMIT, 8))
        return cls(float(rng.uniform(-math.pi, math.pi)), offsets, noise)


def walk(
    gait: Gait, arena: AntArena, episode: Episode, steps_per_goal: int
) -> tuple[list[float], list[int | None], int]:
    """Walk one episode: per goal, the fitness term and the step it was reached at (None if never); and
    the env steps taken."""
    controller = ClockedAnt(gait)
    arena.reset(episode.heading)
    scores: list[float] = []
    reached_at: list[int | None] = []
    taken = 0
    for offset, noise in zip(episode.offsets, episode.noise, strict=True):
        goal = arena.position() + offset
        start = float(np.linalg.norm(offset))
        distances, tilt = np.empty(steps_per_goal), 0.0
        reached = None
        for step in range(steps_per_goal):
            action = controller.act(arena.observation(), arena.position(), goal) + noise[step]
            arena.step(np.clip(action, -1.0, 1.0))
            taken += 1
            distances[step] = math.dist(arena.data.qpos[:2], goal)
            tilt += 1.0 - arena.uprightness()
            if reached is None and distances[step] <= MINARI_SUCCESS_RADIUS:
                reached = step + 1
            if arena.fallen():
                break
        if arena.fallen():
            scores += [-1.0] * (len(episode.offsets) - len(scores))
            reached_at += [None] * (len(episode.offsets) - len(reached_at))
            break
        progress = (start - distances.mean()) / start + (REACH_BONUS if reached else 0.0)
        scores.append(progress - TILT_WEIGHT * tilt / steps_per_goal)
        reached_at.append(reached)
    return scores, reached_at, taken


class CMAES:
    """(mu/mu_w, lambda)-CMA-ES maximising a fitness (Hansen's tutorial defaults), state as plain numbers."""

    def __init__(self, mean: np.ndarray, sigma: float, population: int = POPULATION) -> None:
        n = len(mean)
        self.mean, self.sigma = np.asarray(mean, dtype=np.float64), float(sigma)
        self.population = population
        self.mu = population // 2
        weights = math.log(self.mu + 0.5) - np.log(np.arange(1, self.mu + 1))
        self.weights = weights / weights.sum()
        self.mueff = 1.0 / float(np.sum(self.weights**2))
        self.cc = (4 + self.mueff / n) / (n + 4 + 2 * self.mueff / n)
        self.cs = (self.mueff + 2) / (n + self.mueff + 5)
        self.c1 = 2 / ((n + 1.3) ** 2 + self.mueff)
        self.cmu = min(1 - self.c1, 2 * (self.mueff - 2 + 1 / self.mueff) / ((n + 2) ** 2 + self.mueff))
        self.damps = 1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (n + 1)) - 1) + self.cs
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.cov = np.eye(n)
        self.path_sigma = np.zeros(n)
        self.path_cov = np.zeros(n)
        self.generation = 0

    def ask(self, rng: np.random.Generator) -> np.ndarray:
        """``population`` candidates, one a row."""
        eigenvalues, basis = np.linalg.eigh(self.cov)
        scale = basis * np.sqrt(np.maximum(eigenvalues, 1e-20))
        return self.mean + self.sigma * rng.standard_normal((self.population, len(self.mean))) @ scale.T

    def tell(self, candidates: np.ndarray, fitness: np.ndarray) -> None:
        """Move the mean toward the best half, adapt the covariance and the step size."""
        n = len(self.mean)
        best = np.argsort(-fitness)[: self.mu]
        steps = (candidates[best] - self.mean) / self.sigma
        step = self.weights @ steps
        self.mean = self.mean + self.sigma * step
        eigenvalues, basis = np.linalg.eigh(self.cov)
        inverse_root = basis @ np.diag(1 / np.sqrt(np.maximum(eigenvalues, 1e-20))) @ basis.T
        self.path_sigma = (1 - self.cs) * self.path_sigma + math.sqrt(self.cs * (2 - self.cs) * self.mueff) * (
            inverse_root @ step
        )
        self.generation += 1
        norm = float(np.linalg.norm(self.path_sigma))
        stalled = norm / math.sqrt(1 - (1 - self.cs) ** (2 * self.generation)) / self.chi_n >= 1.4 + 2 / (n + 1)
        hsig = 0.0 if stalled else 1.0
        self.path_cov = (1 - self.cc) * self.path_cov + hsig * math.sqrt(self.cc * (2 - self.cc) * self.mueff) * step
        rank_mu = (steps * self.weights[:, None]).T @ steps
        self.cov = (
            (1 - self.c1 - self.cmu) * self.cov
            + self.c1 * (np.outer(self.path_cov, self.path_cov) + (1 - hsig) * self.cc * (2 - self.cc) * self.cov)
            + self.cmu * rank_mu
        )
        self.cov = (self.cov + self.cov.T) / 2
        self.sigma *= math.exp((self.cs / self.damps) * (norm / self.chi_n - 1))

    def state(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "sigma": self.sigma,
            "cov": self.cov.tolist(),
            "path_sigma": self.path_sigma.tolist(),
            "path_cov": self.path_cov.tolist(),
            "generation": self.generation,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], population: int) -> CMAES:
        search = cls(np.asarray(state["mean"]), state["sigma"], population)
        search.cov = np.asarray(state["cov"])
        search.path_sigma = np.asarray(state["path_sigma"])
        search.path_cov = np.asarray(state["path_cov"])
        search.generation = int(state["generation"])
        return search


@dataclass
class Progress:
    """Where a training run stands; written to the checkpoint after every generation."""

    seed: int
    budget: int
    steps: int = 0
    seconds: float = 0.0
    best_success: float = -1.0
    best_fitness: float = -math.inf
    best_generation: int = -1
    best_unit: list[float] | None = None


def validate(gait: Gait, seed: int) -> tuple[float, float, int]:
    """Success rate (reached within ``REACH_LIMIT`` steps), mean fitness and steps on a fixed set of episodes."""
    arena = AntArena()
    rng = np.random.default_rng([seed, 2**31 - 1])
    reached, scores, taken = [], [], 0
    for _ in range(VALIDATION_EPISODES):
        score, reached_at, steps = walk(gait, arena, Episode.draw(rng), REACH_LIMIT)
        scores += score
        reached += [at is not None for at in reached_at]
        taken += steps
    return float(np.mean(reached)), float(np.mean(scores)), taken


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def train_controller(
    out: str | Path,
    seed: int = 0,
    budget: int = 4_000_000,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or continue) the gait search in ``out`` until ``budget`` env steps, then pick the phase lead;
    returns the gait file, written at the end.

    The gait kept is the generation mean that validated best (success rate, then fitness), not a single
    lucky sample.
    """
    out = Path(out)
    checkpoint = out / CHECKPOINT
    if checkpoint.exists() and not resume:
        raise OfftuneError(f"{out} already holds a training run; pass --resume to continue it")
    if resume and not checkpoint.exists():
        raise OfftuneError(f"{out} holds no training run to resume ({CHECKPOINT} is missing)")
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        saved = json.loads(checkpoint.read_text())
        progress = Progress(**{**saved["progress"], "budget": budget})
        if len(saved["search"]["mean"]) != SEARCHED:
            raise OfftuneError(
                f"{checkpoint} holds a search of {len(saved['search']['mean'])} gait numbers, from an earlier "
                f"offtune; this one searches {SEARCHED}: start a new run in another folder"
            )
        search = CMAES.from_state(saved["search"], POPULATION)
        if progress.seed != seed:
            log(f"resuming with the run's own seed {progress.seed} (not {seed})")
    else:
        progress = Progress(seed=seed, budget=budget)
        search = CMAES(START_UNIT[:SEARCHED], START_SIGMA)
    arena = AntArena()
    with open(out / LOG_FILE, "a") as log_file:
        while progress.steps < progress.budget:
            started = time.perf_counter()
            generation = search.generation
            candidates = search.ask(np.random.default_rng([progress.seed, generation, 0]))
            episode = Episode.draw(np.random.default_rng([progress.seed, generation, 1]))
            fitness = np.array([np.mean(walk(searched_gait(c), arena, episode, SEGMENT_STEPS)[0]) for c in candidates])
            progress.steps += len(candidates) * GOALS_PER_EPISODE * SEGMENT_STEPS
            search.tell(candidates, fitness)
            record: dict[str, Any] = {
                "generation": generation,
                "steps": progress.steps,
                "fitness_best": round(float(fitness.max()), 4),
                "fitness_mean": round(float(fitness.mean()), 4),
                "sigma": round(search.sigma, 4),
            }
            if search.generation % VALIDATE_EVERY == 0 or progress.steps >= progress.budget:
                success, score, used = validate(searched_gait(search.mean), progress.seed)
                progress.steps += used
                record.update(validation_success=round(success, 4), validation_fitness=round(score, 4))
                if (success, score) > (progress.best_success, progress.best_fitness):
                    progress.best_success, progress.best_fitness = success, score
                    progress.best_generation, progress.best_unit = search.generation, search.mean.tolist()
            progress.seconds += time.perf_counter() - started
            record["seconds"] = round(progress.seconds, 1)
            state = {"progress": asdict(progress), "search": search.state()}
            _write_atomic(checkpoint, json.dumps(state))
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            log(_log_line(record, progress))
    if progress.best_unit is None:
        raise OfftuneError(f"no gait in {out} has been validated yet: resume with a --budget above {progress.steps:,}")
    log(f"search done at {progress.steps:,} env steps; picking the phase lead")
    best = searched_gait(np.asarray(progress.best_unit))
    lead, reports = pick_phase_lead(best, progress.seed, log)
    _write_atomic(out / GAIT_FILE, _gait_text(with_phase_lead(best, lead), progress, reports))
    return out / GAIT_FILE


def searched_gait(unit: np.ndarray) -> Gait:
    """The gait at a point of the search (``SEARCHED`` numbers); ``phase_lead`` stays at the start's."""
    return Gait.from_unit(np.concatenate([unit, START_UNIT[SEARCHED:]]))


def with_phase_lead(gait: Gait, lead: float) -> Gait:
    """``gait`` with another phase lead, every other number unchanged to the bit."""
    parameter = PARAMETERS[-1]
    unit = gait.unit.copy()
    unit[SEARCHED:] = (lead - parameter.low) / (parameter.high - parameter.low)
    return Gait(unit)


def pick_phase_lead(
    gait: Gait, seed: int, log: Callable[[str], None] = print, trials: int | None = None
) -> tuple[float, dict[float, ReachReport]]:
    """The phase lead in ``PHASE_LEADS`` that reaches most goals 2-4 m away under the collector's noise,
    then in the fewest steps (median); with every report. The goals are ``reach_report``'s for ``seed``, so
    ``controller-report --seed 0`` measures a seed-0 gait on the goals its lead was picked on."""
    reports = {}
    trials = LEAD_TRIALS if trials is None else trials
    for lead in PHASE_LEADS:
        reports[lead] = reach_report(with_phase_lead(gait, lead), trials, seed, REACH_LIMIT, ACTION_NOISE)
        median = reports[lead].median_steps
        log(f"phase lead {lead:.2f} rad: reached {reports[lead].reached}/{reports[lead].trials}, "
            f"median {'-' if median is None else f'{median:.0f}'} steps")
    best = max(PHASE_LEADS, key=lambda lead: (reports[lead].rate, -(reports[lead].median_steps or math.inf)))
    log(f"phase lead {best:.2f} rad kept")
    return best, reports


def _gait_text(gait: Gait, progress: Progress, reports: dict[float, ReachReport]) -> str:
    return gait.to_json(
        method="CPG gait + PD joints, tuned by CMA-ES with the phase on a clock, then the phase lead picked by "
        "reach rate with the phase read from the legs (offtune dataset train-controller ant)",
        seed=progress.seed,
        generation=progress.best_generation,
        env_steps=progress.steps,
        seconds=round(progress.seconds),
        validation_success=progress.best_success,
        phase_leads={f"{lead:g}": f"{r.reached}/{r.trials} reached, median {r.median_steps} steps"
                     for lead, r in reports.items()},
    )


def _log_line(record: dict[str, Any], progress: Progress) -> str:
    line = (
        f"gen {record['generation']:4d}  steps {record['steps']:>9,}/{progress.budget:,}  "
        f"fitness best {record['fitness_best']:.3f} mean {record['fitness_mean']:.3f}  "
        f"sigma {record['sigma']:.3f}  {record['seconds']:.0f}s"
    )
    if "validation_success" in record:
        line += (
            f"  | validation: reach {100 * record['validation_success']:.0f}%, "
            f"fitness {record['validation_fitness']:.3f}"
        )
    return line


# -- measuring a gait in the real AntMaze env ---------------------------------------------------------------

# A 28 m square room whose start cell is its centre, so goals 2-4 m away are never behind a wall.
OPEN_MAP = [[1] * 9] + [[1] + [0] * 7 + [1] for _ in range(7)] + [[1] * 9]
OPEN_MAP[4][4] = "r"
CORRIDORS = {  # map, direction of the goal from the start
    "east": ([[1, 1, 1, 1, 1], [1, "r", 0, "g", 1], [1, 1, 1, 1, 1]], (1.0, 0.0)),
    "west": ([[1, 1, 1, 1, 1], [1, "g", 0, "r", 1], [1, 1, 1, 1, 1]], (-1.0, 0.0)),
    "north": ([[1, 1, 1], [1, "g", 1], [1, 0, 1], [1, "r", 1], [1, 1, 1]], (0.0, 1.0)),
    "south": ([[1, 1, 1], [1, "r", 1], [1, 0, 1], [1, "g", 1], [1, 1, 1]], (0.0, -1.0)),
}


@dataclass(frozen=True)
class ReachReport:
    """How often the gait reached its goal in time, and how many steps it took when it did."""

    trials: int
    reached: int
    limit: int
    median_steps: float | None

    @property
    def rate(self) -> float:
        return self.reached / self.trials


def _reach(env: Any, controller: GoalReachingAnt, goal: np.ndarray, limit: int, noise: Callable[[], np.ndarray]):
    """Walk toward ``goal`` from the env's current state; the step it came within 0.45 m, or None."""
    maze_env = env.unwrapped
    maze_env.goal = goal
    maze_env.update_target_site_pos()
    observation = maze_env._get_obs(maze_env.ant_env._get_obs())
    for step in range(limit):
        observation, *_ = env.step(np.clip(controller(observation) + noise(), -1.0, 1.0))
        if np.linalg.norm(observation["achieved_goal"] - goal) <= MINARI_SUCCESS_RADIUS:
            return step + 1
    return None


def _report(steps: list[int | None], limit: int) -> ReachReport:
    done = [s for s in steps if s is not None]
    return ReachReport(len(steps), len(done), limit, float(np.median(done)) if done else None)


def reach_report(
    gait: Gait | None = None, trials: int = 100, seed: int = 0, limit: int = REACH_LIMIT, noise: float = 0.0
) -> ReachReport:
    """Goals 2-4 m away in a random direction, from AntMaze's start pose, in an open ``AntMaze_*-v4`` room;
    ``noise`` is the standard deviation of Gaussian noise added to every action (the collector's is 0.2)."""
    env = make_gym_env("AntMaze_UMaze-v4", maze_map=OPEN_MAP, continuing_task=True, reset_target=False)
    controller = GoalReachingAnt(gait)
    rng = np.random.default_rng(seed)
    steps = []
    for trial in range(trials):
        observation, _ = env.reset(seed=seed + trial)
        distance, angle = rng.uniform(2.0, 4.0), rng.uniform(-math.pi, math.pi)
        goal = observation["achieved_goal"] + distance * np.array([math.cos(angle), math.sin(angle)])
        steps.append(_reach(env, controller, goal, limit, lambda: noise * rng.standard_normal(8)))
    env.close()
    return _report(steps, limit)


def corridor_report(
    gait: Gait | None = None, trials: int = 20, seed: int = 0, limit: int = 400, noise: float = 0.0
) -> ReachReport:
    """8 m straight down a one-cell (4 m wide) ``AntMaze_*-v4`` corridor, in each of the four directions."""
    controller = GoalReachingAnt(gait)
    rng = np.random.default_rng(seed)
    steps = []
    for index, (maze_map, direction) in enumerate(CORRIDORS.values()):
        env = make_gym_env("AntMaze_UMaze-v4", maze_map=maze_map, continuing_task=True, reset_target=False)
        for trial in range(index, trials, len(CORRIDORS)):
            observation, _ = env.reset(seed=seed + trial)
            goal = observation["achieved_goal"] + 8.0 * np.array(direction)
            steps.append(_reach(env, controller, goal, limit, lambda: noise * rng.standard_normal(8)))
        env.close()
    return _report(steps, limit)


def measure_speed(seconds: float = 3.0) -> float:
    """Bare-simulator env steps per second with the gait in the loop (sizes the search before a run)."""
    arena, controller = AntArena(), ClockedAnt(Gait.from_values(**START_GAIT))
    arena.reset(0.0)
    steps, started = 0, time.process_time()
    while time.process_time() - started < seconds:
        arena.step(controller.act(arena.observation(), arena.position(), np.array([100.0, 0.0])))
        steps += 1
    return steps / (time.process_time() - started)

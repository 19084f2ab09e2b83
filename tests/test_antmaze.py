"""AntMaze data made here: the shipped goal-reaching ant, the D4RL-style collector, and its refusals.

No training: the ant is the gait shipped in the package, and the collects are a couple of episodes long.
"""

from __future__ import annotations

import json
import math

import minari
import numpy as np
import pytest
from click.testing import CliRunner

from offtune.buffers import ant_training, antmaze_collect, datasets
from offtune.buffers.ant_controller import DIMENSION, Gait, GoalReachingAnt, heading_of
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.mazes import ANTMAZE_EVAL_MAPS, ANTMAZE_UMAZE_MAP, D4RL_SUCCESS_RADIUS
from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError

ANTMAZE_GOAL_XY = np.array([-4.0, 4.0])  # the goal cell of umaze's collection map (D4RL's goal)

_register()


def test_shipped_ant_walks_to_a_goal_in_a_real_antmaze_env():
    """From the start cell of D4RL's umaze, 3 m along the corridor, within 200 steps."""
    env = make_gym_env("AntMaze_UMaze-v4", maze_map=ANTMAZE_UMAZE_MAP, continuing_task=True, reset_target=False)
    observation, _ = env.reset(seed=0)
    goal = observation["achieved_goal"] + np.array([3.0, 0.0])
    controller = GoalReachingAnt()
    for _ in range(200):
        observation, *_ = env.step(controller(observation, goal))
        if np.linalg.norm(observation["achieved_goal"] - goal) <= 0.45:
            break
    env.close()
    assert np.linalg.norm(observation["achieved_goal"] - goal) <= 0.45


def test_ant_reads_the_phase_from_its_legs():
    """Legs placed exactly on the gait's cycle at phase 1.2 (angles and their time derivatives, written from the
    gait's numbers): the fit returns 1.2. Gait copy 1 (leg j plays role j - 1), turning 0.4, speed 0.8."""
    values = Gait.load().values()
    hip_phase = np.concatenate([[0.0], values["hip_phase"]])
    omega = 2.0 * math.pi * values["frequency"][0]  # rad/s
    phase, turn, speed = 1.2, 0.4, 0.8
    observation = np.zeros(27)
    for leg in range(4):
        role = (leg - 1) % 4
        hip = [(speed * values["hip_amplitude"][role], phase + hip_phase[role]),
               (speed * turn * values["turn_amplitude"][role], phase + values["turn_phase"][role])]
        ankle_sign = 1.0 if leg in (0, 3) else -1.0
        ankle = (ankle_sign * speed * values["ankle_amplitude"][role], phase + values["ankle_phase"][role])
        observation[5 + 2 * leg] = values["hip_offset"][role] + sum(a * math.sin(x) for a, x in hip)
        observation[6 + 2 * leg] = ankle_sign * values["ankle_offset"][role] + ankle[0] * math.sin(ankle[1])
        observation[19 + 2 * leg] = omega * sum(a * math.cos(x) for a, x in hip)
        observation[20 + 2 * leg] = omega * ankle[0] * math.cos(ankle[1])
    controller = GoalReachingAnt()
    offset, sine, cosine = controller._pattern(copy=1, turn=turn, speed=speed)
    assert controller._phase_of_legs(observation, offset, sine, cosine) == pytest.approx(phase, abs=1e-12)


def test_ant_action_is_a_function_of_observation_and_target():
    """No hidden clock: offline learners see only the observation, so the data's actions must depend on it alone."""
    env = make_gym_env("AntMaze_UMaze-v4", maze_map=ANTMAZE_UMAZE_MAP, continuing_task=True, reset_target=False)
    observation, _ = env.reset(seed=3)
    goal = observation["achieved_goal"] + np.array([3.0, 1.0])
    controller, fresh = GoalReachingAnt(), GoalReachingAnt()
    for _ in range(25):
        action = controller(observation, goal)
        assert np.array_equal(action, fresh(observation, goal))
        observation, *_ = env.step(action)
    env.close()


def test_reach_report_counts_goals_reached_in_time():
    report = ant_training.reach_report(trials=3, seed=1)
    assert report.trials == 3 and report.reached >= 2 and report.median_steps <= report.limit


def test_gait_numbers_round_trip_and_fold_into_range(tmp_path):
    gait = Gait.from_values(**ant_training.START_GAIT)
    path = tmp_path / "gait.json"
    path.write_text(gait.to_json(note="test"))
    assert np.array_equal(Gait.load(path).unit, gait.unit)
    folded = Gait.from_unit(np.array([-0.25, 1.25] + [0.5] * (DIMENSION - 2)))
    assert np.allclose(folded.unit[:2], [0.25, 0.75])
    with pytest.raises(OfftuneError, match="not an ant gait"):
        path.write_text("{}")
        Gait.load(path)


def test_cma_es_solves_a_quadratic():
    search = ant_training.CMAES(np.full(5, 3.0), 1.0, population=10)
    for generation in range(120):
        candidates = search.ask(np.random.default_rng(generation))
        search.tell(candidates, -np.sum(candidates**2, axis=1))
    assert np.linalg.norm(search.mean) < 1e-3


class _Stop(Exception):
    pass


def _stop_after_first_generation(line: str) -> None:
    raise _Stop(line)


def test_training_resumes_exactly(tmp_path, monkeypatch):
    """A run stopped after its first generation and resumed ends where an uninterrupted run does."""
    for name, value in (("SEGMENT_STEPS", 10), ("REACH_LIMIT", 12), ("VALIDATION_EPISODES", 1), ("LEAD_TRIALS", 1)):
        monkeypatch.setattr(ant_training, name, value)
    budget = 2 * ant_training.POPULATION * ant_training.GOALS_PER_EPISODE * 10
    ant_training.train_controller(tmp_path / "straight", budget=budget, log=lambda line: None)
    with pytest.raises(_Stop, match="gen    0"):
        ant_training.train_controller(tmp_path / "split", budget=budget, log=_stop_after_first_generation)
    with pytest.raises(OfftuneError, match="--resume"):
        ant_training.train_controller(tmp_path / "split", budget=budget, log=lambda line: None)
    ant_training.train_controller(tmp_path / "split", budget=budget, resume=True, log=lambda line: None)
    straight, split = (json.loads((tmp_path / run / "checkpoint.json").read_text()) for run in ("straight", "split"))
    for state in (straight, split):
        del state["progress"]["seconds"]
    assert straight == split and straight["search"]["generation"] == 2
    written = Gait.load(tmp_path / "split" / "gait.json")
    assert np.array_equal(written.unit, Gait.load(tmp_path / "straight" / "gait.json").unit)
    best = ant_training.searched_gait(np.asarray(straight["progress"]["best_unit"]))
    assert np.array_equal(written.unit[: ant_training.SEARCHED], best.unit[: ant_training.SEARCHED])
    assert any(math.isclose(written.values()["phase_lead"][0], lead) for lead in ant_training.PHASE_LEADS)


def test_the_search_walks_the_shipped_gait_on_a_clock():
    """The clocked form the search tunes reaches goals 2-4 m away on the bare floor under the collector's noise."""
    arena = ant_training.AntArena()
    episode = ant_training.Episode.draw(np.random.default_rng(0))
    _, reached_at, _ = ant_training.walk(Gait.load(), arena, episode, ant_training.REACH_LIMIT)
    assert sum(at is not None for at in reached_at) >= 3


def test_phase_lead_is_picked_by_reach_rate_then_steps_and_changes_nothing_else():
    shipped = Gait.load()
    assert np.array_equal(ant_training.with_phase_lead(shipped, 1.5).unit, shipped.unit)
    lines: list[str] = []
    lead, reports = ant_training.pick_phase_lead(shipped, seed=0, log=lines.append, trials=3)
    assert reports[0.5].reached == 0 and reports[lead].reached == 3
    fastest = min(r.median_steps for r in reports.values() if r.reached == 3)
    assert reports[lead].median_steps == fastest and lines[-1] == f"phase lead {lead:.2f} rad kept"
    other = ant_training.with_phase_lead(shipped, 0.5)
    assert np.array_equal(other.unit[: ant_training.SEARCHED], shipped.unit[: ant_training.SEARCHED])


@pytest.fixture(scope="module")
def collected_umaze(minari_root) -> str:
    """Two umaze episodes (1,400 steps) collected like D4RL/antmaze/umaze-v1."""
    recipe = antmaze_collect.recipe_for("antmaze-umaze")
    return antmaze_collect.collect_antmaze(recipe, 1400, seed=0).id


def test_collected_umaze_has_the_published_spec(collected_umaze):
    dataset = minari.load_dataset(collected_umaze)
    spec = dataset.env_spec
    assert (spec.id, spec.max_episode_steps) == ("AntMaze_UMaze-v4", 700)
    assert spec.kwargs["continuing_task"] is True and spec.kwargs["reset_target"] is False
    assert spec.kwargs["maze_map"] == ANTMAZE_UMAZE_MAP
    assert dataset.recover_environment(eval_env=True).spec.kwargs["maze_map"] == ANTMAZE_EVAL_MAPS["umaze"]
    episodes = list(dataset.iterate_episodes())
    assert [len(episode) for episode in episodes] == [700, 700]
    assert all(episode.truncations[-1] and not episode.terminations.any() for episode in episodes)
    assert set(episodes[0].observations) == {"observation", "achieved_goal", "desired_goal"}
    assert set(episodes[0].infos) == {"success", "qpos", "qvel", "goal"}
    assert np.abs(episodes[0].actions).max() <= 1.0


def test_collected_umaze_relabels_to_d4rl_goal(collected_umaze):
    data = datasets.load(collected_umaze)
    assert data.info.task_mode == "d4rl" and data.info.goal == [-4.0, 4.0]
    positions = data.next_observations[:, :2]
    at_goal = np.linalg.norm(positions - np.array(data.info.goal), axis=1) <= D4RL_SUCCESS_RADIUS
    assert at_goal.any(), "the ant should reach D4RL's goal in one of the two episodes"
    assert np.array_equal(data.rewards == 1.0, at_goal) and np.array_equal(data.terminals, data.rewards)
    result = CliRunner().invoke(cli, ["dataset", "info", "offtune-antmaze-umaze-v0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["episodes_reaching_d4rl_goal"].startswith(("1 of 2", "2 of 2"))
    assert summary["waypoints_reached"].endswith("%)") and summary["task_mode"] == "d4rl"


def test_forced_resets_cut_episodes_like_the_published_checkpoints(monkeypatch, minari_root):
    monkeypatch.setattr(antmaze_collect, "FORCED_RESET_EVERY", 300)
    recipe = antmaze_collect.recipe_for("antmaze-medium")
    dataset = antmaze_collect.collect_antmaze(recipe, 500, seed=3, dataset_id="test/antmaze/medium-play-v0")
    lengths = [len(episode) for episode in dataset.iterate_episodes()]
    assert lengths == [300, 200] and dataset.env_spec.id == "AntMaze_Medium-v4"


@pytest.mark.parametrize(
    ("name", "kind", "recipe"),
    [
        ("antmaze-umaze", None, "umaze"),
        ("antmaze-umaze", "diverse", "umaze-diverse"),
        ("antmaze-medium", None, "medium-play"),
        ("antmaze-large", "diverse", "large-diverse"),
        ("antmaze-large-play-v2", None, "large-play"),
        ("offtune/antmaze/medium-diverse-v0", None, "medium-diverse"),
        ("D4RL/antmaze/umaze-diverse-v1", None, "umaze-diverse"),
        ("antmaze-medium-play-d4rl", None, "medium-play-d4rl"),
        ("offtune/antmaze/large-diverse-d4rl-v0", None, "large-diverse-d4rl"),
    ],
)
def test_collect_names(name, kind, recipe):
    assert antmaze_collect.recipe_for(name, kind).dataset == recipe


def test_d4rl_generator_recipes_mark_d4rls_goal_cells():
    for maze, cells in antmaze_collect.D4RL_GOAL_CELLS.items():
        recipe = antmaze_collect.recipe_for(f"antmaze-{maze}", generator="d4rl")
        assert recipe.dataset == f"{maze}-play-d4rl" and not recipe.stop_at_goal
        marked = {(row, column) for row, line in enumerate(recipe.maze_map) for column, cell in enumerate(line)
                  if cell == "g"}
        assert marked == set(cells)  # every D4RL goal cell is a free cell of gymnasium's maze, and no r is left
        evaluation = ANTMAZE_EVAL_MAPS[maze]
        assert all(evaluation[row][column] in (0, "g") for row, column in cells)
        assert not any(cell == "r" for line in recipe.maze_map for cell in line)
    umaze = antmaze_collect.recipe_for("antmaze-umaze", generator="d4rl")
    assert umaze.maze_map == ANTMAZE_UMAZE_MAP and umaze.minari_id == "offtune/antmaze/umaze-d4rl-v0"
    assert antmaze_collect.recipe_for("antmaze-umaze", "diverse", "d4rl").maze_map is None


def test_d4rl_generator_ant_circles_its_goal_where_minaris_stops(collected_umaze):
    recipe = antmaze_collect.recipe_for("antmaze-umaze", generator="d4rl")
    circling = antmaze_collect.collect_antmaze(recipe, 700, seed=0)
    assert "circling its goal" in circling.storage.metadata["description"]

    def speeds_near_goal(dataset):
        xy = next(dataset.iterate_episodes()).observations["achieved_goal"]
        speed = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
        near = np.linalg.norm(xy[1:] - ANTMAZE_GOAL_XY, axis=-1) < 2.0
        assert near.sum() > 100, "the ant should spend the end of the episode near its goal"
        return speed[near]

    # Minari's ant shuffles at its goal (about 0.017 m a step here); D4RL's, and this one, keeps walking around it
    # at full stride (about 0.064).
    standing = np.median(speeds_near_goal(minari.load_dataset(collected_umaze)))
    assert standing < 0.03 and np.median(speeds_near_goal(circling)) > 2.5 * standing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("antmaze-umaze", "--kind", "play"), "no play dataset"),
        (("antmaze-medium-play", "--kind", "diverse"), "contradicts"),
        (("antmaze-medium-play-d4rl", "--generator", "minari"), "contradicts"),
        (("pointmaze-umaze", "--generator", "d4rl"), "for AntMaze"),
        (("antmaze-huge",), "not 'antmaze-huge'"),
        (("pointmaze-umaze", "--kind", "diverse"), "for AntMaze"),
        (("antmaze-umaze", "--random"), "do not apply"),
        (("antmaze-umaze", "--id", "test/bad id-v0"), "not a valid Minari dataset id"),
        (("antmaze-umaze", "--gait", "/nonexistent/gait.json"), "cannot read ant gait"),
    ],
)
def test_collect_refuses_bad_options_in_one_line(args, message):
    result = CliRunner().invoke(cli, ["dataset", "collect", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"steps": 0}, "at least 1"), ({"seed": -1}, "0 or more"), ({"noise": math.nan}, "standard deviation")],
)
def test_collector_checks_numbers_before_collecting(settings, message):
    recipe = antmaze_collect.recipe_for("antmaze-umaze")
    with pytest.raises(OfftuneError, match=message):
        antmaze_collect.collect_antmaze(recipe, **{"steps": 10, **settings})


def test_ant_heading_from_quaternion():
    angle = 0.7
    assert math.isclose(heading_of(np.array([math.cos(angle / 2), 0, 0, math.sin(angle / 2)])), angle)

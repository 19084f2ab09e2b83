"""Dataset names, Minari loading, and the flat arrays every algorithm trains on.

A D4RL-style name (``antmaze-umaze-v2``) or a plain Minari id resolves through one registry table to a
Minari dataset, which is read from ``MINARI_DATASETS_PATH`` (downloaded only when allowed) and turned
into :class:`OfflineData`: flat float32 transition arrays plus a :class:`DatasetInfo` that records
everything the live environment, evaluation and export need to treat observations the same way.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from offtune.errors import OfftuneError, suggest


@dataclass
class ScoreRule:
    """How a return becomes a score: ``100 * (R - ref_min) / (ref_max - ref_min)``.

    ``kind`` is ``"success"`` (mazes: return is 0/1, score = success rate x 100), ``"normalized"``
    (D4RL or Minari reference returns) or ``"raw"`` (no reference: the return itself).
    """

    kind: str = "raw"
    ref_min: float = 0.0
    ref_max: float = 1.0
    source: str = ""

    def score(self, episode_return: float | np.ndarray) -> float | np.ndarray:
        if self.kind == "raw":
            return episode_return
        if self.kind == "success":
            reached = 100.0 * (np.asarray(episode_return) > 0)
            return float(reached) if reached.ndim == 0 else reached
        return 100.0 * (episode_return - self.ref_min) / (self.ref_max - self.ref_min)

    def describe(self) -> str:
        if self.kind == "success":
            return "success rate x 100"
        if self.kind == "normalized":
            return f"100 x (R - {self.ref_min:g}) / ({self.ref_max:g} - {self.ref_min:g}) [{self.source}]"
        return "raw return"


@dataclass
class DatasetInfo:
    """Everything about a dataset that must travel with a checkpoint (JSON-able via ``to_dict``).

    ``obs_keys`` is the order in which dict observations are concatenated (empty for a flat Box);
    ``eval_env_spec`` is the JSON ``EnvSpec`` of the live env to build; for mazes ``goal`` (d4rl task mode)
    and ``success_radius`` say what counts as reaching the goal; ``observation_space`` is the dataset's own
    (possibly dict) observation space, for display.
    """

    name: str
    minari_id: str
    family: str
    task_mode: str | None
    obs_keys: list[str]
    obs_dim: int
    action_dim: int
    action_low: list[float]
    action_high: list[float]
    env_spec: str
    eval_env_spec: str
    score_rule: ScoreRule = field(default_factory=ScoreRule)
    max_episode_steps: int | None = None
    goal: list[float] | None = None
    episodes: int = 0
    steps: int = 0
    success_radius: float | None = None
    observation_space: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        data = dict(data)
        data["score_rule"] = ScoreRule(**data.get("score_rule", {}))
        return cls(**data)


@dataclass
class OfflineData:
    """Flat float32 transitions. ``terminals`` are true terminations only, never time-limit cuts.

    ``episode_ends`` marks the last transition of every episode (terminated or truncated); reward
    transforms that need episode returns use it.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    episode_ends: np.ndarray
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.rewards)

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in order."""
        ends = np.flatnonzero(self.episode_ends)
        if len(ends) == 0 or ends[-1] != len(self.rewards) - 1:
            ends = np.append(ends, len(self.rewards) - 1)
        sums = np.cumsum(self.rewards, dtype=np.float64)[ends]
        return np.diff(np.concatenate([[0.0], sums]))


# --- maze facts ------------------------------------------------------------------------------------------

# The maze D4RL/antmaze/umaze-v1 was collected in: D4RL's start (r, bottom-left) and goal (g, top-left).
ANTMAZE_UMAZE_MAP: list[list[int | str]] = [
    [1, 1, 1, 1, 1],
    [1, "g", 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, "r", 0, 0, 1],
    [1, 1, 1, 1, 1],
]
# PointMaze evaluation maps of the published datasets: a single fixed g, resets from every free cell.
POINTMAZE_EVAL_MAPS: dict[str, list[list[int | str]]] = {
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
OBS_KEYS = {
    ("antmaze", "d4rl"): ["achieved_goal", "observation"],
    ("antmaze", "goal"): ["achieved_goal", "observation", "desired_goal"],
    ("pointmaze", "goal"): ["observation", "desired_goal"],
    ("pointmaze", "d4rl"): ["observation"],
}


def maze_cell(maze_map: Sequence[Sequence[int | str]], marker: str) -> tuple[int, int]:
    """(row, col) of the single cell marked ``marker`` (``"g"`` or ``"r"``)."""
    cells = [(r, c) for r, row in enumerate(maze_map) for c, cell in enumerate(row) if cell == marker]
    if len(cells) != 1:
        raise OfftuneError(f"the maze map has {len(cells)} {marker!r} cells; offtune needs exactly one")
    return cells[0]


def make_gym_env(spec: Any, **kwargs: Any) -> Any:
    """``gym.make`` with gymnasium-robotics registered and its "v4 is out of date" warning silenced: the
    Minari maze data were collected on the v4 envs, so v4 is what offtune must build.

    Maze envs write their MuJoCo model to a fresh XML file in the temp folder and never delete it (one per
    env, thousands over a sweep); the model is compiled by then, so the file is removed here.
    """
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        env = gym.make(spec, **kwargs)
    model_file = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if model_file is not None:
        Path(model_file).unlink(missing_ok=True)
    return env


def maze_scaling(spec: Any) -> float:
    """``maze_size_scaling`` of a maze EnvSpec, read from the env itself (ant mazes 4, point mazes 1)."""
    env = make_gym_env(spec)
    try:
        return float(env.unwrapped.maze.maze_size_scaling)
    finally:
        env.close()


def cell_xy(maze_map: Sequence[Sequence[int | str]], cell: tuple[int, int], scaling: float) -> np.ndarray:
    """Centre of a maze cell in simulator coordinates (gymnasium-robotics: row index grows toward -y)."""
    rows, cols = len(maze_map), len(maze_map[0])
    row, col = cell
    return np.array([(col + 0.5) * scaling - cols * scaling / 2, rows * scaling / 2 - (row + 0.5) * scaling])


# --- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryEntry:
    """One known dataset name.

    ``minari_id`` is None when Minari publishes nothing under that name (``substitute`` names the nearest
    one); ``parts`` lists the Minari ids that ``minari.combine_datasets`` joins into ``minari_id`` locally;
    ``collect_maze`` is set when ``offtune dataset collect`` can make the data itself; ``exact`` when the name
    was a Minari id, which means that version and no other (a D4RL name takes the newest local version).
    """

    name: str
    minari_id: str | None
    family: str
    task_mode: str | None = None
    score_rule: ScoreRule | None = None
    substitute: str | None = None
    parts: tuple[str, ...] = ()
    collect_maze: str | None = None
    exact: bool = False

    @property
    def short_name(self) -> str:
        return re.sub(r"-v\d+$", "", self.name)


def _d4rl(ref_min: float, ref_max: float, what: str) -> ScoreRule:
    return ScoreRule("normalized", ref_min, ref_max, f"D4RL {what} reference returns")


SUCCESS = ScoreRule("success", 0.0, 1.0, "success rate")
LOCOMOTION_REFS = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}
ADROIT_REFS = {
    "pen": (96.262799, 3076.8331017826877),
    "door": (-56.512833, 2880.5693087298737),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
}


def _build_registry() -> dict[str, RegistryEntry]:
    entries: list[RegistryEntry] = []
    for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
        entries.append(
            RegistryEntry(f"antmaze-{maze}-v2", f"D4RL/antmaze/{maze}-v1", "antmaze", "d4rl", SUCCESS)
        )
    for env, (ref_min, ref_max) in LOCOMOTION_REFS.items():
        rule = _d4rl(ref_min, ref_max, env)
        for level in ("medium", "expert"):
            entries.append(
                RegistryEntry(f"{env}-{level}-v2", f"mujoco/{env}/{level}-v0", "locomotion", None, rule)
            )
        entries.append(
            RegistryEntry(
                f"{env}-medium-replay-v2", None, "locomotion", None, rule, substitute=f"{env}-medium-v2"
            )
        )
        entries.append(
            RegistryEntry(
                f"{env}-medium-expert-v2",
                f"offtune/{env}/medium-expert-v0",
                "locomotion",
                None,
                rule,
                substitute=f"{env}-expert-v2",
                parts=(f"mujoco/{env}/medium-v0", f"mujoco/{env}/expert-v0"),
            )
        )
    for maze in ("open", "umaze", "medium", "large"):
        entries.append(
            RegistryEntry(f"maze2d-{maze}-v1", f"D4RL/pointmaze/{maze}-v2", "pointmaze", "goal", SUCCESS)
        )
    for maze in ("umaze", "medium", "large"):
        entries.append(
            RegistryEntry(
                f"pointmaze-{maze}-v0",
                f"offtune/pointmaze/{maze}-v0",
                "pointmaze",
                "goal",
                SUCCESS,
                collect_maze=maze,
            )
        )
    for task, (ref_min, ref_max) in ADROIT_REFS.items():
        for level in ("human", "cloned", "expert"):
            entries.append(
                RegistryEntry(
                    f"{task}-{level}-v1",
                    f"D4RL/{task}/{level}-v2",
                    "adroit",
                    None,
                    _d4rl(ref_min, ref_max, task),
                )
            )
    kitchen_rule = ScoreRule("normalized", 0.0, 4.0, "D4RL kitchen: tasks completed / 4")
    for task in ("complete", "partial", "mixed"):
        entries.append(
            RegistryEntry(f"kitchen-{task}-v0", f"D4RL/kitchen/{task}-v2", "kitchen", None, kitchen_rule)
        )
    return {entry.name: entry for entry in entries}


REGISTRY: dict[str, RegistryEntry] = _build_registry()
_SHORT_NAMES = {entry.short_name: entry for entry in REGISTRY.values()}


def _base_id(minari_id: str) -> str:
    return re.sub(r"-v\d+$", "", minari_id)


def _version(minari_id: str) -> int:
    match = re.search(r"-v(\d+)$", minari_id)
    return int(match.group(1)) if match else -1


def _guess_family(minari_id: str) -> str:
    lowered = minari_id.lower()
    for family, words in (
        ("antmaze", ("antmaze",)),
        ("pointmaze", ("pointmaze",)),
        ("kitchen", ("kitchen",)),
        ("adroit", ("/pen/", "/door/", "/hammer/", "/relocate/")),
        ("locomotion", ("mujoco/", "hopper", "halfcheetah", "walker2d")),
    ):
        if any(word in lowered for word in words):
            return family
    return "other"


def known_names() -> list[str]:
    """Every name ``resolve`` accepts from the table: D4RL names, short names, Minari ids."""
    names = list(REGISTRY) + list(_SHORT_NAMES)
    return names + [entry.minari_id for entry in REGISTRY.values() if entry.minari_id]


def resolve(name: str) -> RegistryEntry:
    """The registry entry for a D4RL name, a short name (no ``-vN``) or a Minari id.

    A Minari id of a known dataset in another version keeps that entry's family, task mode and score rule;
    an unknown Minari id gets a family guessed from its path.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if name in _SHORT_NAMES:
        return _SHORT_NAMES[name]
    if "/" in name:
        for entry in REGISTRY.values():
            if entry.minari_id and _base_id(entry.minari_id) == _base_id(name):
                return replace(entry, minari_id=name, exact=True)
        return RegistryEntry(name, name, _guess_family(name), exact=True)
    raise OfftuneError(f"unknown dataset {name!r}.{suggest(name, known_names() + local_ids())}")


# --- local storage and downloads -------------------------------------------------------------------------


def datasets_root() -> Path:
    """Where Minari keeps datasets (``MINARI_DATASETS_PATH``, else ``~/.minari/datasets``)."""
    from minari.storage import get_dataset_path

    return Path(get_dataset_path())


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
    same = [other for other in available if _base_id(other) == _base_id(minari_id)]
    return max(same, key=_version) if same else None


def _remote_ids() -> list[str] | None:
    """What the installed Minari lists remotely, or None when that fails (offline, no hf extra)."""
    import minari

    try:
        return list(minari.list_remote_datasets())
    except Exception:  # any network or client failure just means "use the table"
        return None


def _how_to_get(entry: RegistryEntry, minari_id: str) -> str:
    name = minari_id if entry.exact else entry.name
    ways = [f"`offtune dataset download {name}` (needs `pip install offtune[hf]` and internet)"]
    if entry.collect_maze:
        ways.insert(0, f"`offtune dataset collect {entry.short_name}" + (f" --id {minari_id}`" if entry.exact else "`"))
    else:
        ways.append(
            f"write your own with `offtune dataset collect --env ENV_ID --policy model.zip --id {minari_id}`"
        )
    return f"dataset {minari_id} is not in {datasets_root()}. Get it with " + ", or ".join(ways) + "."


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
    remote = _remote_ids()
    exact_target = entry.exact and not entry.parts
    targets = entry.parts or (entry.minari_id,)
    for target in targets:
        chosen = target
        if remote is not None:
            same = [other for other in remote if _base_id(other) == _base_id(target)]
            if not same or (exact_target and target not in same):
                raise OfftuneError(f"{target} is not on the Minari remote.{suggest(target, remote)}")
            chosen = target if target in same else max(same, key=_version)
        try:
            minari.download_dataset(chosen)
        except Exception as error:  # network, hub and storage errors all mean the same to the user
            raise OfftuneError(f"downloading {chosen} failed: {error}") from error
    if entry.parts:
        return _combine(entry)
    return entry.minari_id if entry.exact else local_version(entry.minari_id) or entry.minari_id


def _unavailable(entry: RegistryEntry) -> OfftuneError:
    substitute = REGISTRY[entry.substitute]
    env = entry.name.split("-")[0]
    return OfftuneError(
        f"{entry.name} has no Minari port (Minari publishes simple, medium and expert data for {env}). "
        f"Nearest substitute: {substitute.name} ({substitute.minari_id}); mujoco/{env}/simple-v0 has "
        f"lower-quality data."
    )


def _combine(entry: RegistryEntry) -> str:
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
            found = _combine(entry)
        except OfftuneError:
            if not download_missing:
                raise
    if found is None:
        if not download_missing:
            raise OfftuneError(_how_to_get(entry, entry.minari_id))
        found = download(entry.minari_id if entry.exact else entry.name)
    return minari.load_dataset(found)


# --- observations, task modes, loading -------------------------------------------------------------------


def _lookup(observation: Mapping[str, Any], key: str) -> Any:
    for part in key.split("/"):
        observation = observation[part]
    return observation


def flatten_observation(observation: Any, keys: Sequence[str]) -> np.ndarray:
    """Concatenate the ``keys`` of a dict observation (one, or a batch with a leading axis) as float32.

    Nested keys are written ``outer/inner``; with no keys the observation is already flat.
    """
    if not keys:
        return np.asarray(observation, dtype=np.float32)
    parts = [np.atleast_1d(np.asarray(_lookup(observation, key), dtype=np.float32)) for key in keys]
    return np.concatenate(parts, axis=-1)


def default_obs_keys(space: Any) -> list[str]:
    """Key paths of a (nested) Dict space in the space's own order; [] for a flat Box."""
    from gymnasium import spaces

    if not isinstance(space, spaces.Dict):
        return []
    keys: list[str] = []
    for key, subspace in space.spaces.items():
        inner = default_obs_keys(subspace)
        keys += [f"{key}/{k}" for k in inner] if isinstance(subspace, spaces.Dict) else [key]
    return keys


def _obs_dim(space: Any, keys: Sequence[str]) -> int:
    if not keys:
        return int(np.prod(space.shape))
    return int(sum(np.prod(_lookup(space.spaces, key).shape) for key in keys))


def _task_mode(entry: RegistryEntry, task_mode: str | None) -> str | None:
    modes = TASK_MODES.get(entry.family)
    if modes is None:
        if task_mode is not None:
            raise OfftuneError(f"{entry.name} ({entry.family}) has no task modes; omit --task-mode")
        return None
    if task_mode is None:
        return entry.task_mode or "goal"
    if task_mode not in modes:
        raise OfftuneError(f"unknown task mode {task_mode!r} for {entry.family}; choose {' or '.join(modes)}")
    return task_mode


def _live_task(
    family: str, mode: str | None, env_spec: Any, eval_spec: Any
) -> tuple[Any, list[float] | None]:
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


def _score_rule(entry: RegistryEntry, metadata: Mapping[str, Any]) -> ScoreRule:
    """Mazes: success rate; table rules first (Minari refs win for adroit, which were computed on its
    envs); else Minari's ref_min/max_score; else the raw return."""
    if entry.family in MAZE_FAMILIES:
        return SUCCESS
    has_refs = "ref_min_score" in metadata and "ref_max_score" in metadata
    if entry.score_rule is not None and not (entry.family == "adroit" and has_refs):
        return entry.score_rule
    if has_refs:
        return ScoreRule(
            "normalized",
            float(metadata["ref_min_score"]),
            float(metadata["ref_max_score"]),
            "Minari ref_min/max_score",
        )
    return ScoreRule()


def _max_steps(spec: Any) -> int | None:
    if spec.max_episode_steps is not None:
        return int(spec.max_episode_steps)
    import gymnasium as gym

    try:
        return gym.spec(spec.id).max_episode_steps
    except gym.error.Error:
        return None


def load(name: str, task_mode: str | None = None, download: bool = False) -> OfflineData:
    """Load a dataset as flat float32 transitions plus the :class:`DatasetInfo` that describes them.

    Mazes are goal-reaching tasks: rewards are 1 on reaching the goal and those transitions are the only
    terminals; in ``task_mode="d4rl"`` rewards are relabelled to D4RL's single evaluation goal (success
    within 0.5 of the next position), otherwise Minari's own sparse rewards are kept. Elsewhere terminals
    are Minari's terminations. Time-limit truncations are never terminals.
    """
    from gymnasium.envs.registration import EnvSpec

    entry = resolve(name)
    mode = _task_mode(entry, task_mode)
    dataset = open_dataset(entry, download_missing=download)
    metadata = dataset.storage.metadata
    env_spec = dataset.env_spec
    if env_spec is None:
        raise OfftuneError(f"dataset {dataset.id} records no environment spec; offtune needs one")
    eval_json = metadata.get("eval_env_spec")
    eval_spec = EnvSpec.from_json(eval_json) if eval_json else env_spec
    live_spec, goal = _live_task(entry.family, mode, env_spec, eval_spec)
    if entry.family == "kitchen":
        keys = ["observation"]
    else:
        keys = OBS_KEYS.get((entry.family, mode)) or default_obs_keys(dataset.observation_space)

    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "end")}
    for episode in dataset.iterate_episodes():
        flat = flatten_observation(episode.observations, keys)
        rewards = np.asarray(episode.rewards, dtype=np.float32)
        if goal is not None:
            reached = np.linalg.norm(episode.observations["achieved_goal"][1:] - np.asarray(goal), axis=-1)
            rewards = (reached <= D4RL_SUCCESS_RADIUS).astype(np.float32)
        terminals = (
            rewards == 1.0 if entry.family in MAZE_FAMILIES else np.asarray(episode.terminations, bool)
        )
        ends = np.zeros(len(rewards), dtype=bool)
        ends[-1] = True
        for column, values in zip(
            columns.values(), (flat[:-1], flat[1:], episode.actions, rewards, terminals, ends), strict=True
        ):
            column.append(values)
    if not columns["rew"]:
        raise OfftuneError(f"dataset {dataset.id} has no episodes")
    observations, next_observations, actions, rewards, terminals, ends = (
        np.concatenate(values) for values in columns.values()
    )
    action_space = dataset.action_space
    info = DatasetInfo(
        name=entry.name,
        minari_id=dataset.id,
        family=entry.family,
        task_mode=mode,
        obs_keys=list(keys),
        obs_dim=observations.shape[1],
        action_dim=int(np.prod(action_space.shape)),
        action_low=[float(v) for v in np.ravel(action_space.low)],
        action_high=[float(v) for v in np.ravel(action_space.high)],
        env_spec=env_spec.to_json(),
        eval_env_spec=live_spec.to_json(),
        score_rule=_score_rule(entry, metadata),
        max_episode_steps=_max_steps(live_spec),
        goal=goal,
        episodes=len(columns["rew"]),
        steps=len(rewards),
        success_radius=(D4RL_SUCCESS_RADIUS if goal is not None else MINARI_SUCCESS_RADIUS)
        if entry.family in MAZE_FAMILIES
        else None,
        observation_space=str(dataset.observation_space),
    )
    return OfflineData(
        observations=observations,
        actions=actions.astype(np.float32).reshape(len(rewards), -1),
        rewards=rewards.astype(np.float32),
        next_observations=next_observations,
        terminals=terminals.astype(np.float32),
        episode_ends=ends,
        info=info,
    )


def describe(data: OfflineData) -> dict[str, Any]:
    """A JSON-able summary for ``offtune dataset info``: ids, spaces, sizes, returns, score rule."""
    returns = data.episode_returns()
    info = data.info
    return {
        "name": info.name,
        "minari_id": info.minari_id,
        "family": info.family,
        "task_mode": info.task_mode,
        "observation_space": info.observation_space,
        "obs_keys": info.obs_keys,
        "obs_dim": info.obs_dim,
        "action_dim": info.action_dim,
        "action_low": min(info.action_low),
        "action_high": max(info.action_high),
        "env_id": json.loads(info.env_spec)["id"],
        "eval_env_id": json.loads(info.eval_env_spec)["id"],
        "max_episode_steps": info.max_episode_steps,
        "goal": info.goal,
        "episodes": info.episodes,
        "steps": info.steps,
        "terminals": int(data.terminals.sum()),
        "returns": {
            "mean": float(returns.mean()),
            "std": float(returns.std()),
            "min": float(returns.min()),
            "max": float(returns.max()),
        },
        "score_rule": info.score_rule.describe(),
        "dataset_score": float(np.mean(info.score_rule.score(returns))),
    }

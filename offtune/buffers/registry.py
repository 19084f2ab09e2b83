"""Dataset names: the one table from D4RL names to Minari ids, families, task modes and score rules.

``resolve`` accepts a D4RL name (``antmaze-umaze-v2``), its short form without the version
(``antmaze-umaze``) or a Minari id (``D4RL/antmaze/umaze-v1``, known or not). The score rules hold D4RL's
reference returns, so a return becomes the normalised score the papers' tables print.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from offtune.buffers.storage import base_id, local_ids
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


def d4rl_rule(ref_min: float, ref_max: float, what: str) -> ScoreRule:
    """A rule from D4RL's random (``ref_min``) and expert (``ref_max``) returns for ``what``."""
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


REMOTE_NAMESPACES = ("D4RL", "mujoco")
"""The Minari remote's namespaces that offtune's names point into; offtune suggests downloading no other."""
LOCAL_NAMESPACE = "offtune"
"""Where offtune writes the datasets it makes (collected, or combined from downloaded parts): no remote has
these ids."""


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
        return base_id(self.name)

    @property
    def downloadable(self) -> bool:
        """Whether ``offtune dataset download`` can fetch this id itself: published under a remote namespace,
        not made locally."""
        return (
            self.minari_id is not None
            and self.collect_maze is None
            and not self.parts
            and self.minari_id.split("/")[0] in REMOTE_NAMESPACES
        )


def _build_registry() -> dict[str, RegistryEntry]:
    entries: list[RegistryEntry] = []
    for maze in ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse"):
        entries.append(
            RegistryEntry(f"antmaze-{maze}-v2", f"D4RL/antmaze/{maze}-v1", "antmaze", "d4rl", SUCCESS)
        )
        for made in (maze, f"{maze}-d4rl"):  # offtune's ant, Minari's or D4RL's recipe: `dataset collect`
            entries.append(
                RegistryEntry(
                    f"offtune-antmaze-{made}-v0", f"offtune/antmaze/{made}-v0", "antmaze", "d4rl", SUCCESS,
                    collect_maze=made,
                )
            )
    for env, (ref_min, ref_max) in LOCOMOTION_REFS.items():
        rule = d4rl_rule(ref_min, ref_max, env)
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
                    d4rl_rule(ref_min, ref_max, task),
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


def guess_family(minari_id: str) -> str:
    """The family of a Minari id the table does not know, from words in its path."""
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
            if entry.minari_id and base_id(entry.minari_id) == base_id(name):
                return replace(entry, minari_id=name, exact=True)
        return RegistryEntry(name, name, guess_family(name), exact=True)
    raise OfftuneError(f"unknown dataset {name!r}.{suggest(name, known_names() + local_ids())}")

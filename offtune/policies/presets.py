"""Config overrides per dataset family and task, from the official configs of each algorithm.

``preset(algo, info, protocol)`` returns the fields to change on the algorithm's default config (whose
defaults are the official gym-locomotion values); ``--set`` overrides apply on top. A protocol names which of
the official scripts a run follows where they differ: ``finetune`` (pretraining that online fine-tuning will
continue) or ``offline`` (the offline tables); ``default_steps`` gives each protocol's training length.
Sources: ikostrikov/implicit_q_learning ``configs/*`` (IQL), thuml/SPOT ``configs/offline`` and
``configs/online_finetune`` (SPOT), the MISA authors' launch script (MISA), CORL's fine-tune configs where
the authors published none (SPOT on Adroit). Families without an official setting say how their values were chosen.
"""

from __future__ import annotations

from typing import Any

from offtune.buffers.datasets import DatasetInfo
from offtune.errors import OfftuneError, suggest

IQL_FAMILIES: dict[str, dict[str, Any]] = {
    "locomotion": {"expectile": 0.7, "beta": 3.0, "reward_transform": "locomotion_return_scale"},
    "antmaze": {"expectile": 0.9, "beta": 10.0, "reward_transform": "antmaze_minus_one"},
    # No official PointMaze setting. Like AntMaze it is sparse goal reaching (reward 1 near the goal), so it
    # gets AntMaze's expectile, temperature and r - 1 (-1 per step, 0 at the goal).
    "pointmaze": {"expectile": 0.9, "beta": 10.0, "reward_transform": "antmaze_minus_one"},
    "adroit": {"expectile": 0.7, "beta": 0.5, "actor_dropout": 0.1, "reward_transform": "identity"},
    "kitchen": {"expectile": 0.7, "beta": 0.5, "actor_dropout": 0.1, "reward_transform": "identity"},
}

_SPOT_MAZE = {
    "actor_lr": 1e-4,
    "actor_dropout": 0.0,
    "actor_head_init": 1e-3,
    "critic_head_init": 3e-3,
    "normalize_observations": False,
    "reward_transform": "antmaze_minus_one",
}
# SPOT's authors published no Adroit or Kitchen configs. Adroit follows CORL's SPOT fine-tune configs
# (λ 1.0 cooled to 0.5·λ, AntMaze-style actor and heads, no normalisation, raw rewards); Kitchen, also
# narrow human teleoperation data with raw task rewards, takes the same values.
_SPOT_HUMAN_DATA = {
    "lam": 1.0,
    "lam_end": 0.5,
    "actor_lr": 1e-4,
    "actor_dropout": 0.0,
    "actor_head_init": 1e-3,
    "critic_head_init": 3e-3,
    "normalize_observations": False,
    "reward_transform": "identity",
}
SPOT_FAMILIES: dict[str, dict[str, Any]] = {
    "locomotion": {"normalize_observations": True, "reward_transform": "identity"},
    "antmaze": _SPOT_MAZE,
    # No official PointMaze setting: treated like AntMaze (sparse goal reaching; r - 1, raw observations,
    # small heads, actor lr 1e-4), with λ by maze size as below.
    "pointmaze": _SPOT_MAZE,
    "adroit": _SPOT_HUMAN_DATA,
    "kitchen": _SPOT_HUMAN_DATA,
}

# λ per task; the first pattern found in the dataset's name or Minari id wins (longer names first; a maze
# named by size alone gets the play dataset's λ).
SPOT_ANTMAZE_LAMBDA: list[tuple[str, float]] = [
    ("umaze-diverse", 0.25),
    ("umaze", 0.25),
    ("medium-play", 0.05),
    ("medium-diverse", 0.025),
    ("large-play", 0.025),
    ("large-diverse", 0.025),
    ("medium", 0.05),
    ("large", 0.025),
]
# PointMaze: λ of the AntMaze maze of the same size (play variant); bigger mazes need more stitching
# across trajectories, hence a looser support constraint. The open arena is as easy as umaze.
SPOT_POINTMAZE_LAMBDA: list[tuple[str, float]] = [("umaze", 0.25), ("open", 0.25), ("medium", 0.05), ("large", 0.025)]
SPOT_LOCOMOTION_LAMBDA: dict[str, dict[str, float]] = {
    "halfcheetah": {"medium": 0.05, "medium-replay": 0.05, "medium-expert": 1.0},
    "hopper": {"medium": 0.1, "medium-replay": 0.1, "medium-expert": 0.2},
    "walker2d": {"medium": 0.2, "medium-replay": 0.2, "medium-expert": 0.5},
}
# Minari's locomotion data is newly collected (not the D4RL files) and has other quality levels; each is
# mapped to the D4RL dataset it resembles most: expert -> medium-expert (narrow, high-return data),
# simple (a single 1M-step SAC policy) -> medium. A name without a quality word (data one policy wrote, like
# `dataset collect --env Hopper-v5 --policy ...`) is also one policy's data, so it gets medium's λ too rather
# than the command-line default 1.0, which no official hopper or walker2d config uses: on such a hopper dataset
# (20k VAE + 20k updates) λ 1.0 held SPOT at 0.58-0.62x the behaviour policy's score, λ 0.1 reached 0.72-1.09x.
_LOCOMOTION_QUALITY: list[tuple[str, str]] = [
    ("medium-expert", "medium-expert"),
    ("medium-replay", "medium-replay"),
    ("expert", "medium-expert"),
    ("replay", "medium-replay"),
    ("medium", "medium"),
    ("simple", "medium"),
]
# The official SPOT fine-tuning switches γ to 0.995 on the large AntMazes only (longer paths to the goal);
# large PointMaze follows it.
SPOT_ONLINE_DISCOUNT: dict[str, float] = {"large": 0.995}

# MISA: the release has gym-locomotion defaults only; the other families follow the authors' pre-release
# launch script (yueyang130/SEEM ``scripts/launch_job.sh``).
_MISA_ANTMAZE = {
    "reward_transform": "antmaze_misa",
    "critic_lr": 1e-4,
    "bc_weight": 0.5,
    "use_lagrange": True,
    "target_action_gap": 3.0,
    "add_positive": True,
    "layer_norm": True,
}
MISA_FAMILIES: dict[str, dict[str, Any]] = {
    "locomotion": {"reward_transform": "identity"},
    "antmaze": _MISA_ANTMAZE,
    # No PointMaze setting exists: sparse goal reaching like AntMaze, so the same rewards 4(r - 0.5) and the
    # Lagrange form, whose gap 3.0 assumes that reward scale. LayerNorm stays off so that PointMaze
    # checkpoints export to Stable-Baselines3, whose MLPs have no LayerNorm.
    "pointmaze": {**_MISA_ANTMAZE, "layer_norm": False},
    "kitchen": {"reward_transform": "minmax_unit", "critic_lr": 1e-4, "bc_weight": 3.0, "layer_norm": True},
    "adroit": {
        "reward_transform": "minmax_unit",
        "bc_weight": 5.0,
        "layer_norm": True,
        "automatic_entropy": False,
        "alpha_multiplier": 1.0,
    },
}


PROTOCOLS = ("finetune", "offline")
DEFAULT_PROTOCOL = "finetune"

# Where the official offline and fine-tuning scripts of one algorithm differ, per protocol.
PROTOCOL_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "iql": {
        # implicit_q_learning configs/antmaze_finetune_config.py: `config.opt_decay_schedule = None  # Don't
        # decay optimizer lr`, which train_finetune.py applies to the offline phase too; train_offline.py's
        # configs keep `opt_decay_schedule = "cosine"` (the offline tables), the config's default.
        "finetune": {"cosine_actor_lr": False},
    },
}

# MISA's offline training length: experiments/main.py runs `n_epochs` epochs of `n_train_step_per_epoch`
# (1000) steps, with n_epochs 1200 on gym-locomotion, 2000 on AntMaze and 1000 on Kitchen and Adroit in the
# authors' launch script. PointMaze follows AntMaze. Everything else, and every fine-tuning protocol, trains
# 1M steps offline (IQL `max_steps`, SPOT `max_timesteps`, CORL's fine-tuning configs).
MISA_OFFLINE_STEPS: dict[str, int] = {
    "locomotion": 1_200_000,
    "antmaze": 2_000_000,
    "pointmaze": 2_000_000,
    "kitchen": 1_000_000,
    "adroit": 1_000_000,
}
DEFAULT_STEPS = 1_000_000


def check_protocol(protocol: str) -> str:
    key = protocol.lower()
    if key not in PROTOCOLS:
        raise OfftuneError(f"unknown protocol '{protocol}'; choose from {', '.join(PROTOCOLS)}."
                           f"{suggest(key, PROTOCOLS)}")
    return key


def default_steps(algo: str, info: DatasetInfo, protocol: str = DEFAULT_PROTOCOL) -> int:
    """Offline updates of the official script that ``protocol`` follows."""
    if algo == "misa" and check_protocol(protocol) == "offline":
        return MISA_OFFLINE_STEPS.get(info.family, DEFAULT_STEPS)
    return DEFAULT_STEPS


def _task_text(info: DatasetInfo) -> str:
    return f"{info.name} {info.minari_id}".lower()


def _first_match(text: str, table: list[tuple[str, Any]]) -> Any | None:
    return next((value for pattern, value in table if pattern in text), None)


def _spot_task(info: DatasetInfo) -> dict[str, Any]:
    text = _task_text(info)
    overrides: dict[str, Any] = {}
    lam: float | None = None
    if info.family == "antmaze":
        lam = _first_match(text, SPOT_ANTMAZE_LAMBDA)
    elif info.family == "pointmaze":
        lam = _first_match(text, SPOT_POINTMAZE_LAMBDA)
    elif info.family == "locomotion":
        env = next((name for name in SPOT_LOCOMOTION_LAMBDA if name in text), None)
        if env is not None:
            lam = SPOT_LOCOMOTION_LAMBDA[env][_first_match(text, _LOCOMOTION_QUALITY) or "medium"]
    if lam is not None:
        overrides["lam"] = lam
    if info.family in ("antmaze", "pointmaze"):
        discount = _first_match(text, list(SPOT_ONLINE_DISCOUNT.items()))
        if discount is not None:
            overrides["online_discount"] = discount
    return overrides


def preset(algo: str, info: DatasetInfo, protocol: str = DEFAULT_PROTOCOL) -> dict[str, Any]:
    """Config overrides for ``algo`` on the dataset ``info`` (family, then task, then protocol)."""
    if algo == "iql":
        values = dict(IQL_FAMILIES.get(info.family, {}))
    elif algo == "spot":
        values = {**SPOT_FAMILIES.get(info.family, {}), **_spot_task(info)}
    elif algo == "misa":
        values = dict(MISA_FAMILIES.get(info.family, {}))
    else:
        raise OfftuneError(f"unknown algorithm '{algo}'.{suggest(algo, ('iql', 'spot', 'misa'))}")
    return {**values, **PROTOCOL_OVERRIDES.get(algo, {}).get(check_protocol(protocol), {})}

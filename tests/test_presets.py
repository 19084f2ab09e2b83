"""Presets: every family's overrides fit its config, and the per-task values are the official ones."""

from __future__ import annotations

import pytest

from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import REWARD_TRANSFORMS
from offtune.errors import OfftuneError
from offtune.policies import ALGORITHMS
from offtune.policies.config import apply_overrides
from offtune.policies.misa import hmc_adaptation_steps
from offtune.policies.presets import default_steps, preset

FAMILIES = ("locomotion", "antmaze", "pointmaze", "adroit", "kitchen")


def info(name: str, family: str, minari_id: str = "") -> DatasetInfo:
    return DatasetInfo(
        name=name,
        minari_id=minari_id or name,
        family=family,
        task_mode=None,
        obs_keys=[],
        obs_dim=4,
        action_dim=2,
        action_low=[-1.0, -1.0],
        action_high=[1.0, 1.0],
        env_spec="",
        eval_env_spec="",
    )


def configured(algo: str, dataset: DatasetInfo):
    config_cls, _ = ALGORITHMS[algo]
    return apply_overrides(config_cls(), preset(algo, dataset))


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_preset_applies_to_the_config(algo, family):
    config = configured(algo, info(f"{family}-medium-v0", family))
    for name in config.reward_transform.split("+"):
        assert name in REWARD_TRANSFORMS


@pytest.mark.parametrize(
    ("name", "minari_id", "lam"),
    [
        ("halfcheetah-medium-v2", "mujoco/halfcheetah/medium-v0", 0.05),
        ("halfcheetah-medium-replay-v2", "mujoco/halfcheetah/simple-v0", 0.05),
        ("halfcheetah-medium-expert-v2", "offtune/halfcheetah/medium-expert-v0", 1.0),
        ("hopper-medium-v2", "mujoco/hopper/medium-v0", 0.1),
        ("hopper-medium-replay-v2", "mujoco/hopper/simple-v0", 0.1),
        ("hopper-medium-expert-v2", "offtune/hopper/medium-expert-v0", 0.2),
        ("walker2d-medium-v2", "mujoco/walker2d/medium-v0", 0.2),
        ("walker2d-medium-replay-v2", "mujoco/walker2d/simple-v0", 0.2),
        ("walker2d-medium-expert-v2", "offtune/walker2d/medium-expert-v0", 0.5),
        ("mujoco/walker2d/expert-v0", "mujoco/walker2d/expert-v0", 0.5),
    ],
)
def test_spot_locomotion_lambda_per_dataset(name, minari_id, lam):
    config = configured("spot", info(name, "locomotion", minari_id))
    assert config.lam == lam
    assert config.normalize_observations and config.reward_transform == "identity"
    assert config.actor_dropout == 0.1 and config.actor_lr == 3e-4 and config.online_discount is None


@pytest.mark.parametrize(
    ("minari_id", "lam"),
    [
        ("me/hopper/sac-v0", 0.1),
        ("offtune/hopper/hopper-sac-noise30-100k-v0", 0.1),
        ("offtune/walker2d/td3-v0", 0.2),
        ("offtune/halfcheetah/sac-v0", 0.05),
    ],
)
def test_spot_locomotion_without_a_quality_word_gets_the_robots_medium_lambda(minari_id, lam):
    """One policy's data named by robot only must not fall back to the command-line default λ 1.0."""
    assert configured("spot", info(minari_id, "locomotion")).lam == lam


def test_spot_locomotion_on_an_unlisted_robot_keeps_the_default_lambda():
    assert "lam" not in preset("spot", info("offtune/ant/sac-v0", "locomotion"))


@pytest.mark.parametrize(
    ("name", "minari_id", "lam", "online_discount"),
    [
        ("antmaze-umaze-v2", "D4RL/antmaze/umaze-v1", 0.25, None),
        ("antmaze-umaze-diverse-v2", "D4RL/antmaze/umaze-diverse-v1", 0.25, None),
        ("antmaze-medium-play-v2", "D4RL/antmaze/medium-play-v1", 0.05, None),
        ("antmaze-medium-diverse-v2", "D4RL/antmaze/medium-diverse-v1", 0.025, None),
        ("antmaze-large-play-v2", "D4RL/antmaze/large-play-v1", 0.025, 0.995),
        ("antmaze-large-diverse-v2", "D4RL/antmaze/large-diverse-v1", 0.025, 0.995),
        ("my-antmaze-medium", "local/antmaze/medium-v0", 0.05, None),
    ],
)
def test_spot_antmaze_settings(name, minari_id, lam, online_discount):
    config = configured("spot", info(name, "antmaze", minari_id))
    assert (config.lam, config.online_discount) == (lam, online_discount)
    assert config.reward_transform == "antmaze_minus_one" and not config.normalize_observations
    assert (config.actor_lr, config.critic_lr, config.actor_dropout) == (1e-4, 3e-4, 0.0)
    assert (config.actor_head_init, config.critic_head_init) == (1e-3, 3e-3)


@pytest.mark.parametrize(
    ("name", "lam", "online_discount"),
    [("offtune/pointmaze/umaze-v0", 0.25, None), ("maze2d-medium-v1", 0.05, None), ("pointmaze-large", 0.025, 0.995)],
)
def test_spot_pointmaze_follows_antmaze_by_maze_size(name, lam, online_discount):
    config = configured("spot", info(name, "pointmaze"))
    assert (config.lam, config.online_discount) == (lam, online_discount)
    assert config.reward_transform == "antmaze_minus_one" and not config.normalize_observations


def test_iql_family_settings():
    locomotion = configured("iql", info("hopper-medium-v2", "locomotion"))
    assert (locomotion.expectile, locomotion.beta, locomotion.reward_transform) == (
        0.7,
        3.0,
        "locomotion_return_scale",
    )
    assert not locomotion.normalize_observations and locomotion.dataset_action_clip == 1 - 1e-5
    for family in ("antmaze", "pointmaze"):
        maze = configured("iql", info(f"{family}-umaze-v2", family))
        assert (maze.expectile, maze.beta, maze.reward_transform) == (0.9, 10.0, "antmaze_minus_one")
    for family in ("adroit", "kitchen"):
        human = configured("iql", info(f"{family}-human-v1", family))
        assert (human.expectile, human.beta, human.actor_dropout) == (0.7, 0.5, 0.1)
        assert human.reward_transform == "identity"


def test_misa_family_settings():
    antmaze = configured("misa", info("antmaze-umaze-v2", "antmaze"))
    assert antmaze.reward_transform == "antmaze_misa" and antmaze.use_lagrange and antmaze.add_positive
    assert (antmaze.critic_lr, antmaze.target_action_gap, antmaze.layer_norm) == (1e-4, 3.0, True)
    locomotion = configured("misa", info("hopper-medium-v2", "locomotion"))
    assert locomotion.reward_transform == "identity" and locomotion.bc_weight == 0.5
    assert not locomotion.use_lagrange and locomotion.dataset_action_clip == 0.999
    adroit = configured("misa", info("pen-human-v1", "adroit"))
    assert adroit.reward_transform == "minmax_unit" and adroit.bc_weight == 5.0 and not adroit.automatic_entropy


def test_unknown_family_keeps_defaults_and_unknown_algorithm_is_a_user_error():
    assert preset("iql", info("mujoco/ant/medium-v0", "other"), "offline") == {}
    with pytest.raises(OfftuneError, match="Did you mean: spot"):
        preset("spott", info("hopper-medium-v2", "locomotion"))


def test_iql_protocols_follow_the_official_scripts():
    """train_finetune.py's antmaze_finetune_config has no lr decay (offline phase included); train_offline.py
    configs decay the actor lr with a cosine."""
    antmaze = info("antmaze-umaze-v2", "antmaze")
    assert configured("iql", antmaze).cosine_actor_lr is False
    assert apply_overrides(ALGORITHMS["iql"][0](), preset("iql", antmaze, "offline")).cosine_actor_lr is True
    assert apply_overrides(ALGORITHMS["iql"][0](), preset("iql", antmaze, "finetune")).cosine_actor_lr is False
    with pytest.raises(OfftuneError, match="unknown protocol 'ofline'.*offline"):
        preset("iql", antmaze, "ofline")


@pytest.mark.parametrize(("algo", "family", "protocol", "steps"), [
    ("misa", "locomotion", "offline", 1_200_000),
    ("misa", "antmaze", "offline", 2_000_000),
    ("misa", "kitchen", "offline", 1_000_000),
    ("misa", "adroit", "offline", 1_000_000),
    ("misa", "antmaze", "finetune", 1_000_000),
    ("iql", "antmaze", "offline", 1_000_000),
    ("spot", "locomotion", "offline", 1_000_000),
])
def test_training_length_per_protocol(algo, family, protocol, steps):
    """MISA's experiments/main.py: n_epochs × 1000 steps, 1200 gym, 2000 AntMaze, 1000 Kitchen/Adroit."""
    assert default_steps(algo, info("x", family), protocol) == steps


def test_misa_adapts_its_hmc_step_size_over_80_percent_of_the_burn_in():
    """algos/misa.py: num_adaptation_steps=int(self.num_burnin_steps * 0.8)."""
    misa_config = ALGORITHMS["misa"][0]
    assert hmc_adaptation_steps(misa_config()) == 4
    assert hmc_adaptation_steps(misa_config(hmc_burnin_steps=10)) == 8
    assert hmc_adaptation_steps(misa_config(hmc_burnin_steps=10, hmc_adaptation_steps=3)) == 3

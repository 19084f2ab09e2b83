"""Reward transforms and the observation normaliser against numbers worked out by hand."""

import numpy as np
import pytest

from offtune.buffers.transforms import Normalizer, RewardTransform, reward_transform
from offtune.errors import OfftuneError


def test_antmaze_transforms_match_the_official_codes():
    rewards = np.array([0.0, 1.0])
    assert reward_transform("antmaze_minus_one", np.array([]))(rewards).tolist() == [-1.0, 0.0]
    assert reward_transform("antmaze_misa", np.array([]))(rewards).tolist() == [-2.0, 2.0]


def test_locomotion_scale_uses_the_spread_of_episode_returns():
    transform = reward_transform("locomotion_return_scale", np.array([100.0, 300.0, 500.0]))
    assert transform.scale == pytest.approx(1000.0 / 400.0)
    assert transform(np.array([2.0]))[0] == pytest.approx(5.0)


def test_minmax_unit_maps_the_step_reward_range_onto_minus_one_one():
    """MISA's experiments/main.py: (r - min_r) / (max_r - min_r), then (x - 0.5) * 2, over step rewards."""
    step_rewards = np.array([1.0, 5.0, 2.0, 3.0])
    transform = reward_transform("minmax_unit", np.array([100.0, -50.0]), step_rewards)
    assert (transform.scale, transform.shift) == (0.5, -1.5)
    assert transform(np.array([1.0, 5.0, 3.0, 2.0])).tolist() == [-1.0, 1.0, 0.0, -0.5]
    assert reward_transform("minmax_unit", np.array([3.0]), np.array([2.0, 2.0]))(np.array([5.0])).tolist() == [5.0]


def test_composition_applies_left_to_right():
    chained = RewardTransform(2.0, 1.0, "a").then(RewardTransform(3.0, -1.0, "b"))
    assert chained(np.array([1.0]))[0] == pytest.approx(3.0 * (2.0 * 1.0 + 1.0) - 1.0)
    assert reward_transform("antmaze_minus_one+antmaze_misa", np.array([]))(np.array([1.0]))[0] == -2.0


def test_unknown_transform_suggests_names():
    with pytest.raises(OfftuneError, match="antmaze_minus_one"):
        reward_transform("antmaze_minus_on", np.array([]))


def test_normalizer_round_trips_and_uses_eps():
    observations = np.array([[0.0, 1.0], [2.0, 1.0]], dtype=np.float32)
    normalizer = Normalizer.fit(observations)
    np.testing.assert_allclose(normalizer(observations), [[-1 / 1.001, 0.0], [1 / 1.001, 0.0]], rtol=1e-6)
    restored = Normalizer.from_dict(normalizer.to_dict())
    np.testing.assert_array_equal(restored(observations), normalizer(observations))

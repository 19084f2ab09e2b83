import numpy as np
import pytest
import torch

from offtune.buffers.replay import Batch, ReplayBuffer


def offline_batch(count: int = 10) -> Batch:
    rng = np.random.default_rng(0)
    return Batch(
        rng.normal(size=(count, 3)).astype(np.float32),
        rng.uniform(-1, 1, size=(count, 2)).astype(np.float32),
        np.arange(count, dtype=np.float32),
        rng.normal(size=(count, 3)).astype(np.float32),
        (np.arange(count) % 4 == 0).astype(np.float32),
    )


def test_sample_returns_rows_of_the_dataset_with_their_fields_aligned():
    data = offline_batch()
    buffer = ReplayBuffer(3, 2, data, seed=1)
    batch = buffer.sample(64)
    rows = batch.rewards.long()
    assert batch.observations.shape == (64, 3) and batch.actions.shape == (64, 2)
    assert batch.rewards.shape == (64,) and batch.dones.shape == (64,)
    torch.testing.assert_close(batch.observations, torch.as_tensor(data.observations)[rows])
    torch.testing.assert_close(batch.next_observations, torch.as_tensor(data.next_observations)[rows])
    torch.testing.assert_close(batch.dones, torch.as_tensor(data.dones)[rows])


def test_same_seed_same_batches():
    first = ReplayBuffer(3, 2, offline_batch(), seed=7).sample(32).rewards
    second = ReplayBuffer(3, 2, offline_batch(), seed=7).sample(32).rewards
    assert torch.equal(first, second)


def online_rows(count: int, start: float) -> tuple:
    return (np.zeros((count, 3)), np.zeros((count, 2)), start + np.arange(count), np.zeros((count, 3)),
            np.zeros(count))


def test_online_ring_overwrites_oldest_and_keeps_dataset():
    buffer = ReplayBuffer(3, 2, offline_batch(10), online_capacity=4)
    buffer.add(*online_rows(3, 100))
    buffer.add(*online_rows(3, 200))
    assert len(buffer) == 14
    assert buffer.storage[10:, 5].tolist() == [201.0, 202.0, 102.0, 200.0]  # the ring wrapped at the 4th row
    assert sorted(buffer.storage[:10, 5].tolist()) == list(range(10))


def test_append_mode_samples_uniformly_over_both_parts():
    buffer = ReplayBuffer(3, 2, offline_batch(10), online_capacity=10, seed=0)
    buffer.add(*online_rows(10, 100))
    rewards = buffer.sample(20000).rewards
    online_share = (rewards >= 100).float().mean().item()
    assert online_share == pytest.approx(0.5, abs=0.02)


def test_online_ratio_fixes_the_online_share_of_every_batch():
    buffer = ReplayBuffer(3, 2, offline_batch(1000), online_capacity=10, online_ratio=0.25, seed=0)
    assert (buffer.sample(100).rewards < 1000).all()
    buffer.add(*online_rows(2, 5000))
    rewards = buffer.sample(100).rewards
    assert int((rewards >= 5000).sum()) == 25


def test_online_state_round_trip_restores_data_and_sampler():
    buffer = ReplayBuffer(3, 2, offline_batch(), online_capacity=5, seed=3)
    buffer.add(*online_rows(7, 100))
    state = buffer.online_state()
    expected = buffer.sample(16).rewards
    restored = ReplayBuffer(3, 2, offline_batch(), online_capacity=5, seed=99)
    restored.load_online_state(state)
    assert torch.equal(restored.sample(16).rewards, expected)
    restored.add(*online_rows(1, 300))
    buffer.add(*online_rows(1, 300))
    assert torch.equal(restored.storage, buffer.storage)


def test_bad_online_ratio_is_rejected():
    with pytest.raises(ValueError):
        ReplayBuffer(3, 2, offline_batch(), online_ratio=1.5)

"""SliceSampler: uniform and foreground-aware batches, pure functions of (seed, rank, t)."""

from __future__ import annotations

import pytest
import torch

from trmcore.training.sampling import SliceSampler, foreground_slots


def _old_uniform_batch(num_slices, batch_size, seed, rank, world_size, iteration):
    """The sampler before foreground-aware batches (kept as the oracle of foreground_share=0)."""
    shard = torch.arange(rank, num_slices, world_size)
    positions = torch.arange(iteration * batch_size, (iteration + 1) * batch_size)
    out = []
    for p in positions.tolist():
        epoch, k = divmod(p, len(shard))
        g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 7919 + epoch)
        out.append(int(shard[torch.randperm(len(shard), generator=g)][k]))
    return out


@pytest.mark.parametrize("world_size, rank", [(1, 0), (3, 2)])
def test_share_zero_is_the_uniform_sampler(world_size, rank):
    sampler = SliceSampler(23, 5, seed=7, rank=rank, world_size=world_size)
    for t in range(12):
        assert sampler.batch(t).tolist() == _old_uniform_batch(23, 5, 7, rank, world_size, t)


def test_nnunet_slot_rule():
    assert foreground_slots(8, 1 / 3) == 3  # nnU-Net: round(8 * 0.67) = 5 random slices, 3 forced
    assert foreground_slots(4, 1 / 3) == 1
    assert foreground_slots(2, 1 / 3) == 1
    assert foreground_slots(8, 0.0) == 0 and foreground_slots(8, 1.0) == 8
    with pytest.raises(ValueError):
        foreground_slots(8, 1.5)


def test_foreground_slots_draw_only_foreground_slices_of_the_shard():
    foreground = torch.zeros(40, dtype=torch.bool)
    foreground[[3, 8, 9, 21, 30, 33]] = True
    for rank in (0, 1):
        sampler = SliceSampler(40, 8, seed=1, rank=rank, world_size=2, foreground=foreground, foreground_share=1 / 3)
        assert sampler.uniform_per_batch == 5 and sampler.foreground_per_batch == 3
        seen = set()
        for t in range(20):
            batch = sampler.batch(t)
            assert (batch % 2 == rank).all()  # the static shard
            fg_part = batch[5:]
            assert foreground[fg_part].all()
            seen.update(fg_part.tolist())
        # Every foreground slice of the shard is visited (a permutation per pass).
        assert seen == {i for i in range(40) if foreground[i] and i % 2 == rank}


def test_batches_are_a_pure_function_of_seed_rank_iteration():
    foreground = torch.arange(30) % 4 == 0
    a = SliceSampler(30, 6, seed=3, foreground=foreground, foreground_share=0.5)
    b = SliceSampler(30, 6, seed=3, foreground=foreground, foreground_share=0.5)
    assert [b.batch(t).tolist() for t in (17, 2, 9)] == [a.batch(t).tolist() for t in (17, 2, 9)]
    c = SliceSampler(30, 6, seed=4, foreground=foreground, foreground_share=0.5)
    assert any(a.batch(t).tolist() != c.batch(t).tolist() for t in range(5))


def test_shard_without_foreground_falls_back_to_uniform():
    sampler = SliceSampler(10, 4, foreground=torch.zeros(10, dtype=torch.bool), foreground_share=1 / 3)
    assert sampler.foreground_per_batch == 0
    assert sampler.batch(3).tolist() == _old_uniform_batch(10, 4, 0, 0, 1, 3)


def test_foreground_share_needs_the_flags():
    with pytest.raises(ValueError, match="foreground flag"):
        SliceSampler(10, 4, foreground_share=0.5)

"""Seeded, stateless batch sampling with DistributedSampler-style sharding.

Rank ``r`` of ``W`` owns the slices ``r, r + W, r + 2W, ...`` for the whole
run (a static shard, so per-slice statistics such as LEEP maps are computed
once, by the rank that uses them). Within its shard each rank walks through a
fresh seeded permutation per epoch. The batch of iteration ``t`` is a pure
function of ``(seed, rank, t)``, which is what makes ``--resume`` exact
without saving any sampler state.

Foreground-aware batches (as nnU-Net's ``oversample_foreground_percent``):
with ``foreground_share = p > 0`` the first ``round(B * (1 - p))`` slots of a
batch walk the shard's permutation as above and the remaining slots walk a
second seeded permutation over the shard's slices that hold foreground. Where
foreground is rare (tumours, lesions) this keeps every batch from being
(almost) all background, for every method alike. ``p = 0`` gives exactly the
uniform batches.
"""

from __future__ import annotations

from typing import Optional

import torch

from trmcore.training.shards import shard_indices

# Seed offset of the foreground walk, so it never repeats the uniform walk's permutations.
_FOREGROUND_STREAM = 104_729


def foreground_slots(batch_size: int, share: float) -> int:
    """Slots of a batch drawn from foreground slices: ``B - round(B * (1 - share))`` (nnU-Net's rule)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"foreground_share must be in [0, 1], got {share!r}")
    return batch_size - int(round(batch_size * (1.0 - share)))


class SliceSampler:
    """Indices of the slices of each iteration's batch.

    Args:
        num_slices: S, slices in the training set (all ranks together).
        batch_size: slices per batch on this rank.
        seed: base seed of the permutations.
        rank, world_size: this process's place among the training processes.
        foreground: bool ``[S]``, True for slices holding foreground (any label other than
            background and ignore); needed when ``foreground_share > 0``.
        foreground_share: share of each batch drawn from foreground slices (0 = uniform batches).
            A shard without any foreground slice falls back to uniform batches.

    Example:
        >>> sampler = SliceSampler(10, batch_size=4, seed=0)
        >>> sampler.batch(0).shape
        torch.Size([4])
    """

    def __init__(self, num_slices: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 foreground: Optional[torch.Tensor] = None, foreground_share: float = 0.0) -> None:
        if num_slices < world_size:
            raise ValueError(f"{num_slices} training slices cannot be shared by {world_size} processes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard = shard_indices(num_slices, rank, world_size)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.foreground_shard = self.shard[:0]
        fg_slots = foreground_slots(batch_size, foreground_share)
        if fg_slots > 0:
            if foreground is None or len(foreground) != num_slices:
                raise ValueError("foreground_share > 0 needs a foreground flag per training slice")
            self.foreground_shard = self.shard[torch.as_tensor(foreground, dtype=torch.bool)[self.shard]]
        # No foreground slice in this shard: every slot is uniform.
        self.foreground_per_batch = fg_slots if len(self.foreground_shard) else 0
        self.uniform_per_batch = batch_size - self.foreground_per_batch

    def _walk(self, pool: torch.Tensor, stream: int, iteration: int, count: int) -> torch.Tensor:
        """``count`` entries of ``pool`` for ``iteration``: a fresh seeded permutation per pass over ``pool``."""
        size = len(pool)
        start = iteration * count
        positions = torch.arange(start, start + count)
        epochs = positions // size
        picked = torch.empty(count, dtype=torch.int64)
        for epoch in torch.unique(epochs).tolist():
            mask = epochs == epoch
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + epoch + stream)
            picked[mask] = pool[torch.randperm(size, generator=generator)][positions[mask] % size]
        return picked

    def batch(self, iteration: int) -> torch.Tensor:
        """Global slice indices (int64 ``[batch_size]``) of batch ``iteration``; batches wrap across epochs.

        The uniform slots come first, then the foreground slots.
        """
        uniform = self._walk(self.shard, 0, iteration, self.uniform_per_batch)
        if not self.foreground_per_batch:
            return uniform
        foreground = self._walk(self.foreground_shard, _FOREGROUND_STREAM, iteration, self.foreground_per_batch)
        return torch.cat([uniform, foreground])

"""Seeded, stateless batch sampling with DistributedSampler-style sharding.

Rank ``r`` of ``W`` owns the slices ``r, r + W, r + 2W, ...`` for the whole
run (a static shard, so per-slice statistics such as LEEP maps are computed
once, by the rank that uses them). Within its shard each rank walks through a
fresh seeded permutation per epoch. The batch of iteration ``t`` is a pure
function of ``(seed, rank, t)``, which is what makes ``--resume`` exact
without saving any sampler state.
"""

from __future__ import annotations

import torch

from trmcore.training.shards import shard_indices


class SliceSampler:
    """Indices of the slices of each iteration's batch.

    Args:
        num_slices: S, slices in the training set (all ranks together).
        batch_size: slices per batch on this rank.
        seed: base seed of the permutations.
        rank, world_size: this process's place among the training processes.

    Example:
        >>> sampler = SliceSampler(10, batch_size=4, seed=0)
        >>> sampler.batch(0).shape
        torch.Size([4])
    """

    def __init__(self, num_slices: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_slices < world_size:
            raise ValueError(f"{num_slices} training slices cannot be shared by {world_size} processes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shard = shard_indices(num_slices, rank, world_size)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + epoch)
        return self.shard[torch.randperm(len(self.shard), generator=generator)]

    def batch(self, iteration: int) -> torch.Tensor:
        """Global slice indices (int64 ``[batch_size]``) of batch ``iteration``; batches wrap across epochs."""
        size = len(self.shard)
        start = iteration * self.batch_size
        positions = torch.arange(start, start + self.batch_size)
        epochs = positions // size
        picked = torch.empty(self.batch_size, dtype=torch.int64)
        for epoch in torch.unique(epochs).tolist():
            mask = epochs == epoch
            picked[mask] = self._epoch_order(epoch)[positions[mask] % size]
        return picked

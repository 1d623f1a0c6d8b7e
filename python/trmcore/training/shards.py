"""The training set as tensors, and which of its slices each data-parallel rank owns.

Rank ``r`` of ``W`` processes owns slices ``r, r + W, r + 2W, ...`` (:func:`shard_indices`);
the sampler, the loss weightings and the LEEP statistics all use this one formula.
"""

from __future__ import annotations

from typing import Iterator

import torch


def shard_indices(num_slices: int, rank: int, world_size: int) -> torch.Tensor:
    """int64 ``[ceil((num_slices - rank) / world_size)]``: the slices rank ``rank`` of ``world_size`` owns."""
    return torch.arange(rank, num_slices, world_size)


class TrainingSlices:
    """The training set as tensors plus this rank's shard of it.

    Args:
        images: float32 ``[S, Cin, H, W]``; labels: int64 ``[S, H, W]``.
        shard: int64 indices of the slices this rank trains on (:func:`shard_indices`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shard: torch.Tensor) -> None:
        self.images = images
        self.labels = labels
        self.shard = shard

    def shard_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.shard), batch_size):
            yield self.shard[start:start + batch_size]

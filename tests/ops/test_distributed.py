"""LeepAccumulator.all_reduce sums the joint across torch.distributed ranks (gloo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trmcore import ops

WORLD = 2


def _data():
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(6, 4, 10, 9, generator=gen)
    labels = torch.randint(0, 3, (6, 10, 9), generator=gen)
    labels[2, :4] = -100
    return logits, labels


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        logits, labels = _data()
        acc = ops.LeepAccumulator(3)
        for i in range(rank, logits.shape[0], WORLD):  # each rank sees its own shard
            acc.update(logits[i:i + 1], labels[i:i + 1])
        joint = acc.all_reduce()
        if rank == 0:
            torch.save({"sums": joint.sums, "count": joint.count}, out_file)
        # Both ranks leave the collective phase together: tearing down gloo while
        # the peer is still finishing the all-reduce aborted a worker once in CI
        # ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_all_reduce_matches_single_process(tmp_path):
    out_file = tmp_path / "joint.pt"
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True)
    reduced = torch.load(out_file)
    logits, labels = _data()
    whole = ops.leep_joint(logits, labels, 3)
    assert reduced["count"] == whole.count
    np.testing.assert_allclose(reduced["sums"].numpy(), whole.sums.numpy(), rtol=1e-12)


def test_all_reduce_without_process_group_is_identity():
    logits, labels = _data()
    acc = ops.LeepAccumulator(3)
    acc.update(logits, labels)
    assert acc.all_reduce() is acc.joint
    with pytest.raises(ValueError, match="no valid pixels yet"):
        ops.LeepAccumulator(3).joint

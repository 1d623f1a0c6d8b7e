"""Data-parallel fine-tuning: a 2-process gloo run on the CPU."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from trmcore.data import parse_task
from trmcore.training.checkpoint import load_run
from trmcore.training.distributed import DistContext, setup_distributed
from trmcore.training.trainer import finetune, prepare_data
from trmcore.training.weighting import leep_statistics

from .helpers import tiny_config

TARGET = parse_task("T2", "CSF")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _joint(phantom, source_run, ctx):
    source, info = load_run(source_run)
    data = prepare_data(phantom, TARGET, tiny_config(method="trm"), info.divisor, ctx, progress=False)
    return leep_statistics(source, data.slices, 2, ctx), len(data.slices.shard), len(data.slices.labels)


def _worker(rank: int, world_size: int, port: int, phantom, source_run, out_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    try:
        joint, shard, total = _joint(phantom, source_run, ctx)
        torch.save({"sums": joint.sums, "count": joint.count, "shard": shard, "total": total},
                   out_dir / f"joint{rank}.pt")
        finetune(phantom, TARGET, source_run, out_dir / "run", tiny_config(method="trm", iterations=3, val_every=0),
                 progress=False)
        torch.save(load_run(out_dir / "run")[0].state_dict() if rank == 0 else None, out_dir / f"done{rank}.pt")
    finally:
        ctx.close()


def test_two_process_gloo_finetune(phantom, source_run, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), phantom, source_run, tmp_path), nprocs=2, join=True)
    single, _, total = _joint(phantom, source_run, DistContext())
    for rank in range(2):
        reduced = torch.load(tmp_path / f"joint{rank}.pt")
        # Each rank saw only its shard, yet holds the joint of the whole training set.
        assert reduced["shard"] < reduced["total"] == total
        assert reduced["count"] == single.count
        # Equal up to float32 rounding of the logits (batches differ between the two runs).
        torch.testing.assert_close(reduced["sums"], single.sums, rtol=1e-7, atol=1e-4)
        assert not torch.allclose(reduced["sums"], single.sums / 2, rtol=1e-3)
    assert (tmp_path / "done0.pt").exists() and (tmp_path / "done1.pt").exists()
    model, info = load_run(tmp_path / "run")
    assert info.iterations_done == 3 and info.method == "trm"
    assert not list((tmp_path / "run").glob("*.tmp"))

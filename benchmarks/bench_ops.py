"""Speed of trmcore.ops against torch eager and a common NumPy LEEP, measured in one run.

Usage::

    python benchmarks/bench_ops.py                 # CPU, 2 threads
    python benchmarks/bench_ops.py --device cuda   # GPU (needs a CUDA build)
    python benchmarks/bench_ops.py --isa baseline  # force the x86-64 baseline kernels (no AVX2)
    python benchmarks/bench_ops.py --device cuda --no-numpy --json bench.json   # figures as JSON too

For each case it prints the time of
- the LEEP map (joint + pixel map) with trmcore, with the fastest of two torch
  eager compositions, and with a NumPy LEEP written the common way (a loop over
  classes on flattened pixels);
- the risk-weighted loss forward + backward with trmcore and with the eager
  ``(F.cross_entropy(..., reduction="none") * w).sum() / n_fg``;
and the ratios, plus the effective bandwidth of each trmcore op next to a
plain memory copy of the logits measured in the same run.
Targets (issue 2): CPU with 2 threads, LEEP map >= 5x and loss >= 2.5x torch
eager; GPU, both at >= 70% of the copy bandwidth.

On CUDA the cases have 16 times as many images (about 1 GB of logits each), so
that the data is many times the L2 cache (50-60 MB on H100/H200) and one call
runs far longer than a kernel launch; times are taken with CUDA events.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from trmcore import ops
from trmcore.ops._native import native

IGNORE = -100


@dataclass
class Case:
    name: str
    n: int
    classes: int
    size: int


CASES = [Case("N=64 Z=C=4 240x240", 64, 4, 240), Case("N=16 Z=C=16 256x256", 16, 16, 256)]
# The same shapes with 16x the images for a GPU (see the module docstring).
CUDA_CASES = [Case("N=1024 Z=C=4 240x240", 1024, 4, 240), Case("N=256 Z=C=16 256x256", 256, 16, 256)]
GPU_TARGET = 0.70  # share of the copy bandwidth each op should reach on a GPU


def timeit(fn: Callable[[], object], device: str, repeats: int) -> float:
    """Median time of ``fn`` in seconds, after one warm-up call (CUDA events on a GPU)."""
    fn()
    times: List[float] = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
            fn()
            end_event.record()
            end_event.synchronize()
            times.append(start_event.elapsed_time(end_event) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_leep_map_onehot(logits: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """Eager LEEP map: joint through a one-hot matmul, map through a gather of P(y|z)."""
    theta = torch.softmax(logits, dim=1)
    valid = labels != IGNORE
    safe = torch.where(valid, labels, 0)
    onehot = F.one_hot(safe, c).to(theta.dtype) * valid.unsqueeze(-1)  # [N, H, W, C]
    joint = torch.einsum("nzhw,nhwc->cz", theta, onehot).double()
    cond = (joint / joint.sum(0, keepdim=True).clamp_min(1e-300)).to(theta.dtype)
    eep = torch.einsum("cz,nzhw->nchw", cond, theta).gather(1, safe.unsqueeze(1)).squeeze(1)
    return torch.where(valid, torch.log(eep.clamp_min(torch.finfo(torch.float32).tiny)), 0.0)


def torch_leep_map_indexadd(logits: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    """Eager LEEP map: joint through index_add over valid pixels."""
    z = logits.shape[1]
    theta = torch.softmax(logits, dim=1)
    valid = labels != IGNORE
    pixels = theta.permute(0, 2, 3, 1)[valid].double()  # [M, Z]
    joint = torch.zeros(c, z, dtype=torch.float64, device=logits.device).index_add_(0, labels[valid], pixels)
    cond = (joint / joint.sum(0, keepdim=True).clamp_min(1e-300)).to(theta.dtype)
    safe = torch.where(valid, labels, 0)
    eep = (cond[safe] * theta.permute(0, 2, 3, 1)).sum(-1)
    return torch.where(valid, torch.log(eep.clamp_min(torch.finfo(torch.float32).tiny)), 0.0)


def numpy_leep_map(logits: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    """LEEP as commonly written: flatten pixels, softmax, loop over classes."""
    z = logits.shape[1]
    theta = np.moveaxis(logits, 1, -1).reshape(-1, z)
    theta = np.exp(theta - theta.max(axis=1, keepdims=True))
    theta /= theta.sum(axis=1, keepdims=True)
    y = labels.reshape(-1)
    joint = np.zeros((c, z))
    for label in range(c):
        joint[label] = theta[y == label].sum(axis=0)
    cond = joint / joint.sum(axis=0, keepdims=True)
    eep = np.zeros(len(y))
    for label in range(c):
        mask = y == label
        eep[mask] = theta[mask] @ cond[label]
    return np.log(np.maximum(eep, np.finfo(np.float32).tiny)).reshape(labels.shape)


def trm_leep_map(logits: torch.Tensor, labels: torch.Tensor, c: int) -> torch.Tensor:
    return ops.pixel_leep(logits, labels, ops.leep_joint(logits, labels, c))


def eager_loss_step(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
    x = logits.detach().requires_grad_(True)
    n_fg = ((labels != 0) & (labels != IGNORE)).sum().clamp_min(1)
    loss = (F.cross_entropy(x, labels, reduction="none", ignore_index=IGNORE) * weights).sum() / n_fg
    loss.backward()


def trm_loss_step(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> None:
    x = logits.detach().requires_grad_(True)
    ops.risk_weighted_ce(x, labels, weights).backward()


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9


def run_case(case: Case, device: str, repeats: int, with_numpy: bool) -> Tuple[List[str], Dict[str, object]]:
    """Printed rows and the figures of one case (times in ms, bandwidths in GB/s)."""
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(case.n, case.classes, case.size, case.size, generator=gen) * 2).to(device)
    labels = torch.randint(0, case.classes, (case.n, case.size, case.size), generator=gen).to(device)
    weights = (torch.rand(case.n, case.size, case.size, generator=gen) * 9 + 1).to(device)
    logit_bytes = logits.numel() * logits.element_size()
    map_bytes = labels.numel() * 4
    label_bytes = labels.numel() * labels.element_size()

    copy_dst = torch.empty_like(logits)
    t_copy = timeit(lambda: copy_dst.copy_(logits), device, repeats)
    copy_bw = gbps(2 * logit_bytes, t_copy)

    t_trm_map = timeit(lambda: trm_leep_map(logits, labels, case.classes), device, repeats)
    t_eager_map = min(timeit(lambda: torch_leep_map_onehot(logits, labels, case.classes), device, repeats),
                      timeit(lambda: torch_leep_map_indexadd(logits, labels, case.classes), device, repeats))
    map_traffic = 2 * (logit_bytes + label_bytes) + map_bytes  # two passes over logits, one map written
    t_trm_loss = timeit(lambda: trm_loss_step(logits, labels, weights), device, repeats)
    t_eager_loss = timeit(lambda: eager_loss_step(logits, labels, weights), device, repeats)
    loss_traffic = 2 * (logit_bytes + label_bytes + map_bytes) + logit_bytes  # fwd + bwd reads, grad written

    copy_target = f"; target >= {GPU_TARGET:.0%}" if device == "cuda" else ""
    figures: Dict[str, object] = {
        "case": case.name, "device": device, "copy_ms": t_copy * 1e3, "copy_gbps": copy_bw,
        "ops": {
            "leep_map": {"ms": t_trm_map * 1e3, "gbps": gbps(map_traffic, t_trm_map),
                         "of_copy": gbps(map_traffic, t_trm_map) / copy_bw, "eager_ms": t_eager_map * 1e3,
                         "vs_eager": t_eager_map / t_trm_map},
            "loss_fwd_bwd": {"ms": t_trm_loss * 1e3, "gbps": gbps(loss_traffic, t_trm_loss),
                             "of_copy": gbps(loss_traffic, t_trm_loss) / copy_bw, "eager_ms": t_eager_loss * 1e3,
                             "vs_eager": t_eager_loss / t_trm_loss},
        },
    }
    rows = [
        f"## {case.name} ({device}, {torch.get_num_threads() if device == 'cpu' else 'GPU'} threads)",
        f"memory copy of the logits      {t_copy * 1e3:9.2f} ms  {copy_bw:7.1f} GB/s",
        f"LEEP map   trmcore             {t_trm_map * 1e3:9.2f} ms  {gbps(map_traffic, t_trm_map):7.1f} GB/s "
        f"({gbps(map_traffic, t_trm_map) / copy_bw:5.0%} of copy{copy_target})",
        f"LEEP map   torch eager (best)  {t_eager_map * 1e3:9.2f} ms  -> trmcore {t_eager_map / t_trm_map:5.1f}x "
        f"(target >= 5x on CPU)",
    ]
    if with_numpy:
        logits_np, labels_np = logits.cpu().numpy(), labels.cpu().numpy()
        t_numpy = timeit(lambda: numpy_leep_map(logits_np, labels_np, case.classes), "cpu", max(1, repeats // 3))
        rows.append(f"LEEP map   NumPy (class loop)  {t_numpy * 1e3:9.2f} ms  -> trmcore {t_numpy / t_trm_map:5.1f}x")
        figures["numpy_leep_map_ms"] = t_numpy * 1e3
    rows += [
        f"loss f+b   trmcore             {t_trm_loss * 1e3:9.2f} ms  {gbps(loss_traffic, t_trm_loss):7.1f} GB/s "
        f"({gbps(loss_traffic, t_trm_loss) / copy_bw:5.0%} of copy{copy_target})",
        f"loss f+b   torch eager         {t_eager_loss * 1e3:9.2f} ms  -> trmcore {t_eager_loss / t_trm_loss:5.1f}x "
        f"(target >= 2.5x on CPU)",
    ]
    return rows, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and trmcore (default 2)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy baseline")
    parser.add_argument("--isa", default="auto", choices=["auto", "baseline", "avx2"],
                        help="instruction-set variant of the CPU kernels (default: the best this CPU has)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the figures as JSON (read by scripts/gpu_check.sh)")
    args = parser.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and native().built_with_cuda()):
        parser.error("--device cuda needs a CUDA device and a CUDA build of trmcore "
                     "(bash scripts/build_inplace.sh --cuda)")
    torch.set_num_threads(args.threads)
    native().set_cpu_isa(args.isa)
    print(f"trmcore CPU kernels: {native().cpu_isa()} variant\n")
    with torch.no_grad():
        # warm the custom-op registration outside the timings
        ops.leep(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64), 2)
    header: Dict[str, object] = {"device": args.device, "repeats": args.repeats, "torch": torch.__version__}
    if args.device == "cuda":
        header["gpu"] = torch.cuda.get_device_name()
        print(f"GPU: {header['gpu']}; cases with 16x the images of the CPU cases, CUDA event timing\n")
    else:
        header["threads"] = torch.get_num_threads()
    results = []
    for case in CUDA_CASES if args.device == "cuda" else CASES:
        rows, figures = run_case(case, args.device, args.repeats, with_numpy=not args.no_numpy)
        results.append(figures)
        print("\n".join(rows))
        print()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.json is not None:
        partial = args.json.with_name(args.json.name + ".partial")
        partial.write_text(json.dumps({**header, "cases": results}, indent=2) + "\n")
        os.replace(partial, args.json)  # a reader never sees half a file
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

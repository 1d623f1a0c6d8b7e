"""Affinity speed: the cached, parallel computation against the per-pair baseline, same run.

12 tasks (4 phantom sites x 3 channels, label CSF), K = 10 volumes per task,
so 78 task pairs x 100 volume pairs. The fast path
(:func:`trmcore.selection.affinity.affinity_from_volumes`) resizes and
PCA-transforms each of the 120 volumes once, gets every SSIM cross moment from
one Gram matrix and runs the pairs on all cores. The baseline
(:func:`trmcore.selection.affinity.affinity_reference`) recomputes resize and
PCA of both volumes for every pair, serially, as the authors' script does.

The baseline is slow (minutes per task pair at 128^3), so by default it runs
on ``--baseline-pairs`` task pairs and its time is extrapolated linearly to
all 78 (every task pair costs the same: K x K pairs of equally sized volumes);
``--baseline-pairs 0`` runs it on all of them. Both use the volumes already in
memory (loading is not timed). The values are checked to agree.

    PYTHONPATH=python python benchmarks/bench_affinity.py [--size 128] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from trmcore.selection.affinity import AffinityConfig, TaskVolumes, affinity_from_volumes, affinity_reference
from trmcore.selection.tasks import SelectionTask


def load_tasks(root: Path, sites, channels, samples: int):
    from trmcore.data import TaskSpec, load_task_volumes

    tasks = []
    for site, channel in itertools.product(sites, channels):
        volumes, _ = load_task_volumes(root, TaskSpec([channel], ["CSF"], site), progress=False)
        volumes = volumes[:samples]
        tasks.append(TaskVolumes(SelectionTask(site, (channel,), ("CSF",)), [v.image for v in volumes],
                                 [v.label for v in volumes], len(volumes)))
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="resize cube edge (default 128, as [SEQ])")
    parser.add_argument("--samples", type=int, default=10, help="K (default 10)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48), help="phantom volume shape")
    parser.add_argument("--workers", type=int, default=None, help="threads for the fast path (default: all cores)")
    parser.add_argument("--baseline-pairs", type=int, default=2,
                        help="task pairs the baseline runs on, then extrapolated (0 = all; default 2)")
    args = parser.parse_args()

    from trmcore.data import make_phantom
    from trmcore.selection._blas import cpu_count

    sites, channels = ["site-A", "site-B", "site-C", "site-D"], ["T1", "T2", "FLAIR"]
    with tempfile.TemporaryDirectory() as tmp:
        root = make_phantom(Path(tmp) / "ph", n_cases=4 * args.samples, sites=4, size=tuple(args.shape), seed=0)
        tasks = load_tasks(root, sites, channels, args.samples)
    n_tasks = len(tasks)
    all_pairs = n_tasks * (n_tasks + 1) // 2
    print(f"{n_tasks} tasks x K={args.samples}, volumes {tuple(args.shape)} -> {args.size}^3, "
          f"{all_pairs} task pairs, {cpu_count()} cores")

    config = AffinityConfig(size=args.size, samples=args.samples, workers=args.workers, progress=False)
    start = time.perf_counter()
    fast = affinity_from_volumes(tasks, config)
    fast_s = time.perf_counter() - start
    print(f"cached + parallel   : {fast_s:8.2f} s for all {all_pairs} task pairs")

    pairs = all_pairs if args.baseline_pairs <= 0 else min(args.baseline_pairs, all_pairs)
    # Off-diagonal pairs (a, b) with a < b, plus the check below against the fast matrices.
    subset = [(a, b) for a in range(n_tasks) for b in range(a + 1, n_tasks)][:pairs] if pairs < all_pairs else None
    start = time.perf_counter()
    if subset is None:
        slow = affinity_reference(tasks, config)
        slow_s = time.perf_counter() - start
        np.testing.assert_allclose(slow.W, fast.W, rtol=1e-6)
        np.testing.assert_allclose(slow.S, fast.S, rtol=1e-5, atol=1e-6)
        print(f"per-pair baseline   : {slow_s:8.2f} s for all {all_pairs} task pairs")
    else:
        for a, b in subset:
            part = affinity_reference([tasks[a], tasks[b]], config)
            np.testing.assert_allclose(part.W[0, 1], fast.W[a, b], rtol=1e-6)
            np.testing.assert_allclose(part.S[0, 1], fast.S[a, b], rtol=1e-5, atol=1e-6)
        measured = time.perf_counter() - start
        # affinity_reference on two tasks also computes the two diagonal pairs: 3 task pairs per call.
        per_pair = measured / (3 * len(subset))
        slow_s = per_pair * all_pairs
        print(f"per-pair baseline   : {measured:8.2f} s for {3 * len(subset)} task pairs "
              f"-> {slow_s:8.2f} s extrapolated to {all_pairs}")
    print(f"speed-up            : {slow_s / fast_s:8.1f}x (target >= 5x on 2 cores)")


if __name__ == "__main__":
    main()

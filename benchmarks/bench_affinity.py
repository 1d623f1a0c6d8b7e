"""Affinity speed: the cached, parallel computation against the per-pair baseline, same run.

12 tasks (4 phantom sites x 3 channels, label CSF), K = 10 volumes per task,
so 78 task pairs x 100 volume pairs. The fast path
(:func:`trmcore.selection.affinity.affinity_from_volumes`) resizes and
PCA-transforms each of the 120 volumes once, gets every SSIM cross moment from
one Gram matrix and runs the pairs on all cores. The baseline
(:func:`trmcore.selection.affinity.affinity_reference`) recomputes resize and
PCA of both volumes for every pair, serially, as the authors' script does.

The baseline is slow (minutes per task pair at 128^3), so by default it is
timed on only ``--baseline-pairs`` N = 6 of the 78 task pairs (spread evenly
over the pair list) and its time for all 78 is EXTRAPOLATED linearly (every
task pair costs the same: K x K pairs of equally sized volumes). The output
says how many pairs were timed and marks the extrapolated figures;
``--baseline-pairs 0`` times the baseline on all pairs (no extrapolation).
Both sides use the volumes already in memory (loading is not timed). Every
timed baseline pair is checked against the fast matrices.

    PYTHONPATH=python python benchmarks/bench_affinity.py [--size 128] [--workers 2] [--baseline-pairs 6]

A quick check that the script works (seconds, not a measurement):

    PYTHONPATH=python python benchmarks/bench_affinity.py --size 16 --samples 2 --shape 24 24 8 --baseline-pairs 3
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from trmcore.selection.affinity import AffinityConfig, TaskVolumes, affinity_from_volumes, reference_task_pair
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
    parser.add_argument("--baseline-pairs", type=int, default=6,
                        help="task pairs the per-pair baseline is timed on; its time for all pairs is then "
                        "extrapolated linearly (0 = time all pairs, no extrapolation; default 6)")
    args = parser.parse_args()

    from trmcore.data import make_phantom
    from trmcore.selection._blas import cpu_count, single_threaded_blas

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
    print(f"cached + parallel   : {fast_s:8.2f} s for all {all_pairs} task pairs (measured)")

    if args.baseline_pairs < 0:
        parser.error("--baseline-pairs must be >= 0")
    every_pair = [(a, b) for a in range(n_tasks) for b in range(a, n_tasks)]
    timed = len(every_pair) if args.baseline_pairs == 0 else min(args.baseline_pairs, len(every_pair))
    # Spread the timed pairs over the list (diagonal and off-diagonal pairs cost the same).
    chosen = sorted({int(k) for k in np.linspace(0, len(every_pair) - 1, timed)})
    subset = [every_pair[k] for k in chosen]
    with single_threaded_blas():  # as affinity_reference: one thread, BLAS included
        # Untimed warm-up on one volume pair (first-call costs would otherwise be multiplied by the extrapolation).
        first = TaskVolumes(tasks[0].task, tasks[0].images[:1], tasks[0].labels[:1], tasks[0].n_cases)
        reference_task_pair(first, first, config)
        start = time.perf_counter()
        for a, b in subset:
            w, s = reference_task_pair(tasks[a], tasks[b], config)
            np.testing.assert_allclose(w, fast.W[a, b], rtol=1e-6)
            np.testing.assert_allclose(s, fast.S[a, b], rtol=1e-5, atol=1e-6)
    measured = time.perf_counter() - start
    names = [t.task.name for t in tasks]
    if len(subset) == all_pairs:
        slow_s = measured
        print(f"per-pair baseline   : {slow_s:8.2f} s for all {all_pairs} task pairs (measured, not extrapolated)")
        print(f"speed-up            : {slow_s / fast_s:8.1f}x measured (target >= 5x on 2 cores)")
        return
    slow_s = measured / len(subset) * all_pairs
    print(f"per-pair baseline   : {measured:8.2f} s measured on {len(subset)} of {all_pairs} task pairs "
          f"({100 * len(subset) / all_pairs:.0f}%): " + ", ".join(f"{names[a]}~{names[b]}" for a, b in subset))
    print(f"                      {slow_s:8.2f} s EXTRAPOLATED to all {all_pairs} task pairs "
          f"(x {all_pairs}/{len(subset)}; not measured)")
    print(f"speed-up            : {slow_s / fast_s:8.1f}x = extrapolated baseline / measured fast path "
          f"(baseline timed on {len(subset)} of {all_pairs} pairs; --baseline-pairs 0 times all; "
          "target >= 5x on 2 cores)")

if __name__ == "__main__":
    main()

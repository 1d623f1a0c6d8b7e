"""Cost of trm's weighting variants (issue 24): the weights of one batch and a whole fine-tuning step.

Baseline, measured in the same run: ``risk_balance="none"`` (TRM Eq. 7's weights R as
published). Variants: "per-class" and "foreground" (R divided by its class's mean over
the training pixels; one extra gather and division per pixel), annealing (one
multiply-add), and the one-off cost of the class means at the start of a run (a pass
of the risk maps over the training set). Prints milliseconds and the ratio to the
baseline; target: a variant's step within 1.05x of the baseline's.

    PYTHONPATH=python python benchmarks/bench_risk_balance.py [--threads 2] [--size 128] [--slices 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trmcore import ops
from trmcore.models import create_unet
from trmcore.training.distributed import setup_distributed
from trmcore.training.shards import TrainingSlices
from trmcore.training.trainer import TrainStep
from trmcore.training.weighting import RiskMapWeighting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ctx = setup_distributed("cpu")
    images = torch.randn(args.slices, 1, args.size, args.size)
    labels = (torch.rand(args.slices, args.size, args.size) < 0.02).long()  # sparse foreground, as a lesion
    slices = TrainingSlices(images, labels, torch.arange(args.slices))
    source = create_unet(in_channels=1, num_classes=2, depth=3, width=args.width).eval()

    variants = (("none", {}), ("per-class", {"balance": "per-class"}), ("foreground", {"balance": "foreground"}),
                ("none + anneal", {"anneal_over": 100}))
    RiskMapWeighting(source, slices, 2, ctx, amp=False)  # warm-up: first-call allocations are nobody's cost
    built, setup_ms = {}, {}
    for name, kwargs in variants:
        start = time.perf_counter()
        built[name] = RiskMapWeighting(source, slices, 2, ctx, amp=False, **kwargs)
        setup_ms[name] = (time.perf_counter() - start) * 1e3

    index = torch.arange(args.batch)
    batch_labels = labels[index]
    model = create_unet(in_channels=1, num_classes=2, depth=3, width=args.width)
    model.freeze_encoder()
    step = TrainStep(model)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step(weighting):
        def run():
            weights = weighting.weights(index, batch_labels)
            loss = ops.risk_weighted_ce(step(images[index]), batch_labels, weights, normalize="batch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    print(f"{args.slices} slices {args.size}x{args.size}, batch {args.batch}, U-Net width {args.width}, "
          f"{args.threads} thread(s); median of {args.repeats}")
    print(f"{'variant':<16}{'setup ms':>10}{'weights ms':>12}{'ratio':>8}{'step ms':>10}{'ratio':>8}")
    # Round-robin over the variants, so a change of machine load hits all of them alike.
    weight_ms = {name: [] for name in built}
    step_ms = {name: [] for name in built}
    steps = {name: train_step(weighting) for name, weighting in built.items()}
    for name in built:
        steps[name]()  # warm-up
    for _ in range(args.repeats):
        for name, weighting in built.items():
            start = time.perf_counter()
            weighting.weights(index, batch_labels)
            weight_ms[name].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            steps[name]()
            step_ms[name].append((time.perf_counter() - start) * 1e3)
    base_w, base_s = statistics.median(weight_ms["none"]), statistics.median(step_ms["none"])
    for name in built:
        w, s_ = statistics.median(weight_ms[name]), statistics.median(step_ms[name])
        print(f"{name:<16}{setup_ms[name]:>10.1f}{w:>12.3f}{w / base_w:>7.2f}x{s_:>10.1f}{s_ / base_s:>7.2f}x")


if __name__ == "__main__":
    main()

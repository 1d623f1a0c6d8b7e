"""Augmentation cost as a share of a training step (target <= 15%).

Times, on the same batches and device, (a) one full-training step of a U-Net
(forward, risk-weighted CE, backward, Adam) and (b) ``augment_batch`` with the
default AugmentConfig (nnU-Net-like probabilities) over fresh steps, and prints
their ratio. Both are measured in the same run, interleaved in rounds, and
the medians are compared, so a loaded machine slows both alike. A second line
times every transform applied with probability 1 (the worst case).

    PYTHONPATH=python python benchmarks/bench_augment.py [--threads 2] [--size 128] [--batch 8] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import fields, replace

import torch

from trmcore import ops
from trmcore.models import create_unet
from trmcore.training.augment import AugmentConfig, Batch, augment_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 1, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(0, 2, (args.batch, args.size, args.size), generator=generator).to(device)
    weights = (1 + 9 * torch.rand(args.batch, args.size, args.size, generator=generator)).to(device)
    batch = Batch(images, labels, weights)

    torch.manual_seed(0)
    model = create_unet(in_channels=1, num_classes=2, depth=args.depth, width=args.width).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_steps(n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            loss = ops.risk_weighted_ce(model(images), labels, weights, normalize="batch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return (time.perf_counter() - start) / n

    step_counter = [0]

    def augment_steps(config: AugmentConfig, n: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            augment_batch(batch, config, seed=0, rank=0, step=step_counter[0])
            step_counter[0] += 1
        _sync(device)
        return (time.perf_counter() - start) / n

    default = AugmentConfig()
    every = replace(default, **{f.name: 1.0 for f in fields(AugmentConfig) if f.name.startswith("p_")})
    train_steps(1), augment_steps(default, 2), augment_steps(every, 1)  # warm-up
    step_times, default_times, every_times = [], [], []
    for _ in range(args.rounds):
        step_times.append(train_steps(args.steps))
        default_times.append(augment_steps(default, args.steps * 4))
        every_times.append(augment_steps(every, args.steps))
    step, aug, worst = (statistics.median(v) for v in (step_times, default_times, every_times))
    print(f"device {device}, {args.threads} threads, U-Net depth {args.depth} width {args.width}, "
          f"batch {args.batch} x 1 x {args.size} x {args.size}")
    print(f"training step {step * 1e3:.1f} ms; augmentation (defaults) {aug * 1e3:.2f} ms = "
          f"{100 * aug / step:.1f}% of a step (target <= 15%)")
    print(f"every transform on every slice (p = 1): {worst * 1e3:.2f} ms = {100 * worst / step:.1f}% of a step")


if __name__ == "__main__":
    main()

"""Fine-tuning speed: frozen encoder under no_grad versus the naive loop.

Both loops train the decoder and head of the same U-Net with Adam on the same
batches and loss (trmcore.ops.risk_weighted_ce with risk maps); the encoder's
BatchNorm is in eval mode in both.

- trmcore: the encoder is frozen (requires_grad False) and its features are
  computed under torch.no_grad, so no graph and no saved activations exist for it
  (trmcore.training.trainer.TrainStep).
- naive: the whole model runs in autograd (encoder parameters still require
  grad) and only the optimiser is restricted to decoder + head, as in a plain
  ``Adam(decoder.parameters())`` fine-tuning script.

Prints iterations/s of each and the ratio (target >= 1.3x on CPU with 2 threads).

    PYTHONPATH=python python benchmarks/bench_finetune.py [--threads 2] [--size 128] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trmcore import ops
from trmcore.models import create_unet
from trmcore.training.trainer import TrainStep


def make_loop(frozen: bool, args, images, labels, weights):
    torch.manual_seed(0)
    model = create_unet(in_channels=1, num_classes=2, depth=args.depth, width=args.width)
    if frozen:
        model.freeze_encoder()
        step = TrainStep(model)
    else:
        step = model
    model.train()
    model.encoder.eval()  # the naive loop keeps BN frozen too, so both do the same arithmetic
    params = list(model.decoder.parameters()) + list(model.head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def run(iterations: int) -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            logits = step(images)
            loss = ops.risk_weighted_ce(logits, labels, weights, normalize="batch")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return iterations / (time.perf_counter() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=128, help="slice H = W")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=10, help="iterations per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 1, args.size, args.size, generator=generator)
    labels = torch.randint(0, 2, (args.batch, args.size, args.size), generator=generator)
    weights = 1 + 9 * torch.rand(args.batch, args.size, args.size, generator=generator)

    loops = {"trmcore (frozen encoder under no_grad)": make_loop(True, args, images, labels, weights),
             "naive (whole model in autograd)": make_loop(False, args, images, labels, weights)}
    for run in loops.values():
        run(2)  # warm-up
    rates = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, run in loops.items():
            rates[name].append(run(args.iterations))

    print(f"U-Net depth {args.depth} width {args.width}, batch {args.batch} x 1 x {args.size} x {args.size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"  {name:<40} {value:7.2f} it/s")
    fast, naive = medians.values()
    print(f"  speed-up: {fast / naive:.2f}x (target >= 1.3x)")


if __name__ == "__main__":
    main()

"""Risk maps of a 3-D source over one 240x240x155 volume against the source's own forward pass (issue 21).

Usage::

    python benchmarks/bench_riskmap3d.py                  # CPU, torch's thread count
    python benchmarks/bench_riskmap3d.py --device cuda    # GPU (needs a CUDA build of trmcore)
    python benchmarks/bench_riskmap3d.py --size 96 96 64  # a smaller volume, for a quick look

Measures, in one run, ``--repeats`` timings (after a warm-up each) of
- the source's forward pass on the volume (no grad, eval mode, the same autocast), the baseline;
- the transfer risk maps with :func:`trmcore.training.loss.source_risk_maps`: the LEEP
  joint over the volume (pass 1) and T and R of it (pass 2, reusing pass 1's logits for
  a one-volume set), i.e. everything `trm riskmap` computes per volume;
- the ops alone on the volume's logits (leep_joint + pixel_leep + risk_map);
- `trm riskmap`'s path for a 3-D source (an nnU-Net 3d configuration):
  :func:`trmcore.training.riskmap3d.risk_volumes_3d` on the unpadded volume (padding,
  the network through :class:`trmcore.training.sources.VolumeNetwork`, T and R cropped back);
and prints ratio = risk maps / forward (the median over forward/maps pairs timed in turns).
Target: <= 1.5x.

The source is a 3-D U-Net (MONAI's ``UNet`` when MONAI is installed, else a plain torch
one of the same shape: 4 levels, channels 16-32-64-128, two 3x3x3 convolutions per
level), Z = 4 source classes, one input channel; the volume is padded to a multiple of 8.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, List

import torch
from torch import nn

from trmcore import ops
from trmcore.training.loss import source_risk_maps
from trmcore.training.precision import autocast_for

SOURCE_CLASSES, TARGET_CLASSES, CHANNELS = 4, 2, (16, 32, 64, 128)


class PlainUNet3d(nn.Module):
    """A 3-D U-Net without MONAI: conv blocks, max-pooling, transposed-conv up-sampling, skips."""

    def __init__(self, channels=CHANNELS, out_channels=SOURCE_CLASSES):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(0.01),
                                 nn.Conv3d(cout, cout, 3, padding=1), nn.InstanceNorm3d(cout), nn.LeakyReLU(0.01))

        self.down = nn.ModuleList([block(1 if i == 0 else channels[i - 1], c) for i, c in enumerate(channels)])
        self.up = nn.ModuleList([nn.ConvTranspose3d(channels[i + 1], channels[i], 2, stride=2)
                                 for i in range(len(channels) - 1)])
        self.merge = nn.ModuleList([block(2 * channels[i], channels[i]) for i in range(len(channels) - 1)])
        self.head = nn.Conv3d(channels[0], out_channels, 1)

    def forward(self, x):
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else nn.functional.max_pool3d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.head(x)


def make_source() -> nn.Module:
    try:
        from monai.networks.nets import UNet
    except ImportError:
        return PlainUNet3d()
    return UNet(spatial_dims=3, in_channels=1, out_channels=SOURCE_CLASSES, channels=CHANNELS, strides=(2, 2, 2),
                num_res_units=1)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> List[float]:
    fn()  # warm-up (allocator, kernels, cuDNN choice)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), help="volume size D H W")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (median reported)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    source = make_source().to(device).eval()
    padded = [-(-s // 8) * 8 for s in args.size]
    image = torch.randn(1, 1, *padded, device=device)
    labels = (image[:, 0] > 0.5).long()  # target classes 0 and 1
    inside = torch.zeros_like(labels, dtype=torch.bool)
    inside[:, :args.size[0], :args.size[1], :args.size[2]] = True
    labels[~inside] = -100  # the padding takes part in nothing
    batches = [(image, labels)]
    amp = device.type == "cuda"

    def forward():
        with torch.no_grad(), autocast_for(device, amp):
            return source(image)

    def risk_maps():
        maps = source_risk_maps(source, batches, TARGET_CLASSES, device=device, amp=amp)
        return [item.risk for item in maps]

    with torch.no_grad(), autocast_for(device, amp):
        logits = source(image).float()

    def ops_only():
        joint = ops.leep_joint(logits, labels, TARGET_CLASSES)
        return ops.risk_map(ops.pixel_leep(logits, labels, joint), labels)

    name = type(source).__module__.split(".")[0] + "." + type(source).__name__
    voxels = image[0, 0].numel()
    print(f"source {name}, channels {CHANNELS}, Z={SOURCE_CLASSES}, volume {tuple(args.size)} padded to "
          f"{tuple(padded)} ({voxels / 1e6:.1f} M voxels), device {device}, threads {torch.get_num_threads()}")
    # Forward and risk maps timed in turns, each pair under about the same machine load; the ratio
    # reported is the median of the per-pair ratios (a shared machine's load swings more than the ratio).
    forward_times, map_times, ratios = [], [], []
    for _ in range(args.repeats):
        forward_times += timed(forward, device, 1)
        map_times += timed(risk_maps, device, 1)
        ratios.append(map_times[-1] / forward_times[-1])
    t_forward, t_maps, ratio = (statistics.median(v) for v in (forward_times, map_times, ratios))
    t_ops = statistics.median(timed(ops_only, device, args.repeats))
    print(f"source forward pass          {t_forward * 1e3:10.1f} ms")
    pairs = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"risk maps (joint + T + R)    {t_maps * 1e3:10.1f} ms   ratio {ratio:.2f}x "
          f"(per pair: {pairs}; target <= 1.5x: {'met' if ratio <= 1.5 else 'NOT met'})")
    print(f"  of which the ops alone     {t_ops * 1e3:10.1f} ms   ({t_ops / t_forward:.2f}x the forward pass)")

    import numpy as np

    from trmcore.data.volumes import Volume
    from trmcore.training.riskmap3d import risk_volumes_3d
    from trmcore.training.sources import VolumeNetwork

    crop = tuple(slice(0, n) for n in args.size)  # the unpadded volume: image [C, X, Y, Z], labels [X, Y, Z]
    volume = Volume("bench", None, image[0][(slice(None),) + crop].cpu().numpy(), labels[0][crop].cpu().numpy(),
                    np.eye(4))
    network = VolumeNetwork(source, (0, 1, 2))

    def trm_riskmap():
        return risk_volumes_3d(network, [volume], TARGET_CLASSES, (8, 8, 8), device)

    file_times, file_ratios = [], []
    for _ in range(args.repeats):
        forward_times.append(timed(forward, device, 1)[0])
        file_times += timed(trm_riskmap, device, 1)
        file_ratios.append(file_times[-1] / forward_times[-1])
    ratio = statistics.median(file_ratios)
    print(f"trm riskmap, 3-D source      {statistics.median(file_times) * 1e3:10.1f} ms   ratio {ratio:.2f}x "
          f"(per pair: {', '.join(f'{r:.2f}' for r in file_ratios)}; target <= 1.5x: "
          f"{'met' if ratio <= 1.5 else 'NOT met'})")


if __name__ == "__main__":
    main()

"""Per-volume inference latency: onnxruntime (CPU) against torch eager, same model, same run.

A U-Net of the default size (width 32, depth 4, 1 channel, 4 classes; random
weights, BatchNorm in eval mode) is saved as a run and exported with ``trm
export``'s code path. Each volume is segmented end to end -- z-score, slicing,
padding, network, unpadding, argmax to label values -- by

- onnxruntime: :class:`trmcore.infer.Segmenter` (graph optimisation
  ORT_ENABLE_ALL, ``--threads`` intra-op threads, ``--batch-size`` slices per call);
- torch eager: the same preprocessing and batching around ``model(x)`` under
  ``torch.inference_mode()`` with ``torch.set_num_threads(--threads)``: the fair
  baseline for plain PyTorch inference.

Volumes are 240x240x155 (BraTS) and 182x218x182 (MNI 1 mm), filled with a
smooth random "head" (zero background), so every axial slice is run. Each
timing is the median of ``--repeats`` runs after one warm-up on a few slices.
Prints seconds per volume and the speed-up ratio torch / onnxruntime
(target >= 1.3).

    PYTHONPATH=python python benchmarks/bench_infer.py [--threads 2] [--batch-size 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = [(240, 240, 155), (182, 218, 182)]


def make_volume(shape, seed: int) -> np.ndarray:
    """A float32 head-like volume: an ellipsoid of noisy intensities on a zero background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    inside = sum(g * g for g in grids) < 0.8
    volume = (400 + 100 * rng.standard_normal(shape)).astype(np.float32)
    return np.where(inside, volume, 0).astype(np.float32)


def build_model(workdir: Path, width: int, depth: int, num_classes: int, batch_size: int, threads: int):
    import torch

    from trmcore.export import export_run
    from trmcore.infer import Segmenter
    from trmcore.models import UNet, UNetConfig
    from trmcore.training import RunInfo
    from trmcore.training.checkpoint import save_run

    torch.manual_seed(0)
    config = UNetConfig(in_channels=1, num_classes=num_classes, depth=depth, width=width)
    model = UNet(config).eval()
    names = ["background"] + [f"class{k}" for k in range(1, num_classes)]
    info = RunInfo(model=config, channels=["T1"], label_names=names, label_values=list(range(num_classes)),
                   axis=2, divisor=config.divisor)
    save_run(workdir / "run", model, info)
    result = export_run(workdir / "run", workdir / "model.onnx")
    print(f"exported: max |onnxruntime - torch| logits = {result.max_abs_diff:.3g}")
    segmenter = Segmenter(result.path, providers="cpu", threads=threads, batch_size=batch_size)
    return model, segmenter


def torch_predict(model, segmenter, volume: np.ndarray, batch_size: int) -> np.ndarray:
    """The same pipeline as Segmenter.predict_volume with torch running the network."""
    import torch

    from trmcore.data import pad_to_multiple, unpad

    meta = segmenter.metadata
    image = segmenter.prepare(volume)  # [Cin, X, Y, Z] z-scored
    slices = np.moveaxis(image, meta.axis + 1, 0)
    values = np.asarray(meta.label_values, np.uint8)
    out = np.empty(image.shape[1:], np.uint8)
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch_size):
            padded, pad = pad_to_multiple(np.ascontiguousarray(slices[start:start + batch_size]), meta.divisor)
            logits = unpad(model(torch.from_numpy(padded)), pad)
            classes = logits.argmax(dim=1).numpy()
            selector = [slice(None)] * 3
            selector[meta.axis] = slice(start, start + len(classes))
            out[tuple(selector)] = np.moveaxis(values[classes], 0, meta.axis)
    return out


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                        help="volume shapes, e.g. 240x240x155,182x218x182")
    args = parser.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"torch {torch.__version__} | onnxruntime {onnxruntime.__version__} | threads {args.threads} | "
          f"batch {args.batch_size} slices | U-Net width {args.width} depth {args.depth} | "
          f"median of {args.repeats}")
    with tempfile.TemporaryDirectory() as tmp:
        model, segmenter = build_model(Path(tmp), args.width, args.depth, args.classes, args.batch_size,
                                       args.threads)
        rows = []
        for i, shape in enumerate(shapes):
            volume = make_volume(shape, seed=i)
            warm = volume[..., : args.batch_size]
            segmenter.predict_volume(warm)
            torch_predict(model, segmenter, warm, args.batch_size)
            t_ort, labels_ort = timed(lambda: segmenter.predict_volume(volume), args.repeats)
            t_torch, labels_torch = timed(lambda: torch_predict(model, segmenter, volume, args.batch_size),
                                          args.repeats)
            agree = float((labels_ort == labels_torch).mean())
            rows.append((shape, t_ort, t_torch, agree))
            print(f"{'x'.join(map(str, shape)):>12}: onnxruntime {t_ort:7.2f} s | torch eager {t_torch:7.2f} s | "
                  f"ratio torch/ort {t_torch / t_ort:5.2f}x | labels agree {agree:.5f}", flush=True)
    total_ort = sum(r[1] for r in rows)
    total_torch = sum(r[2] for r in rows)
    print(f"overall ratio torch/onnxruntime: {total_torch / total_ort:.2f}x (target >= 1.3)")


if __name__ == "__main__":
    main()

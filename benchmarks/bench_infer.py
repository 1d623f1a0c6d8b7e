"""Per-volume `trm predict` latency: today's path, cropping, int8 and fp16, and torch eager, in one run.

A U-Net of the default size (width 32, depth 4; T1 -> background, CSF, GM,
WM) is trained briefly on a phantom of the benchmark's first shape (`trm
train`'s code, a few dozen iterations: enough for clear tissue classes, so
that label agreement means something) and exported with `trm export`'s code:
float32, int8 (static quantisation calibrated on the run's training slices)
and, with ``--fp16``, float16. Each volume -- a phantom T1 of each shape
(240x240x155 BraTS, 182x218x182 the MNI 1 mm layout of the MS patient), plus
any ``--volume`` files -- is segmented end to end by ``predict_files`` (the
function behind `trm predict`: read NIfTI, z-score, slice, crop, pad,
network, argmax, write NIfTI) with

- today:        float32, every slice whole (``--no-crop``), as before cropping;
- crop fp32:    float32, slices with foreground only, in-plane window (default);
- crop int8:    the int8 model, cropped;
- crop fp16:    the float16 model, cropped (``--fp16``);
- torch eager:  the same pipeline with torch running the float32 network,
  uncropped (``torch.inference_mode()``, same threads): what a user of plain
  PyTorch gets.

The paths alternate inside each repeat (so a change of machine load hits all
of them) and each time is the median of ``--repeats``. Printed per volume:
seconds, speed-up over today's path and over torch eager, the network's
executed GFLOP (counted with torch's FlopCounterMode on the slice shapes
actually run; int8 operations counted as FLOP) and their rate against the
machine's float32 peak (a float32 GEMM of torch measured in the same run),
and the labels' agreement with today's path (per-class Dice, minimum over
classes, and the share of equal voxels).

Targets (issue 13): crop int8 >= 3x today and >= 5x torch eager with Dice >= 0.99;
crop fp32 >= 1.5x today.

    PYTHONPATH=python nice -n 10 python benchmarks/bench_infer.py [--threads 2] [--repeats 3]
        [--volume ../shared/data/msles-patient07/T1.nii.gz] [--workdir /tmp/bench-infer] [--fp16]
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
LABELS = "CSF,GM,WM"


def make_run(workdir: Path, shape, iterations: int, width: int, depth: int, threads: int) -> Path:
    """A run trained on a 3-case phantom of ``shape`` (reused when ``workdir`` already holds it)."""
    from trmcore.data import make_phantom, parse_task
    from trmcore.models import UNetConfig
    from trmcore.training.config import TrainConfig
    from trmcore.training.trainer import train

    run = workdir / "run"
    if (run / "run.json").is_file():
        return run
    data = workdir / "phantom"
    if not (data / "dataset.json").is_file():
        start = time.perf_counter()
        make_phantom(data, n_cases=3, sites=1, size=shape, seed=5, overwrite=True)
        print(f"phantom: 3 cases of {'x'.join(map(str, shape))} in {time.perf_counter() - start:.0f} s", flush=True)
    config = TrainConfig(iterations=iterations, lr=2e-3, freeze="none", batch_size=4, val_every=0,
                         val_fraction=0.34, amp=False, seed=0)
    start = time.perf_counter()
    info = train(data, parse_task("T1", LABELS), run, config, UNetConfig(depth=depth, width=width), device="cpu",
                 progress=False)
    print(f"trained {iterations} iterations in {time.perf_counter() - start:.0f} s; "
          f"validation Dice {info.val_dice}", flush=True)
    return run


def export_models(run: Path, workdir: Path, fp16: bool):
    """{precision: ONNX path}, printing each export's agreement with float32."""
    from trmcore.export import PrecisionAgreementError, export_run

    models = {}
    for precision in ["fp32", "int8"] + (["fp16"] if fp16 else []):
        path = workdir / f"model-{precision}.onnx"
        if not path.is_file():
            start = time.perf_counter()
            try:
                result = export_run(run, path, precision=precision)
            except PrecisionAgreementError as err:
                # still time it, but say so: the product would have refused this model
                print(f"export {precision}: REFUSED by the agreement gate ({err}); timed anyway", flush=True)
                result = export_run(run, path, precision=precision, min_dice=1e-6)
            agreement = "" if result.agreement is None else f"; {result.agreement.describe()}"
            print(f"export {precision}: {time.perf_counter() - start:.0f} s{agreement}", flush=True)
        models[precision] = path
    return models


class TorchSession:
    """Stands in for an onnxruntime session: runs the float32 torch model eagerly."""

    def __init__(self, model, session) -> None:
        self.model, self.session = model, session

    def run(self, outputs, feeds):
        import torch

        (batch,) = feeds.values()
        with torch.inference_mode():
            return [self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()]

    def __getattr__(self, name):
        return getattr(self.session, name)


def slice_flops(model, height: int, width: int, cache: dict) -> float:
    """FLOP of one forward of a [1, Cin, height, width] slice (multiply-add = 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    key = (height, width)
    if key not in cache:
        x = torch.zeros(1, model.config.in_channels, height, width)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(x)
        cache[key] = float(counter.get_total_flops())
    return cache[key]


def fp32_peak(threads: int) -> float:
    """GFLOP/s of a float32 2048^3 GEMM in torch (best of 5): the machine's practical float32 peak."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * 2048 ** 3 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def executed_gflop(model, segmenter, volume: np.ndarray, cache: dict) -> float:
    from trmcore.data.crop import plan_crop, plan_full, volume_foreground

    meta = segmenter.metadata
    if segmenter.crop_margin is None:
        plan = plan_full(volume.shape, meta.axis, meta.divisor)
    else:
        plan = plan_crop(volume_foreground(volume[None], meta.normalization), meta.axis, meta.divisor,
                         segmenter.crop_margin)
    (h0, h1), (w0, w1) = plan.window
    height = h1 - h0 + sum(plan.pad[0])
    width = w1 - w0 + sum(plan.pad[1])
    return plan.slices.size * slice_flops(model, height, width, cache) / 1e9


def agreement(labels: np.ndarray, reference: np.ndarray):
    """(min per-class Dice over the label values present, share of equal voxels)."""
    dice = []
    for value in np.union1d(np.unique(labels), np.unique(reference)):
        if value == 0:
            continue
        a, b = labels == value, reference == value
        dice.append(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))
    return (min(dice) if dice else 1.0), float(np.mean(labels == reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=60, help="training iterations of the benchmark's model")
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES),
                        help="phantom volume shapes, e.g. 240x240x155,182x218x182 (the first one trains the model)")
    parser.add_argument("--volume", action="append", type=Path, default=[],
                        help="also segment this NIfTI file (e.g. a real T1)")
    parser.add_argument("--fp16", action="store_true", help="also time the float16 model")
    parser.add_argument("--no-torch", action="store_true", help="skip torch eager")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the float32 peak to compare with (default: a torch GEMM measured in this run, which "
                             "a loaded machine lowers); e.g. 2 cores x 32 FLOP/cycle x GHz for AVX-512 Zen 4")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the phantom, run and models here and reuse them (default: a temporary folder)")
    args = parser.parse_args()

    import nibabel as nib
    import onnxruntime
    import torch

    from trmcore.data import SITE_PROFILES, generate_case
    from trmcore.infer import Segmenter, predict_files
    from trmcore.data.crop import DEFAULT_CROP_MARGIN
    from trmcore.training.checkpoint import load_run

    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    print(f"torch {torch.__version__} | onnxruntime {onnxruntime.__version__} | threads {args.threads} | "
          f"batch {args.batch_size} slices | U-Net width {args.width} depth {args.depth} | "
          f"median of {args.repeats} | crop margin {DEFAULT_CROP_MARGIN} | load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        run = make_run(workdir, shapes[0], args.iterations, args.width, args.depth, args.threads)
        models = export_models(run, workdir, args.fp16)
        torch_model, _ = load_run(run, device="cpu")
        torch_model.eval()
        gemm = fp32_peak(args.threads)
        peak = args.peak_gflops or gemm
        print(f"float32 GEMM (torch 2048^3, {args.threads} threads): {gemm:.0f} GFLOP/s; "
              f"peak used below: {peak:.0f} GFLOP/s", flush=True)

        def segmenter(precision, crop):
            return Segmenter(models[precision], providers="cpu", threads=args.threads, batch_size=args.batch_size,
                             crop_margin=DEFAULT_CROP_MARGIN if crop else None)

        paths = {"today": segmenter("fp32", False), "crop fp32": segmenter("fp32", True),
                 "crop int8": segmenter("int8", True)}
        if args.fp16:
            paths["crop fp16"] = segmenter("fp16", True)
        if not args.no_torch:
            eager = segmenter("fp32", False)
            eager.session = TorchSession(torch_model, eager.session)
            paths["torch eager"] = eager

        cases = []
        for i, shape in enumerate(shapes):
            case = generate_case(shape, SITE_PROFILES[0], seed=11, index=i)
            folder = workdir / f"in-{i}"
            folder.mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(case.images[0], case.affine), str(folder / f"phantom{i}_0000.nii.gz"))
            cases.append((f"phantom {'x'.join(map(str, shape))}", folder / f"phantom{i}_0000.nii.gz"))
        for k, path in enumerate(args.volume):
            folder = workdir / f"vol-{k}"
            folder.mkdir(exist_ok=True)
            link = folder / "volume_0000.nii.gz"
            if not link.exists():
                link.write_bytes(Path(path).read_bytes())
            cases.append((f"{path.name} {'x'.join(map(str, nib.load(str(path)).shape))}", link))

        warm = np.zeros((48, 48, 4), np.float32)
        warm[8:40, 8:40] = 1 + np.arange(4, dtype=np.float32)
        for seg in paths.values():
            seg.predict_volume(warm)

        flop_cache, summary = {}, []
        for name, source in cases:
            volume = nib.load(str(source)).get_fdata(dtype=np.float32)
            times = {p: [] for p in paths}
            labels = {}
            for _ in range(args.repeats):
                for p, seg in paths.items():
                    out = workdir / "out" / f"{p.replace(' ', '-')}.nii.gz"
                    start = time.perf_counter()
                    predict_files(seg, source, out, overwrite=True, progress=False)
                    times[p].append(time.perf_counter() - start)
                    labels[p] = np.asarray(nib.load(str(out)).dataobj)
            load = os.getloadavg()[0]
            print(f"\n{name}: load average {load:.1f}", flush=True)
            seconds = {p: statistics.median(t) for p, t in times.items()}
            for p, seg in paths.items():
                gflop = executed_gflop(torch_model, seg, volume, flop_cache)
                rate = gflop / seconds[p]
                dice, equal = agreement(labels[p], labels["today"])
                vs_torch = (f" | vs torch {seconds['torch eager'] / seconds[p]:5.2f}x"
                            if "torch eager" in seconds else "")
                print(f"  {p:<12} {seconds[p]:7.2f} s | vs today {seconds['today'] / seconds[p]:5.2f}x{vs_torch} | "
                      f"{gflop:7.0f} GFLOP, {rate:5.0f} GFLOP/s = {100 * rate / peak:3.0f}% of fp32 peak | "
                      f"min Dice vs today {dice:.4f}, equal voxels {equal:.5f}", flush=True)
            summary.append(seconds)
    print()
    totals = {p: sum(s[p] for s in summary) for p in summary[0]}
    line = ", ".join(f"{p} {totals['today'] / totals[p]:.2f}x" for p in totals if p != "today")
    print(f"all volumes, speed-up over today's path: {line}")
    if "torch eager" in totals:
        print("all volumes, speed-up over torch eager: "
              + ", ".join(f"{p} {totals['torch eager'] / totals[p]:.2f}x" for p in totals if p != "torch eager"))
    print("targets: crop int8 >= 3x today and >= 5x torch eager (Dice >= 0.99); crop fp32 >= 1.5x today")


if __name__ == "__main__":
    main()

"""``trm export``, ``trm predict`` and ``trm transferability``: deployment commands.

``predict`` and ``transferability`` never import torch (they run on
onnxruntime); ``export`` imports torch inside its handler.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from trmcore.cli.common import add_option, add_output, add_quiet, add_task_arguments, command
from trmcore.fileio import atomic_write_json, check_output_file
from trmcore.ops import RISK_BASE


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_export(subparsers)
    _register_predict(subparsers)
    _register_transferability(subparsers)


# -- export -------------------------------------------------------------------------

def _register_export(subparsers) -> None:
    p = command(
        subparsers, "export", help="export a trained run to ONNX (with the metadata inference needs)",
        description="Export RUN's network to ONNX (torch.export-based exporter; dynamic batch, height and "
                    "width), embed channels, labels and preprocessing as metadata, and verify the logits "
                    "against torch.",
        example_lines=["trm export runs/trm -o model.onnx", "trm export runs/trm -o model-int8.onnx --precision int8"])
    p.add_argument("run", type=Path, help="run folder (model.safetensors + run.json)")
    add_output(p, required=True, help="ONNX file to write, e.g. model.onnx")
    from trmcore.infer.metadata import DEFAULT_MIN_DICE, PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="arithmetic of the exported network (default fp32). int8: onnxruntime static quantisation "
                        "calibrated on the run's training slices, about 2x faster on CPUs with VNNI; fp16: for GPUs "
                        "(slower than fp32 on CPUs). A reduced precision is written only if its labels agree with "
                        "float32 on the run's validation cases (see --min-dice)")
    p.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    p.add_argument("--min-dice", type=float, default=DEFAULT_MIN_DICE,
                   help="smallest per-class Dice between the reduced-precision and the float32 labels "
                        f"(default {DEFAULT_MIN_DICE})")
    p.add_argument("--data", type=Path, default=None,
                   help="the run's dataset folder, if it moved (default: the one in run.json); "
                        "used by reduced precisions only")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17; default 18)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |onnxruntime - torch| on logits relative to max(1, max|logit|) "
                        "(default 1e-4, 2e-2 with --fp16)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from trmcore.export import ExportVerificationError, PrecisionAgreementError, export_run

    precision = args.precision or ("fp16" if args.fp16 else "fp32")
    if args.fp16 and precision != "fp16":
        raise ValueError(f"--fp16 contradicts --precision {args.precision}")
    try:
        result = export_run(args.run, args.output, opset=args.opset, tolerance=args.tolerance,
                            overwrite=args.overwrite, precision=precision, min_dice=args.min_dice,
                            data_dir=args.data)
    except ExportVerificationError as err:
        print(f"trm export: verification failed: {err}", file=sys.stderr)
        return 1
    except PrecisionAgreementError as err:
        print(f"trm export: refused, nothing written: {err}", file=sys.stderr)
        return 1
    meta = result.metadata
    print(f"wrote {result.path} ({meta.precision}, {meta.dtype} inputs, opset {result.opset}, {result.exporter})")
    print(f"  channels {','.join(meta.channels)}; labels "
          + ", ".join(f"{n}={v}" for n, v in zip(meta.label_names, meta.label_values))
          + f"; slice axis {meta.axis}; size divisor {meta.divisor}; {meta.normalization}")
    shapes = ", ".join("x".join(map(str, s)) for s in result.checked_shapes)
    print(f"  verified against torch on {shapes}: max |logit difference| = {result.max_abs_diff:.3g} "
          f"(allowed {result.tolerance:.3g})")
    if result.agreement is not None:
        print(f"  {meta.precision} {result.agreement.describe()} (required {args.min_dice})")
    return 0


# -- predict ------------------------------------------------------------------------

def _add_runtime_options(p: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        p.add_argument("-m", "--model", type=Path, required=True, action="append",
                       help="ONNX model written by `trm export`; repeat -m to ensemble several "
                            "(probabilities averaged)")
    else:
        p.add_argument("-m", "--model", type=Path, required=True, help="ONNX model written by `trm export`")
    p.add_argument("--providers", default="auto", choices=("auto", "cpu", "cuda"),
                   help="onnxruntime execution provider (auto: CUDA when a GPU is seen, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--batch-size", type=int, default=8, help="slices per network call (default 8)")
    add_quiet(p)
    p.add_argument("--no-resample", action="store_true",
                   help="use volumes as stored (no reorientation to the model's orientation, no resampling to "
                        "its in-plane spacing)")


def _register_predict(subparsers) -> None:
    p = command(
        subparsers, "predict", help="segment NIfTI volumes with an exported model (onnxruntime, no torch)",
        description="Segment a NIfTI file (CASE_0000.nii.gz, other channels beside it) or a folder of "
                    "CASE_000k.nii.gz files; write CASE.nii.gz label volumes (the model's label values, "
                    "uint8) with the input's affine and header. Volumes are brought to the model's orientation "
                    "and in-plane spacing and the result is written back on the input's grid.",
        example_lines=["trm predict -m model.onnx -i scans/ -o labels/",
                       "trm predict -m model.onnx -i case_0000.nii.gz -o case.nii.gz --probabilities",
                       "trm predict -m fold0.onnx -m fold1.onnx --mirror --continue -i scans/ -o labels/"])
    _add_runtime_options(p, several=True)
    p.add_argument("-i", "--input", type=Path, required=True, help="input NIfTI file or folder")
    add_output(p, required=True, help="output .nii.gz (single input file) or folder")
    p.add_argument("--channels", default=None,
                   help="names of the input channel files _0000,_0001,... e.g. T1,T2 "
                        "(default: dataset.json beside the input, else the model's order)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write CASE_probabilities.nii.gz (float32 [X,Y,Z,C] softmax)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--continue", action="store_true", dest="resume",
                   help="skip cases whose outputs exist and are complete (readable, on the input's grid); "
                        "redo the others")
    p.add_argument("--mirror-axes", default=None, metavar="AXES",
                   help="mirror only along these in-plane axes, e.g. 1 or 0,1 (implies --mirror; each one an "
                        "axis the model was trained with flipped)")
    p.add_argument("--mirror", action="store_true",
                   help="test-time augmentation: also segment the slices mirrored along the in-plane axes the "
                        "model was trained with flipped (ONNX metadata mirror_axes; both: 4 passes) and average "
                        "the probabilities; refused for a model trained without flips")
    _add_crop_options(p)
    p.set_defaults(func=_run_predict)


def _add_crop_options(p: argparse.ArgumentParser) -> None:
    from trmcore.infer.crop import DEFAULT_CROP_MARGIN

    p.add_argument("--crop-margin", type=int, default=DEFAULT_CROP_MARGIN, metavar="N",
                   help="run the network only on slices with foreground (the voxels the normalisation uses) "
                        "and on their in-plane box plus N voxels; the rest is background "
                        f"(default {DEFAULT_CROP_MARGIN})")
    p.add_argument("--no-crop", action="store_true", help="run every slice whole (slower; same grid either way)")


def _open_segmenter(args: argparse.Namespace, model=None):
    from trmcore.infer import Segmenter

    model = args.model if model is None else model
    crop_margin = None if getattr(args, "no_crop", True) else args.crop_margin
    segmenter = Segmenter(model, providers=args.providers, threads=args.threads, batch_size=args.batch_size,
                          crop_margin=crop_margin)
    meta = segmenter.metadata
    grid = "as stored" if meta.orientation in (None, "native") else (
        f"{meta.orientation} " + ("x".join(f"{v:.3g}" for v in meta.spacing) + " mm" if meta.spacing else ""))
    print(f"model {model}: channels {','.join(segmenter.channels)}, labels "
          + ", ".join(f"{n}={v}" for n, v in zip(segmenter.label_names, segmenter.label_values))
          + f"; grid {grid.strip()}; onnxruntime provider {segmenter.provider}", file=sys.stderr)
    return segmenter


def _mirror_request(args: argparse.Namespace):
    """False, True (every trained axis) or the --mirror-axes list."""
    if args.mirror_axes is None:
        return bool(args.mirror)
    try:
        axes = [int(a) for a in args.mirror_axes.split(",") if a.strip()]
    except ValueError:
        raise ValueError(f"--mirror-axes takes in-plane axes 0 and/or 1 (e.g. 0,1), got {args.mirror_axes!r}") from None
    if not axes or not set(axes) <= {0, 1}:
        raise ValueError(f"--mirror-axes takes in-plane axes 0 and/or 1 (e.g. 0,1), got {args.mirror_axes!r}")
    return axes


def _run_predict(args: argparse.Namespace) -> int:
    from trmcore.infer import predict_files

    segmenters = [_open_segmenter(args, model) for model in args.model]
    channels = None if args.channels is None else [c.strip() for c in args.channels.split(",") if c.strip()]
    arguments = {k: ([str(m) for m in v] if k == "model" else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items() if k != "func"}
    results = predict_files(segmenters, args.input, args.output, probabilities=args.probabilities,
                            overwrite=args.overwrite, channels=channels, progress=not args.quiet,
                            resume=args.resume, mirror=_mirror_request(args), resample=not args.no_resample,
                            arguments=arguments)
    for case in results:
        if case.skipped:
            print(f"{case.case_id}: kept complete {case.labels_path} (--continue)")
            continue
        counts = ", ".join(f"{v}: {c}" for v, c in case.label_counts.items())
        extra = f" + {case.probabilities_path}" if case.probabilities_path else ""
        print(f"{case.case_id}: wrote {case.labels_path}{extra} (voxels per label {counts})")
    return 0


# -- transferability ------------------------------------------------------------------

def _register_transferability(subparsers) -> None:
    p = command(
        subparsers, "transferability", help="LEEP and per-case transfer risk of a deployed model on a new site's data",
        description="Run an exported model over labelled data in the standard layout and report the "
                    "dataset LEEP (<= 0, closer to 0 = transfers better) and per-case LEEP and mean "
                    "transfer risk, before any fine-tuning. Torch-free.",
        example_lines=["trm transferability -m model.onnx data/new-site --channel T1 --labels CSF -o report.json"])
    _add_runtime_options(p)
    add_task_arguments(p)
    p.add_argument("--cases", default=None, help="only these cases (comma-separated ids)")
    add_option(p, "--risk-base", hidden=("--base",), type=float, default=RISK_BASE,
               help="risk-map base: R in [1, base] (default %(default)g)")
    add_option(p, "-o", "--output", hidden=("--out", "--json"), type=Path, default=None,
               help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file (never an input)")
    p.set_defaults(func=_run_transferability)


def _run_transferability(args: argparse.Namespace) -> int:
    from trmcore.data import load_task_volumes, parse_task
    from trmcore.infer import assess_transferability

    inputs = [args.data, args.model]
    if args.output is not None:  # refuse before the work, and again (atomically) when writing
        check_output_file(args.output, overwrite=args.overwrite, inputs=inputs)
    segmenter = _open_segmenter(args)
    task = parse_task(args.channel, args.labels, site=args.site)
    if len(task.channels) != segmenter.metadata.num_channels:
        raise ValueError(f"--channel gives {len(task.channels)} channel(s) {task.channels} but the model takes "
                         f"{segmenter.metadata.num_channels} ({', '.join(segmenter.channels)})")
    cases = None if args.cases is None else [c.strip() for c in args.cases.split(",") if c.strip()]
    geometry = segmenter.metadata.geometry(f"model {args.model}", resample=not args.no_resample)
    volumes, info = load_task_volumes(args.data, task, cases=cases, progress=not args.quiet,
                                      geometry=geometry, normalization=segmenter.metadata.normalization)
    if [c.lower() for c in task.channels] != [c.lower() for c in segmenter.channels]:
        print(f"note: the model was trained on {','.join(segmenter.channels)}, the data is "
              f"{','.join(task.channels)} (cross-modality transfer)", file=sys.stderr)
    with warnings.catch_warnings(record=True) as caught:  # one line per skipped case, not a source listing
        warnings.simplefilter("always", RuntimeWarning)
        report = assess_transferability(segmenter, volumes, info.label_names, data_channels=task.channels,
                                        base=args.risk_base, progress=not args.quiet)
    for warning in caught:
        print(f"trm transferability: warning: {warning.message}", file=sys.stderr)
    print(report.format_table())
    if args.output is not None:
        atomic_write_json(args.output, report.to_dict(), overwrite=args.overwrite, inputs=inputs)
        print(f"wrote {args.output}")
    return 0

"""``trm export``, ``trm predict`` and ``trm transferability``: deployment commands.

``predict`` never imports torch (it runs on onnxruntime), nor does
``transferability`` of an ONNX model; ``transferability`` of a torch source
(run, nnU-Net, MONAI) and ``export`` import torch inside their handlers.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from trmcore.cli.common import add_output, add_quiet, add_task_arguments, add_time_limit, command
from trmcore.extras import evaluate_source, install_hint
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
    from trmcore.infer.metadata import DEFAULT_MIN_DICE, DEFAULT_OPSET, MIN_OPSET, PRECISIONS, REFERENCE_PRECISION

    p.add_argument("--precision", choices=tuple(PRECISIONS), default=None,
                   help=f"arithmetic of the exported network (default {REFERENCE_PRECISION}). "
                        + "; ".join(f"{e.name}: {e.summary}" for e in PRECISIONS.values() if not e.is_reference)
                        + f". A precision other than {REFERENCE_PRECISION} is written only if its labels agree with "
                          f"{REFERENCE_PRECISION} on the run's validation cases (see --min-dice)")
    p.add_argument("--fp16", action="store_true", help="the same as --precision fp16")
    p.add_argument("--min-dice", type=float, default=DEFAULT_MIN_DICE,
                   help="smallest per-class Dice between the reduced-precision and the float32 labels "
                        f"(default {DEFAULT_MIN_DICE})")
    p.add_argument("--data", type=Path, default=None,
                   help="the run's dataset folder, if it moved (default: the one in run.json); "
                        "used by reduced precisions only")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (>= {MIN_OPSET}; default %(default)s)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="max |onnxruntime - torch| on logits relative to max(1, max|logit|) (default: "
                        + ", ".join(f"{e.tolerance:g} for {e.name}" for e in PRECISIONS.values()) + ")")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run_export)


def export_precision(args: argparse.Namespace) -> str:
    """The precision of ``trm export``: ``--precision``, or fp16 for ``--fp16`` (its old spelling), else fp32."""
    from trmcore.infer.metadata import REFERENCE_PRECISION

    if args.fp16 and args.precision not in (None, "fp16"):
        raise ValueError(f"--fp16 contradicts --precision {args.precision}")
    return args.precision or ("fp16" if args.fp16 else REFERENCE_PRECISION)


def _run_export(args: argparse.Namespace) -> int:
    from trmcore.export import ExportVerificationError, PrecisionAgreementError, export_run

    precision = export_precision(args)
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
    if not result.verified:
        print("  not verified against torch: onnxruntime is not installed (the graph passed onnx's checker); "
              f"to check it: {install_hint('cpu')}, then export again")
    else:
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
    add_time_limit(p)
    add_quiet(p)
    p.add_argument("--no-resample", action="store_true",
                   help="use volumes as stored (no reorientation to the model's orientation, no resampling to "
                        "its in-plane spacing)")


def _register_predict(subparsers) -> None:
    p = command(
        subparsers, "predict", help="segment NIfTI volumes or DICOM series with an exported model (onnxruntime, no torch)",
        description="Segment a NIfTI file (CASE_0000.nii.gz, other channels beside it) or a folder of "
                    "CASE_000k.nii.gz files; write CASE.nii.gz label volumes (the model's label values, "
                    "uint8) with the input's affine and header. Volumes are brought to the model's orientation "
                    "and in-plane spacing and the result is written back on the input's grid. A folder of DICOM "
                    "files is read series by series (trmcore[dicom]); --output-format dicom-seg writes DICOM "
                    "Segmentations referencing them.",
        example_lines=["trm predict -m model.onnx -i scans/ -o labels/",
                       "trm predict -m model.onnx -i case_0000.nii.gz -o case.nii.gz --probabilities",
                       "trm predict -m fold0.onnx -m fold1.onnx --mirror --continue -i scans/ -o labels/",
                       "trm predict -m t1t2.onnx -i dicom/ -o out/ --series T1='*t1*' --series T2='*t2*' "
                       "--output-format both --qc out/qc"])
    _add_runtime_options(p, several=True)
    p.add_argument("-i", "--input", type=Path, required=True,
                   help="input NIfTI file or folder, or a folder of DICOM files (series found by SeriesInstanceUID)")
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
    _add_dicom_options(p)
    p.set_defaults(func=_run_predict)


def _add_dicom_options(p: argparse.ArgumentParser) -> None:
    from trmcore.infer.dicom_seg import DEFAULT_OUTPUT_FORMAT, OUTPUT_FORMATS  # no onnxruntime: the parser

    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default=DEFAULT_OUTPUT_FORMAT,
                   help="nifti: CASE.nii.gz label volumes; dicom-seg: one DICOM Segmentation (CASE.seg.dcm) per "
                        "input series (DICOM input only); both: the two (default: %(default)s)")
    p.add_argument("--series", action="append", default=None, metavar="CHANNEL=SELECTOR",
                   help="DICOM input: the series of a model channel, by SeriesInstanceUID or a SeriesDescription "
                        "pattern, e.g. --series T1=1.2.840.1 --series 'T2=*t2*' (one per channel; required for "
                        "multi-channel models)")
    p.add_argument("--label-codes", type=Path, default=None, metavar="FILE",
                   help="JSON label name -> SNOMED-CT category and type codes for DICOM-SEG segments (or a "
                        "dataset.json with \"label_codes\"); default codes otherwise (docs/deploy.md)")
    p.add_argument("--qc", type=Path, default=None, metavar="DIR",
                   help="also write per case a PNG of slices through the foreground (image, prediction "
                        "contours) and an index.html with predicted volumes")
    p.add_argument("--qc-risk", type=Path, default=None, metavar="DIR",
                   help="with --qc: add each case's risk map DIR/CASE_risk.nii.gz (as trm riskmap writes it) "
                        "to its picture")


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
                          crop_margin=crop_margin, time_limit=getattr(args, "time_limit", None))
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
    from trmcore.data.dicom import is_dicom_input

    arguments = {k: ([str(m) for m in v] if k == "model" else str(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items() if k != "func"}
    dicom = is_dicom_input(args.input)
    if not dicom:
        for flag, value in (("--series", args.series), ("--label-codes", args.label_codes)):
            if value:
                raise ValueError(f"{flag} applies to DICOM input; {args.input} is NIfTI")
        if args.output_format != "nifti":
            raise ValueError(f"--output-format {args.output_format} needs DICOM input (a DICOM Segmentation "
                             f"references its source series); {args.input} is NIfTI")
    if args.qc_risk is not None and args.qc is None:
        raise ValueError("--qc-risk adds risk maps to the --qc pictures: give --qc DIR too")
    if args.qc is not None:
        check_output_file(args.qc / "index.html", overwrite=args.overwrite or args.resume, inputs=[args.input])
    segmenters = [_open_segmenter(args, model) for model in args.model]
    if dicom:
        return _run_predict_dicom(args, segmenters, arguments)
    channels = None if args.channels is None else [c.strip() for c in args.channels.split(",") if c.strip()]
    results = predict_files(segmenters, args.input, args.output, probabilities=args.probabilities,
                            overwrite=args.overwrite, channels=channels, progress=not args.quiet,
                            resume=args.resume, mirror=_mirror_request(args), resample=not args.no_resample,
                            arguments=arguments)
    _print_cases(results)
    if args.qc is not None:
        from trmcore.infer.qc import qc_from_files

        index = qc_from_files(results, segmenters[0], args.input, args.channels, args.qc,
                              overwrite=args.overwrite or args.resume,
                              risk_dir=args.qc_risk)
        print(f"wrote {index}")
    return 0


def _print_cases(results) -> None:
    """One line per predicted case: what was written (or kept by --continue) and its voxels per label."""
    for case in results:
        if case.skipped:
            print(f"{case.case_id}: kept complete {case.labels_path} (--continue)")
            continue
        counts = ", ".join(f"{v}: {c}" for v, c in case.label_counts.items())
        extra = f" + {case.probabilities_path}" if case.probabilities_path else ""
        print(f"{case.case_id}: wrote {case.labels_path}{extra} (voxels per label {counts})")


def _run_predict_dicom(args: argparse.Namespace, segmenters, arguments: dict) -> int:
    from trmcore.data.dicom import parse_series_map
    from trmcore.infer.dicom_predict import predict_dicom

    if args.channels is not None:
        raise ValueError("--channels names NIfTI channel files; for DICOM input map series with --series")
    results = predict_dicom(segmenters, args.input, args.output, output_format=args.output_format,
                            probabilities=args.probabilities, overwrite=args.overwrite, resume=args.resume,
                            series_map=parse_series_map(args.series), label_codes=args.label_codes,
                            progress=not args.quiet, mirror=args.mirror, resample=not args.no_resample,
                            arguments=arguments, qc_dir=args.qc, qc_risk=args.qc_risk,
                            report=lambda line: print(f"matched {line}", file=sys.stderr))
    _print_cases(results)
    if args.qc is not None:
        print(f"wrote {args.qc / 'index.html'}")
    return 0


# -- transferability ------------------------------------------------------------------

def _register_transferability(subparsers) -> None:
    p = command(
        subparsers, "transferability", help="LEEP and per-case transfer risk of a deployed model on a new site's data",
        description="Run a source model over labelled data in the standard layout and report the "
                    "dataset LEEP (<= 0, closer to 0 = transfers better) and per-case LEEP and mean "
                    "transfer risk, before any fine-tuning. An exported ONNX model runs torch-free "
                    "(trmcore[cpu]); a trmcore run folder, an nnU-Net v2 2d result folder (--fold) or a MONAI "
                    "2-D network runs with torch (trmcore[train]).",
        example_lines=["trm transferability -m model.onnx data/new-site --channel T1 --labels CSF -o report.json",
                       "trm transferability -m nnUNet_results/Dataset004_X/nnUNetTrainer__nnUNetPlans__2d --fold 0 "
                       "data/new-site --channel T1 --labels CSF"])
    _add_runtime_options(p)
    p.add_argument("--fold", default="0", metavar="K", dest="source_fold",
                   help="nnU-Net source: fold_K/checkpoint_final.pth (default %(default)s; 'all')")
    p.add_argument("--device", default=None, help="torch sources: cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_task_arguments(p)
    p.add_argument("--cases", default=None, help="only these cases (comma-separated ids)")
    p.add_argument("--risk-base", type=float, default=RISK_BASE,
                   help="risk-map base: R in [1, base] (default %(default)g)")
    add_output(p, help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing -o file (never an input)")
    p.set_defaults(func=_run_transferability)


def _run_transferability(args: argparse.Namespace) -> int:
    from trmcore.data import load_task_volumes, parse_task
    from trmcore.infer import assess_transferability

    inputs = [args.data, args.model]
    if args.output is not None:  # refuse before the work, and again (atomically) when writing
        check_output_file(args.output, overwrite=args.overwrite, inputs=inputs)
    cases = None if args.cases is None else [c.strip() for c in args.cases.split(",") if c.strip()]
    task = parse_task(args.channel, args.labels, site=args.site)
    if evaluate_source(args.model, None) == "onnx":  # the rule trm's extras check uses
        segmenter = _open_segmenter(args)
        if len(task.channels) != segmenter.metadata.num_channels:
            raise ValueError(f"--channel gives {len(task.channels)} channel(s) {task.channels} but the model takes "
                             f"{segmenter.metadata.num_channels} ({', '.join(segmenter.channels)})")
        geometry = segmenter.metadata.geometry(f"model {args.model}", resample=not args.no_resample)
        volumes, info = load_task_volumes(args.data, task, cases=cases, progress=not args.quiet,
                                          geometry=geometry, normalization=segmenter.metadata.normalization)
    else:  # a torch source of any kind (trmcore.training.sources), on its own grid and normalisation
        from trmcore.training.source_segmenter import SourceSegmenter
        from trmcore.training.sources import load_source_task

        source, volumes, info, _ = load_source_task(args.model, args.data, args.channel, args.labels, args.site,
                                                    cases=cases, device=args.device, progress=not args.quiet,
                                                    resample=not args.no_resample, fold=args.source_fold)
        segmenter = SourceSegmenter(source, info.channels, batch_size=args.batch_size)
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

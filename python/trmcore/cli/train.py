"""``trm train``, ``trm finetune``, ``trm evaluate``, ``trm riskmap`` and ``trm demo``.

Choices and defaults come from the configuration dataclasses and registries
(``TrainConfig``, ``UNetConfig``, ``DemoConfig``, the METHODS and NORMS
registries); an option whose ``dest`` is a TrainConfig field goes straight into
the TrainConfig of the run.

Examples::

    trm train data/ --channel T1 --labels CSF --site site-A -o runs/src
    trm finetune data/ --channel T2 --labels CSF --site site-B --source runs/src -o runs/trm --method trm
    trm evaluate data/ --channel T2 --labels CSF --site site-B -m runs/trm -o dice.json
    trm riskmap data/ --channel T2 --labels CSF --site site-B --source runs/src --after runs/trm -o maps/
    trm demo -o demo/
    torchrun --nproc_per_node 2 -m trmcore.cli.main finetune ...   # data-parallel fine-tuning
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from trmcore.cli.common import (add_device, add_output, add_quiet, add_settings_options, add_sites_csv,
                               add_task_arguments, add_time_limit, command)
from trmcore.extras import evaluate_source
from trmcore.fileio import atomic_write_json, check_output_file
from trmcore.models.config import UNetConfig
from trmcore.models.norms import NORMS
from trmcore.training.config import AXES, FREEZE_CHOICES, OPTIMIZERS, TrainConfig
from trmcore.training.method_settings import TrmSettings
from trmcore.training.schedule import LR_SCHEDULES
from trmcore.training.methods import (DEFAULT_METHOD, METHODS, PLAIN_METHOD, get_method, method_names,
                                      source_method_names)


def _add_task(parser: argparse.ArgumentParser, required: bool = True) -> None:
    add_task_arguments(parser, required=required)
    add_sites_csv(parser)
    add_device(parser)


def _add_training(parser: argparse.ArgumentParser) -> None:
    """The TrainConfig fields both train and finetune take; each dest is the field's name."""
    add_output(parser, required=True, help="run folder to write")
    parser.add_argument("--iterations", type=int, default=TrainConfig.iterations,
                        help="optimiser steps (default %(default)s)")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr,
                        help="base learning rate, the peak of the schedule (default %(default)g; nnU-Net's SGD "
                             "uses 0.01)")
    parser.add_argument("--lr-schedule", default=TrainConfig.lr_schedule, choices=LR_SCHEDULES,
                        help="poly: nnU-Net's lr * (1 - t/H)**0.9 over the run; constant (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup, metavar="N",
                        help="linear learning-rate warm-up over the first N steps (default %(default)s)")
    parser.add_argument("--lr-horizon", type=int, default=TrainConfig.lr_horizon, metavar="H",
                        help="plan the poly decay for H steps (default: --iterations); a run stopped earlier "
                             "extends up to H with --resume exactly as if trained at once")
    parser.add_argument("--optimizer", default=TrainConfig.optimizer, choices=OPTIMIZERS,
                        help="adam, or sgd with Nesterov momentum as nnU-Net (default %(default)s)")
    parser.add_argument("--momentum", type=float, default=TrainConfig.momentum,
                        help="sgd: momentum (default %(default)g, as nnU-Net)")
    parser.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay,
                        help="L2 weight decay (default %(default)g; nnU-Net's SGD: 3e-5)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                        help="slices per step and process (default %(default)s)")
    parser.add_argument("--few-shot", type=int, default=TrainConfig.few_shot, metavar="N",
                        help="train on N seeded slices only (default: all)")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="random seed (default %(default)s)")
    parser.add_argument("--val-every", type=int, default=TrainConfig.val_every,
                        help="validate every N iterations, 0: only at the end (default %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                        help="share of cases held out (default %(default)s)")
    parser.add_argument("--fold", type=int, default=TrainConfig.fold, metavar="K",
                        help="validate on fold K of the dataset's splits_final.json (5 folds, nnU-Net's format; "
                             "written once when absent, never overwritten, editable) instead of --val-fraction")
    parser.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every,
                        help="also write a resumable state every N iterations (default: at validation)")
    parser.add_argument("--axis", type=int, default=TrainConfig.axis, choices=AXES,
                        help="slicing axis (default %(default)s, axial)")
    parser.add_argument("--keep-empty", action="store_true", help="also train on slices without brain")
    parser.add_argument("--no-resample", action="store_true",
                        help="use volumes as stored (default: reorient to RAS -- fine-tuning: the source's "
                             "orientation -- and resample in-plane to the median / the source's spacing)")
    parser.add_argument("--foreground-share", type=float, default=TrainConfig.foreground_share, metavar="P",
                        help="share of each batch drawn from slices holding foreground, as nnU-Net "
                             "(default %(default).3g; 0 = uniform batches)")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    parser.add_argument("--no-augment", action="store_true",
                        help="train on the slices as they are (default: augment each batch on the fly: rotation, "
                             "scaling, mirroring, noise, blur, brightness, contrast, low resolution, gamma)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --output exactly, or extend a finished one to a "
                             "larger --iterations")
    add_quiet(parser)


def _methods_help(names) -> str:
    return "; ".join(f"{name}: {METHODS[name].summary}" for name in names)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_finetune(subparsers)
    _register_evaluate(subparsers)
    _register_riskmap(subparsers)
    _register_demo(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    train = command(subparsers, "train", help="train a source U-Net on a task",
                    description="Train a 2D U-Net from scratch (the source model of transfer).",
                    example_lines=["trm train data/ --channel T1 --labels CSF,GM,WM --site site-A -o runs/src"])
    _add_task(train)
    _add_training(train)
    train.add_argument("--method", default=PLAIN_METHOD, choices=source_method_names(),
                       help=f"loss (default %(default)s): {_methods_help(source_method_names())}")
    train.add_argument("--depth", type=int, default=UNetConfig.depth, help="U-Net down-samplings (default %(default)s)")
    train.add_argument("--width", type=int, default=UNetConfig.width,
                       help="channels of the first level (default %(default)s)")
    train.add_argument("--norm", default=UNetConfig.norm, choices=tuple(NORMS),
                       help="normalisation after each convolution (default %(default)s)")
    train.set_defaults(func=_run_train)


def _register_finetune(subparsers: argparse._SubParsersAction) -> None:
    finetune = command(
        subparsers, "finetune", help=f"fine-tune a source run on a target task ({', '.join(method_names())})",
        description="Fine-tune a source run on a target task. The encoder is frozen by default (SPEC 5); "
        "--method picks the per-pixel loss weights: trm = transfer risk maps (TRM, ICASSP 2025).",
        example_lines=["trm finetune data/ --channel T2 --labels CSF --site site-B --source runs/src -o runs/trm",
                       "trm finetune data/ --channel T2 --labels CSF --source runs/src -o runs/ce --method vanilla "
                       "--few-shot 50",
                       "trm finetune data/ --channel T1,T2 --labels CSF -o runs/nn --source "
                       "nnUNet_results/Dataset004_Brain/nnUNetTrainer__nnUNetPlans__2d --source-fold 0"])
    _add_task(finetune)
    _add_training(finetune)
    finetune.add_argument("--source", type=Path, required=True, help=_source_help("--source-fold"))
    _add_fold(finetune, "--source-fold")  # --fold is the target's cross-validation fold
    finetune.add_argument("--method", default=DEFAULT_METHOD, choices=method_names(),
                          help=f"fine-tuning method (default %(default)s): {_methods_help(method_names())}")
    finetune.add_argument("--freeze", default=TrainConfig.freeze, choices=FREEZE_CHOICES,
                          help="encoder: contracting path and bottleneck frozen (default %(default)s)")
    added: set = set()
    for entry in METHODS.values():  # each method's own settings, from its settings dataclass
        if entry.settings is not None:
            group = finetune.add_argument_group(f"{entry.name} settings")
            added.update(a.dest for a in add_settings_options(group, entry.settings, prefix=f"{entry.name}: ",
                                                               skip=added))
    finetune.add_argument("--reset-head", action="store_true",
                          help="re-initialise the head even when source and target have as many classes")
    finetune.set_defaults(func=_run_finetune)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    evaluate = command(
        subparsers, "evaluate", help="per-volume 3D Dice of a run, an ONNX model or a folder of predictions",
        description="Per-volume 3D Dice per class and their means, on each volume's stored grid, as a table and "
        "JSON. A class absent from both reference and prediction is NaN and left out of means (as nnU-Net). "
        "A run is scored on the task's cases it did not train on (--all: every case); an ONNX model or a "
        "--predictions folder (CASE.nii.gz label files, e.g. from trm predict) is scored without torch.",
        example_lines=["trm evaluate data/ --channel T2 --labels CSF --site site-B -m runs/trm -o dice.json",
                       "trm evaluate data/ -m runs/trm --all",
                       "trm evaluate data/ -m model.onnx",
                       "trm evaluate data/ --folds runs/fold0 runs/fold1 runs/fold2 runs/fold3 runs/fold4",
                       "trm evaluate data/ --labels CSF --predictions pred/"])
    _add_task(evaluate, required=False)
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("-m", "--model", type=Path, help="run folder or ONNX model (trm export)")
    source.add_argument("--predictions", type=Path, default=None,
                        help="folder of predicted label files CASE.nii.gz (dataset label values) to score")
    source.add_argument("--folds", type=Path, nargs="+", default=None, metavar="RUN",
                        help="cross-validation: score each run (one per --fold) on its own validation cases and "
                             "pool them in one table (a case validated by two runs is refused)")
    add_output(evaluate, help="write the results as JSON here")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing -o file (never an input)")
    add_time_limit(evaluate)
    evaluate.add_argument("--cases", default=None, help="comma-separated case ids (default: held-out cases)")
    evaluate.add_argument("--all", action="store_true", dest="all_cases",
                          help="score every case of the task, also those the run trained on")
    evaluate.add_argument("--val-only", action="store_true", help="only the run's validation cases")
    evaluate.add_argument("--no-resample", action="store_true",
                          help="use volumes as stored (no reorientation or resampling to the model's grid)")
    add_quiet(evaluate)
    evaluate.set_defaults(func=_run_evaluate)


def _register_riskmap(subparsers: argparse._SubParsersAction) -> None:
    riskmap = command(
        subparsers, "riskmap", help="transferability and transfer risk maps of a source model on a target task",
        description="Pixel-level LEEP transferability and transfer risk maps (NIfTI, same affine as the input) "
        "and PNG panels: image, label, transferability, risk; with --after also for a fine-tuned run.",
        example_lines=["trm riskmap data/ --channel T2 --labels CSF --site site-B --source runs/src "
                       "--after runs/trm -o maps/",
                       "trm riskmap data/ --channel T1 --labels CSF,GM,WM --source unet.json -o maps/"])
    _add_task(riskmap, required=False)
    riskmap.add_argument("--source", type=Path, required=True, help=_source_help("--fold"))
    _add_fold(riskmap)
    riskmap.add_argument("--after", type=Path, default=None, help="fine-tuned run to compare with")
    add_output(riskmap, required=True, help="folder for the maps and panels")
    riskmap.add_argument("--overwrite", action="store_true", help="replace existing maps and panels in -o")
    riskmap.add_argument("--cases", default=None, help="comma-separated case ids (default: all of the task)")
    add_settings_options(riskmap, TrmSettings, only=("risk_base", "risk_scope", "risk_scaling", "risk_quantile"))
    riskmap.add_argument("--no-resample", action="store_true",
                         help="use volumes as stored (no reorientation or resampling to the source's grid)")
    add_quiet(riskmap)
    riskmap.set_defaults(func=_run_riskmap)


def _register_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = command(
        subparsers, "demo", help="the whole path on a generated phantom in a few minutes on a CPU",
        description="Generate a phantom, train a source model, draw its risk maps on a target task that "
        "transfers badly, fine-tune with vanilla CE and with TRM, and print the Dice table.",
        example_lines=["trm demo -o trm-demo", "trm demo -o quick-demo --iterations 50 --overwrite"])
    add_output(demo, default=Path("trm-demo"), help="folder (default ./%(default)s)")
    demo.add_argument("--iterations", type=int, default=None, help="fine-tuning iterations (default: the demo's)")
    add_device(demo)
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    add_quiet(demo)
    demo.set_defaults(func=_run_demo)


# What --source takes (trmcore.training.sources.SOURCE_KINDS, which imports torch: the parser does not).
def _source_help(fold_flag: str) -> str:
    return (f"source model: a trmcore run folder, an nnU-Net v2 result folder (.../TRAINER__PLANS__2d, with "
            f"{fold_flag}) or a MONAI 2-D network (bundle folder or network JSON)")


def _add_fold(parser: argparse.ArgumentParser, flag: str = "--fold") -> None:
    parser.add_argument(flag, default="0", metavar="K", dest="source_fold",
                        help="fold of an nnU-Net source: fold_K/checkpoint_final.pth (default %(default)s; 'all')")


def _task(args: argparse.Namespace):
    from trmcore.data import parse_task

    return parse_task(args.channel, args.labels, args.site)


def _config(args: argparse.Namespace, **extra) -> TrainConfig:
    """The TrainConfig of the options named after its fields (plus the negated flags and ``extra``)."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(skip_empty=not args.keep_empty, amp=not args.no_amp, resample=not args.no_resample,
                  augment=not args.no_augment, **extra)
    settings = get_method(values.get("method", PLAIN_METHOD)).settings
    if settings is not None:  # the method's settings that are not flat TrainConfig fields
        values["method_settings"] = {f.name: getattr(args, f.name) for f in fields(settings)
                                     if f.name not in values and hasattr(args, f.name)}
    return TrainConfig(**values)


def _report(info, run_dir: Path) -> None:
    from trmcore.training.distributed import is_main_process

    if not is_main_process():
        return
    dice = "n/a (no validation cases)" if info.val_dice is None else f"{info.val_dice:.4f}"
    print(f"{run_dir}: {info.iterations_done} iterations, validation Dice {dice}")


def _run_train(args: argparse.Namespace) -> int:
    from trmcore.training.trainer import train

    config = _config(args, method=args.method, freeze="none")
    model = UNetConfig(depth=args.depth, width=args.width, norm=args.norm)
    info = train(args.data, _task(args), args.output, config, model, device=args.device, resume=args.resume,
                 progress=not args.quiet, sites=args.sites_csv)
    _report(info, args.output)
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from trmcore.training.trainer import finetune

    info = finetune(args.data, _task(args), args.source, args.output, _config(args), device=args.device,
                    resume=args.resume, progress=not args.quiet, reset_head=True if args.reset_head else None,
                    sites=args.sites_csv, fold=args.source_fold)
    _report(info, args.output)
    return 0


def _split_list(text):
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _run_evaluate(args: argparse.Namespace) -> int:
    inputs = _evaluate_inputs(args)
    if args.output is not None:  # refuse before the work, and again (atomically) when writing
        check_output_file(args.output, overwrite=args.overwrite, inputs=inputs)
    if args.predictions is not None:
        result = _evaluate_predictions(args)
        source = str(args.predictions)
    elif args.folds is not None:
        result = _evaluate_folds(args)
        source = [str(run) for run in args.folds]
    elif evaluate_source(args.model, None) == "onnx":  # the rule trm's extras check uses
        result = _evaluate_onnx(args)
        source = str(args.model)
    else:
        result = _evaluate_run(args)
        source = str(args.model)
    print(result.table())
    extra = result.metrics_table()
    if extra:
        print()
        print(extra)
    if args.output is not None:
        atomic_write_json(args.output, {"model": source, **result.to_dict()}, overwrite=args.overwrite,
                          inputs=inputs)
        print(f"wrote {args.output}")
    return 0


def _evaluate_inputs(args: argparse.Namespace) -> list:
    """What `trm evaluate` reads: -o may never be one of these (or a file inside the dataset)."""
    inputs = [args.data, args.sites_csv, args.predictions]
    model = getattr(args, "model", None)
    if model is not None:
        inputs += [model / "run.json", model / "model.safetensors"] if model.is_dir() else [model]
    for run in getattr(args, "folds", None) or []:
        inputs += [run / "run.json", run / "model.safetensors"]
    return inputs


def _evaluate_folds(args: argparse.Namespace):
    """Each fold's run on its own validation cases, pooled (nnU-Net's cross-validation score)."""
    from trmcore.data.scoring import summarize
    from trmcore.training.evaluate import evaluate_run
    from trmcore.training.runinfo import read_run_info

    volumes, class_names, scored_by = [], None, {}
    for run in args.folds:
        info = read_run_info(run)
        if not info.val_cases:
            raise ValueError(f"run {run} has no validation cases (train it with --fold K)")
        for case in info.val_cases:
            if case in scored_by:
                raise ValueError(f"case {case} is a validation case of both {scored_by[case]} and {run}: "
                                 "not folds of one split")
            scored_by[case] = run
        result = evaluate_run(run, args.data, args.channel, args.labels, args.site, info.val_cases, args.device,
                              progress=not args.quiet, sites=args.sites_csv, resample=not args.no_resample)
        if class_names is not None and result.class_names != class_names:
            raise ValueError(f"run {run} scores classes {result.class_names}, the first run {class_names}")
        class_names = result.class_names
        volumes += result.volumes
    return summarize(volumes, class_names,
                     scope=f"validation case(s) of {len(args.folds)} fold run(s), each scored by its own run")


def _evaluate_run(args: argparse.Namespace):
    from trmcore.data import DatasetLayout
    from trmcore.training.evaluate import evaluate_run
    from trmcore.training.runinfo import read_run_info

    info = read_run_info(args.model)
    cases = _split_list(args.cases)
    if args.val_only:
        cases, scope = info.val_cases, "validation case(s) of the run"
        if not cases:
            raise ValueError(f"run {args.model} has no validation cases")
    elif cases is not None:
        scope = "chosen case(s)"
    elif args.all_cases:
        scope = "case(s): all cases of the task, training cases included (--all)"
    else:
        cases, scope = _held_out_cases(args, info, DatasetLayout), "held-out case(s) (not used for training)"
    return evaluate_run(args.model, args.data, args.channel, args.labels, args.site, cases, args.device,
                        progress=not args.quiet, sites=args.sites_csv, resample=not args.no_resample, scope=scope)


def _held_out_cases(args: argparse.Namespace, info, layout_class):
    """The dataset's cases the run did not train on (all of them for another dataset)."""
    layout = layout_class.read(args.data, sites=args.sites_csv)
    cases = layout.cases()
    same_data = info.data is not None and Path(info.data).resolve() == Path(args.data).resolve()
    if not same_data:
        return cases
    trained = set(info.train_cases)
    held_out = [c for c in cases if c not in trained]
    if not held_out:
        raise ValueError(f"run {args.model} trained on every case of {args.data}; pass --all to score them anyway")
    return held_out


def _evaluate_onnx(args: argparse.Namespace):
    from trmcore.data import parse_task
    from trmcore.infer.evaluate_files import evaluate_model
    from trmcore.infer.segmenter import Segmenter

    segmenter = Segmenter(args.model, providers="auto", time_limit=args.time_limit)
    meta = segmenter.metadata
    task = parse_task(args.channel or meta.channels, args.labels or meta.label_names[1:], args.site)
    result = evaluate_model(segmenter, args.data, task, cases=_split_list(args.cases), sites=args.sites_csv,
                            resample=not args.no_resample, progress=not args.quiet)
    result.scope = ("chosen case(s)" if args.cases else
                    "case(s): all cases of the task (an exported model does not record its training cases)")
    return result


def _evaluate_predictions(args: argparse.Namespace):
    from trmcore.data import DatasetLayout, parse_task
    from trmcore.infer.evaluate_files import evaluate_folder

    if not args.labels:
        raise ValueError("scoring a --predictions folder needs the task's labels: --labels")
    # The channel only names the task; a folder of predictions needs no image.
    channel = args.channel or next(iter(DatasetLayout.read(args.data, sites=args.sites_csv).channel_names.values()))
    task = parse_task(channel, args.labels, args.site)
    return evaluate_folder(args.predictions, args.data, task, sites=args.sites_csv, cases=_split_list(args.cases),
                           progress=not args.quiet)


def _run_riskmap(args: argparse.Namespace) -> int:
    from trmcore.training.riskmap import RiskMapSettings
    from trmcore.training.riskmap_files import write_risk_maps

    settings = RiskMapSettings(base=args.risk_base, scope=args.risk_scope, scaling=args.risk_scaling,
                               quantile=args.risk_quantile)
    written = write_risk_maps(args.data, args.source, args.output, args.channel, args.labels, args.site,
                              after_run=args.after, cases=_split_list(args.cases), settings=settings,
                              device=args.device, progress=not args.quiet, sites=args.sites_csv,
                              resample=not args.no_resample, overwrite=args.overwrite,
                              fold=args.source_fold)
    print(f"wrote {len(written)} files to {args.output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trmcore.training.demo import DemoConfig, run_demo

    config = DemoConfig()
    if args.iterations is not None:
        config = replace(config, training=replace(config.training, iterations=args.iterations))
    run_demo(args.output, config, device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    return 0

"""``trm train``, ``trm finetune``, ``trm evaluate``, ``trm riskmap`` and ``trm demo``.

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
import json
from pathlib import Path

from trmcore.cli.common import add_task_arguments

METHODS = ("vanilla", "class-weight", "trs-map", "trm")


def _add_task(parser: argparse.ArgumentParser, required: bool = True) -> None:
    add_task_arguments(parser, required=required)
    parser.add_argument("--sites-csv", type=Path, default=None,
                        help="CSV assigning cases to sites (overrides dataset.json 'sites')")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, required=True, help="run folder to write")
    parser.add_argument("--iterations", type=int, default=5000, help="optimiser steps (default 5000)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per step and process (default 8)")
    parser.add_argument("--few-shot", type=int, default=None, metavar="N", help="train on N seeded slices only")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--val-every", type=int, default=500, help="validate every N iterations (0: at the end)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of cases held out (default 0.2)")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="also write a resumable state every N iterations (default: at validation)")
    parser.add_argument("--axis", type=int, default=2, choices=(0, 1, 2), help="slicing axis (default 2, axial)")
    parser.add_argument("--keep-empty", action="store_true", help="also train on slices without brain")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --output exactly")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a source U-Net on a task",
                                  description="Train a 2D U-Net from scratch (the source model of transfer).")
    _add_task(train)
    _add_training(train)
    train.add_argument("--method", default="vanilla", choices=("vanilla", "class-weight"), help="loss (default vanilla)")
    train.add_argument("--depth", type=int, default=4, help="U-Net down-samplings (default 4)")
    train.add_argument("--width", type=int, default=32, help="channels of the first level (default 32)")
    train.add_argument("--norm", default="batch", choices=("batch", "instance", "group", "none"))
    train.set_defaults(func=_run_train)

    finetune = subparsers.add_parser(
        "finetune", help="fine-tune a source run on a target task (vanilla, class-weight, trs-map, trm)",
        description="Fine-tune a source run on a target task. The encoder is frozen by default (SPEC 5); "
        "--method picks the per-pixel loss weights: trm = transfer risk maps (TRM, ICASSP 2025).")
    _add_task(finetune)
    _add_training(finetune)
    finetune.add_argument("--source", type=Path, required=True, help="source run folder")
    finetune.add_argument("--method", default="trm", choices=METHODS, help="fine-tuning method (default trm)")
    finetune.add_argument("--freeze", default="encoder", choices=("encoder", "none"), help="(default encoder)")
    finetune.add_argument("--risk-refresh", type=int, default=0, metavar="K",
                          help="trm: recompute the risk maps every K iterations with the current model (default: static)")
    finetune.add_argument("--risk-base", type=float, default=10.0, help="trm: risk = base**T' (default 10)")
    finetune.add_argument("--risk-scope", default="image", choices=("image", "batch"),
                          help="trm: rescale T per image or per batch (default image)")
    finetune.add_argument("--trs-stride", type=int, default=4, help="trs-map: block size (default 4)")
    finetune.add_argument("--reset-head", action="store_true",
                          help="re-initialise the head even when source and target have as many classes")
    finetune.set_defaults(func=_run_finetune)

    evaluate = subparsers.add_parser("evaluate", help="per-volume 3D Dice of a run on a task",
                                     description="Per-volume 3D Dice per class and mean, as a table and JSON.")
    _add_task(evaluate, required=False)
    evaluate.add_argument("-m", "--model", type=Path, required=True, help="run folder")
    evaluate.add_argument("-o", "--output", type=Path, default=None, help="write the results as JSON here")
    evaluate.add_argument("--cases", default=None, help="comma-separated case ids (default: all of the task)")
    evaluate.add_argument("--val-only", action="store_true", help="only the run's validation cases")
    evaluate.add_argument("-q", "--quiet", action="store_true")
    evaluate.set_defaults(func=_run_evaluate)

    riskmap = subparsers.add_parser(
        "riskmap", help="transferability and transfer risk maps of a source run on a target task",
        description="Pixel-level LEEP transferability and transfer risk maps (NIfTI, same affine as the input) "
        "and PNG panels: image, label, transferability, risk; with --after also for a fine-tuned run.")
    _add_task(riskmap, required=False)
    riskmap.add_argument("--source", type=Path, required=True, help="source run folder")
    riskmap.add_argument("--after", type=Path, default=None, help="fine-tuned run to compare with")
    riskmap.add_argument("-o", "--output", type=Path, required=True, help="folder for the maps and panels")
    riskmap.add_argument("--cases", default=None, help="comma-separated case ids (default: all of the task)")
    riskmap.add_argument("--risk-base", type=float, default=10.0)
    riskmap.add_argument("--risk-scope", default="image", choices=("image", "batch"))
    riskmap.add_argument("-q", "--quiet", action="store_true")
    riskmap.set_defaults(func=_run_riskmap)

    demo = subparsers.add_parser(
        "demo", help="the whole path on a generated phantom in a few minutes on a CPU",
        description="Generate a phantom, train a source model, draw its risk maps on a target task that "
        "transfers badly, fine-tune with vanilla CE and with TRM, and print the Dice table.")
    demo.add_argument("-o", "--output", type=Path, default=Path("trm-demo"), help="folder (default ./trm-demo)")
    demo.add_argument("--iterations", type=int, default=None, help="fine-tuning iterations (default: the demo's)")
    demo.add_argument("--device", default=None)
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(func=_run_demo)


def _task(args: argparse.Namespace):
    from trmcore.data import parse_task

    return parse_task(args.channel, args.labels, args.site)


def _config(args: argparse.Namespace, **extra):
    from trmcore.training import TrainConfig

    return TrainConfig(iterations=args.iterations, lr=args.lr, batch_size=args.batch_size, few_shot=args.few_shot,
                       seed=args.seed, val_every=args.val_every, val_fraction=args.val_fraction,
                       checkpoint_every=args.checkpoint_every, axis=args.axis, skip_empty=not args.keep_empty,
                       amp=not args.no_amp, **extra)


def _report(info, run_dir: Path) -> None:
    from trmcore.training.distributed import is_main_process

    if not is_main_process():
        return
    dice = "n/a (no validation cases)" if info.val_dice is None else f"{info.val_dice:.4f}"
    print(f"{run_dir}: {info.iterations_done} iterations, validation Dice {dice}")


def _run_train(args: argparse.Namespace) -> int:
    from trmcore.training.trainer import train

    config = _config(args, method=None if args.method == "vanilla" else args.method, freeze="none")
    info = train(args.data, _task(args), args.output, config, depth=args.depth, width=args.width, norm=args.norm,
                 device=args.device, resume=args.resume, progress=not args.quiet, sites=args.sites_csv)
    _report(info, args.output)
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from trmcore.training.trainer import finetune

    config = _config(args, method=args.method, freeze=args.freeze, risk_refresh=args.risk_refresh,
                     risk_base=args.risk_base, risk_scope=args.risk_scope, trs_stride=args.trs_stride)
    info = finetune(args.data, _task(args), args.source, args.output, config, device=args.device,
                    resume=args.resume, progress=not args.quiet, reset_head=True if args.reset_head else None,
                    sites=args.sites_csv)
    _report(info, args.output)
    return 0


def _split_list(text):
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _run_evaluate(args: argparse.Namespace) -> int:
    from trmcore.training.evaluate import evaluate_run
    from trmcore.training.runinfo import read_run_info

    cases = _split_list(args.cases)
    if args.val_only:
        cases = read_run_info(args.model).val_cases
        if not cases:
            raise ValueError(f"run {args.model} has no validation cases")
    result = evaluate_run(args.model, args.data, args.channel, args.labels, args.site, cases, args.device,
                          progress=not args.quiet, sites=args.sites_csv)
    print(result.table())
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"run": str(args.model), **result.to_dict()}, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


def _run_riskmap(args: argparse.Namespace) -> int:
    from trmcore.training.riskmap import write_risk_maps

    written = write_risk_maps(args.data, args.source, args.output, args.channel, args.labels, args.site,
                              after_run=args.after, cases=_split_list(args.cases), base=args.risk_base,
                              scope=args.risk_scope, device=args.device, progress=not args.quiet,
                              sites=args.sites_csv)
    print(f"wrote {len(written)} files to {args.output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from trmcore.training.demo import DemoConfig, run_demo

    config = DemoConfig() if args.iterations is None else DemoConfig(finetune_iterations=args.iterations)
    run_demo(args.output, config, device=args.device, overwrite=args.overwrite, progress=not args.quiet)
    return 0

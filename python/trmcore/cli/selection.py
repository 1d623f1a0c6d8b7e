"""``trm rank``, ``trm affinity``, ``trm path``, ``trm transfer-path``: source and path selection.

Examples::

    trm rank data/iseg --channel T1 --labels CSF --sources runs/a runs/b model.onnx -o rank.json
    trm affinity data/fets --tasks all -o affinity/
    trm affinity data/fets --tasks tasks.txt -o affinity/ --size 64 --samples 5
    trm path affinity/ --target 13/T1/NCR+ED+ET
    trm affinity fit affinity/ --results measured.csv
    trm transfer-path data/fets --path 01/T1/NCR+ED+ET,13/T1/NCR+ED+ET,18/T1/NCR+ED+ET --source runs/01-t1 -o runs/seq

The affinity, path and fit commands are torch-free (NumPy, SciPy, networkx).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trmcore.cli.common import add_device, add_output, add_quiet, add_sites_csv, add_task_arguments, command
from trmcore.fileio import atomic_write_json, check_output_file, make_folder
from trmcore.selection.affinity import AffinityConfig
from trmcore.selection.rank import VALIDATE_ITERATIONS, RankConfig
from trmcore.selection.similarity import PCA_OUTPUTS
from trmcore.selection.tasks import DEFAULT_COMMUNITIES, DEFAULT_MAX_HOPS
from trmcore.selection.transfer import TransferPathConfig
from trmcore.training.config import TrainConfig
from trmcore.training.methods import PLAIN_METHOD, method_names


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_rank(subparsers)
    _register_affinity(subparsers)
    _register_path(subparsers)
    _register_transfer_path(subparsers)


# ---------------------------------------------------------------- affinity
def _register_affinity(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "affinity",
        help="task distances d = alpha W + beta (1 - S) between tasks of a dataset (or: affinity fit DIR)",
        description="Compute the image dissimilarity W, label similarity S and distance d between tasks "
        "(site x channel x label set) from K x K seeded volume pairs [SEQ]. Writes W/S/d as CSV, "
        "affinity.json and affinity.png in -o DIR.\n\n"
        "`trm affinity fit DIR --results CSV` instead fits alpha and beta to measured (path, dice) "
        "results and writes DIR/fit.json.",
        example_lines=["trm affinity data/fets --tasks all -o affinity/",
                       "trm affinity data/fets --tasks tasks.txt -o affinity/ --size 64 --samples 5",
                       "trm affinity fit affinity/ --results measured.csv"],
    )
    parser.add_argument("data", help="dataset folder (standard layout), or the word 'fit'")
    parser.add_argument("dir", nargs="?", type=Path, help="with 'fit': the affinity folder")
    parser.add_argument("--tasks", help="'all' (every site x channel x label set) or a tasks file "
                        "(one SITE/CHANNELS/LABELS per line, e.g. site-A/T1/CSF; '*' = all sites)")
    add_output(parser, help="output folder")
    add_sites_csv(parser)
    parser.add_argument("--samples", type=int, default=AffinityConfig.samples,
                        help="K volumes per task, K x K pairs (default %(default)s)")
    parser.add_argument("--size", type=int, default=AffinityConfig.size, help="resize cube edge (default %(default)s)")
    parser.add_argument("--variance", type=float, default=AffinityConfig.variance,
                        help="PCA explained variance kept (default %(default)s)")
    parser.add_argument("--pca-output", choices=PCA_OUTPUTS, default=AffinityConfig.pca_output,
                        help="what W compares: 'scores' = PCA-projected data (default, as the [SEQ] authors' code "
                        "and the scale of their alpha) or 'components' = the unit principal axes (SPEC wording)")
    parser.add_argument("--alpha", type=float, default=AffinityConfig.alpha, help="weight of W (default %(default)s)")
    parser.add_argument("--beta", type=float, default=AffinityConfig.beta, help="weight of 1 - S (default %(default)s)")
    parser.add_argument("--seed", type=int, default=AffinityConfig.seed, help="sampling seed (default %(default)s)")
    parser.add_argument("--workers", type=int, default=AffinityConfig.workers, help="threads (default: all cores)")
    parser.add_argument("--no-resample", action="store_true",
                        help="use volumes as stored (default: every task's volumes reoriented to RAS)")
    parser.add_argument("--results", type=Path, help="with 'fit': CSV with columns path,dice")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing W/S/d/affinity outputs (or fit.json with 'fit'); never an input")
    add_quiet(parser)
    parser.set_defaults(func=_run_affinity)


AFFINITY_OUTPUTS = ("W.csv", "S.csv", "d.csv", "affinity.json", "affinity.png")
PATH_OUTPUTS = ("path.json", "path.png")


def _check_outputs(folder: Path, names, overwrite: bool, inputs) -> None:
    """Refuse before any work: an existing output without --overwrite, an input, a symbolic link."""
    for name in names:
        check_output_file(folder / name, overwrite=overwrite, inputs=inputs)


def _run_affinity(args: argparse.Namespace) -> int:
    if args.data == "fit":
        return _run_fit(args)
    from trmcore.data import DatasetLayout
    from trmcore.selection.dataset import affinity_from_dataset
    from trmcore.selection.plots import plot_affinity
    from trmcore.selection.tasks import resolve_tasks

    if args.dir is not None:
        raise ValueError(f"unexpected argument {args.dir} (did you mean `trm affinity fit {args.dir}`?)")
    if not args.tasks:
        raise ValueError("--tasks is required: 'all' or a tasks file")
    if args.output is None:
        raise ValueError("-o/--output is required: the folder for W/S/d")
    config = AffinityConfig(size=args.size, samples=args.samples, variance=args.variance, pca_output=args.pca_output,
                            seed=args.seed, alpha=args.alpha, beta=args.beta, workers=args.workers,
                            progress=not args.quiet, resample=not args.no_resample)
    inputs = [args.data, args.sites_csv] + ([args.tasks] if args.tasks != "all" else [])
    _check_outputs(args.output, AFFINITY_OUTPUTS, args.overwrite, inputs)
    layout = DatasetLayout.read(args.data, sites=args.sites_csv)
    tasks = resolve_tasks(args.tasks, layout)
    print(f"{len(tasks)} tasks, up to {config.samples} volumes each, resized to {config.size}^3")
    result = affinity_from_dataset(args.data, tasks, config, sites=layout.sites)
    written = result.save(args.output, overwrite=args.overwrite)
    written.append(plot_affinity(result, args.output / "affinity.png", overwrite=args.overwrite))
    _print_matrix("d", result.names, result.d)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _print_matrix(title: str, names, matrix) -> None:
    width = max(len(n) for n in names)
    print(f"{title}:")
    for name, row in zip(names, matrix):
        print(f"  {name:<{width}}  " + " ".join(f"{v:8.4f}" for v in row))


def _run_fit(args: argparse.Namespace) -> int:
    from trmcore.selection.affinity import AffinityResult
    from trmcore.selection.fit import fit_weights, read_results, save_fit

    if args.dir is None:
        raise ValueError("usage: trm affinity fit DIR --results CSV")
    if args.results is None:
        raise ValueError("--results CSV (columns path,dice) is required for `trm affinity fit`")
    _check_outputs(args.dir, ("fit.json",), args.overwrite, [args.results, args.dir / "affinity.json"])
    affinity = AffinityResult.load(args.dir)
    fit = fit_weights(affinity, read_results(args.results))
    path = save_fit(fit, args.dir, overwrite=args.overwrite)
    print(f"fitted on {fit.n_results} paths: alpha = {fit.alpha:.6g}, beta = {fit.beta:.6g} "
          f"(scale fixed at beta = 1; ratio alpha/beta is what counts)")
    print(f"corr(cost, dice): {fit.correlation:+.4f} fitted, {fit.default_correlation:+.4f} with "
          f"alpha = {affinity.alpha:g}, beta = {affinity.beta:g}")
    print(f"wrote {path}; use it with `trm path {args.dir} --target T --fit`")
    return 0


# -------------------------------------------------------------------- path
def _register_path(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "path",
        help="rank sequential transfer paths to a target task from an affinity folder",
        description="Build the task graph (edges where tasks share the modality or the label set), split it "
        "into Girvan-Newman communities, find each community's landmark and rank the paths "
        "landmark -> member -> target by d(v_k,t) + d(v_k,v_i) + d(v_i,t) [SEQ]; direct paths are listed "
        "with cost 2 d(v,t). Writes path.json and path.png next to the affinity unless -o is given.",
        example_lines=["trm path affinity/ --target 13/T1/NCR+ED+ET",
                       "trm path affinity/ --target site-A/T1/CSF --fit --top 5 -o paths/"],
    )
    parser.add_argument("dir", type=Path, help="affinity folder (from `trm affinity`)")
    parser.add_argument("--target", required=True, help="target task name, e.g. site-A/T1/CSF")
    parser.add_argument("--communities", type=int, default=DEFAULT_COMMUNITIES,
                        help="Girvan-Newman communities (default %(default)s)")
    parser.add_argument("--max-hops", type=int, default=DEFAULT_MAX_HOPS,
                        help="2 = the paper's one intermediate task; more searches longer paths (default %(default)s)")
    parser.add_argument("--sources", nargs="+", help="restrict the source tasks")
    parser.add_argument("--allow-direct", action="store_true",
                        help="let a direct path win when cheapest (the SPEC's literal choice; with a "
                        "triangle-respecting d it then always wins). Default: as [SEQ], the cheapest path "
                        "with an intermediate task; the best direct path is reported beside it")
    parser.add_argument("--alpha", type=float, help="override alpha of d")
    parser.add_argument("--beta", type=float, help="override beta of d")
    parser.add_argument("--fit", action="store_true", help="use alpha, beta from DIR/fit.json")
    parser.add_argument("--top", type=int, default=10, help="candidates to print (default %(default)s)")
    add_output(parser, help="output folder (default: DIR)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing path.json / path.png")
    parser.set_defaults(func=_run_path)


def _run_path(args: argparse.Namespace) -> int:
    from trmcore.selection.affinity import AffinityResult
    from trmcore.selection.fit import load_fit
    from trmcore.selection.path import select_paths
    from trmcore.selection.plots import plot_task_graph

    out = args.output or args.dir
    _check_outputs(out, PATH_OUTPUTS, args.overwrite, [args.dir / "affinity.json", args.dir / "fit.json"])
    affinity = AffinityResult.load(args.dir)
    alpha, beta = affinity.alpha, affinity.beta
    if args.fit:
        fit = load_fit(args.dir)
        alpha, beta = fit.alpha, fit.beta
    alpha = args.alpha if args.alpha is not None else alpha
    beta = args.beta if args.beta is not None else beta
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
    affinity = affinity.with_weights(alpha, beta)
    selection = select_paths(affinity, args.target, num_communities=args.communities, max_hops=args.max_hops,
                             sources=args.sources, allow_direct=args.allow_direct)
    for note in selection.notes:
        print(f"note: {note}", file=sys.stderr)
    make_folder(out)
    payload = dict(selection.to_json(), alpha=alpha, beta=beta)
    atomic_write_json(out / "path.json", payload, overwrite=args.overwrite, indent=1)
    plot_task_graph(selection.graph, selection, out / "path.png", overwrite=args.overwrite)
    print(f"d = {alpha:g} W + {beta:g} (1 - S); {len(selection.communities)} communities, "
          f"landmarks: {', '.join(selection.landmarks) or '-'}")
    image_term = affinity.config.get("pca_output")
    if image_term:
        print(f"W compares PCA {image_term} (trm affinity --pca-output {image_term})")
    print(f"rule: {selection.rule}")
    chosen, direct = selection.chosen, selection.best_direct
    rows = [("chosen", chosen)] + ([("best direct", direct)] if direct is not None else [])
    width = max(len(" -> ".join(c.tasks)) for _, c in rows)
    for label, candidate in rows:
        print(f"{label + ':':<13} {' -> '.join(candidate.tasks):<{width}}  cost {candidate.cost:.4f}  ({candidate.kind})")
    if direct is not None and direct is not chosen:
        print(f"{'':<13} chosen - best direct = {chosen.cost - direct.cost:+.4f}")
    print(f"{'rank':>4}  {'cost':>9}  {'kind':<8}  path")
    for rank, candidate in enumerate(selection.candidates[: args.top], start=1):
        print(f"{rank:>4}  {candidate.cost:9.4f}  {candidate.kind:<8}  {' -> '.join(candidate.tasks)}")
    print(f"wrote {out / 'path.json'}, {out / 'path.png'}")
    return 0


# -------------------------------------------------------------------- rank
def _register_rank(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "rank",
        help="rank source models by LEEP on a target training set",
        description="Image-level LEEP (SPEC section 2) of each source model (run folder or .onnx) on the "
        "target task's training slices, highest first. --validate also fine-tunes each source briefly and "
        "reports Kendall's tau between LEEP and Dice.",
        example_lines=["trm rank data/iseg --channel T1 --labels CSF --sources runs/a runs/b model.onnx -o rank.json",
                       "trm rank data/iseg --channel T1 --labels CSF --sources runs/a runs/b --validate"],
    )
    add_task_arguments(parser)
    parser.add_argument("--sources", nargs="+", required=True, type=Path,
                        help="run folders, .onnx models, nnU-Net v2 result folders (.../TRAINER__PLANS__2d, "
                             "with --fold) or MONAI bundle folders / network JSONs")
    parser.add_argument("--fold", default=RankConfig.fold, metavar="K",
                        help="fold of nnU-Net sources: fold_K/checkpoint_final.pth (default %(default)s; 'all')")
    parser.add_argument("--val-fraction", type=float, default=RankConfig.val_fraction,
                        help="cases held out of the training set (default %(default)s)")
    parser.add_argument("--shots", type=int, help="use N seeded training slices (few-shot)")
    parser.add_argument("--axis", type=int, default=None,
                        help="slice axis for ONNX sources (default: from the model's trmcore metadata, else 2)")
    parser.add_argument("--divisor", type=int, default=None,
                        help="pad multiple for ONNX sources (default: from the model's trmcore metadata, else 16)")
    parser.add_argument("--batch-size", type=int, default=RankConfig.batch_size,
                        help="slices per forward pass (default %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for run folders (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=RankConfig.seed, help="split / few-shot seed (default %(default)s)")
    parser.add_argument("--no-resample", action="store_true",
                        help="use target volumes as stored (default: each source's recorded orientation and spacing)")
    parser.add_argument("--validate", action="store_true", help="fine-tune each source and correlate LEEP with Dice")
    parser.add_argument("--iterations", type=int, default=VALIDATE_ITERATIONS,
                        help="fine-tuning iterations for --validate (default %(default)s)")
    parser.add_argument("--method", default=PLAIN_METHOD, choices=method_names(),
                        help="fine-tuning method for --validate (default %(default)s)")
    parser.add_argument("--work-dir", type=Path, help="where --validate writes its runs (default: temporary)")
    add_output(parser, help="write the ranking as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing -o file (never an input)")
    parser.set_defaults(func=_run_rank)


def _run_rank(args: argparse.Namespace) -> int:
    from trmcore.selection.rank import rank_sources, validate_ranking

    config = RankConfig(channel=args.channel, labels=args.labels, site=args.site, val_fraction=args.val_fraction,
                        shots=args.shots, axis=args.axis, divisor=args.divisor, batch_size=args.batch_size,
                        device=args.device, seed=args.seed, resample=not args.no_resample, fold=args.fold)
    inputs = [args.data, *args.sources]
    if args.output:  # refuse before scoring every source
        check_output_file(args.output, overwrite=args.overwrite, inputs=inputs)
    ranking = rank_sources(args.data, args.sources, config)
    payload = {"target": {"data": str(args.data), "channel": args.channel, "labels": args.labels, "site": args.site},
               "ranking": [r.to_json() for r in ranking]}
    width = max(len(str(r.source)) for r in ranking)
    print(f"{'rank':>4}  {'LEEP':>10}  {'kind':<6}  {'Z':>3}  {'pixels':>10}  source")
    for k, r in enumerate(ranking, start=1):
        print(f"{k:>4}  {r.leep:10.5f}  {r.kind:<6}  {r.num_source_classes:>3}  {r.pixels:>10}  {str(r.source)}")
    if args.validate:
        validation = validate_ranking(args.data, ranking, config, iterations=args.iterations, method=args.method,
                                      work_dir=args.work_dir)
        payload["validation"] = validation.to_json()
        for r, dice in zip(ranking, validation.dice):
            print(f"  {str(r.source):<{width}}  LEEP {r.leep:9.5f}  Dice {dice:.4f}")
        print(f"Kendall tau(LEEP, Dice) = {validation.tau:+.3f} (p = {validation.p_value:.3g}, n = {len(ranking)})")
    if args.output:
        make_folder(args.output.parent)
        atomic_write_json(args.output, payload, overwrite=args.overwrite, indent=1, inputs=inputs)
        print(f"wrote {args.output}")
    return 0


# ----------------------------------------------------------- transfer-path
def _register_transfer_path(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "transfer-path",
        help="fine-tune along a task path hop by hop and compare with direct transfer",
        description="Fine-tune the source model along --path A,B,...,TARGET (A = the source's task; each hop "
        "keeps every weight but the head), evaluate on each hop's validation cases, and compare with "
        "direct transfer from the source to the target.",
        example_lines=["trm transfer-path data/fets --path 01/T1/NCR+ED+ET,13/T1/NCR+ED+ET,18/T1/NCR+ED+ET "
                       "--source runs/01-t1 -o runs/seq"],
    )
    parser.add_argument("data", type=Path, help="dataset folder holding every task of the path")
    parser.add_argument("--path", required=True, help="comma-separated task names, first = source task, last = target")
    parser.add_argument("--source", required=True, type=Path, help="run folder of the model trained on the first task")
    add_output(parser, required=True, help="output folder (one run per hop)")
    parser.add_argument("--method", default=TransferPathConfig.method, choices=method_names(),
                        help="fine-tuning method (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"fine-tuning iterations per hop (default {TrainConfig.iterations})")
    parser.add_argument("--shots", type=int, help="training slices per hop (few-shot)")
    add_device(parser)
    parser.add_argument("--seed", type=int, default=TransferPathConfig.seed, help="seed (default %(default)s)")
    parser.add_argument("--no-direct", action="store_true", help="skip the direct-transfer comparison")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier `trm transfer-path` output in -o (never another folder)")
    add_quiet(parser)
    parser.set_defaults(func=_run_transfer_path)


def _run_transfer_path(args: argparse.Namespace) -> int:
    from trmcore.fileio import ALL_ENTRIES, prepare_output_folder
    from trmcore.selection.transfer import transfer_along_path

    # The folder holds one run per hop: it belongs to this command, so --overwrite may clear only its own output.
    prepare_output_folder(args.output, "transfer-path", [ALL_ENTRIES], overwrite=args.overwrite,
                          inputs=[args.data, args.source])
    config = TransferPathConfig(method=args.method, iterations=args.iterations, shots=args.shots,
                                device=args.device, seed=args.seed, direct=not args.no_direct,
                                progress=not args.quiet)
    report = transfer_along_path(args.data, args.path, args.source, args.output, config)
    print(report.summary())
    return 0

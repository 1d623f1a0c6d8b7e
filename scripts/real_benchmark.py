#!/usr/bin/env python
"""Real-data benchmark of the fine-tuning methods: vanilla vs trm (each risk-weighting variant).

Download-free: it reads a folder the user points at and never fetches anything.

Real data (``--scan DIR``): one co-registered, skull-stripped MS patient with
``FLAIR.nii.gz``, ``T1.nii.gz``, ``T2.nii.gz`` and a binary lesion mask
``label.nii.gz`` (e.g. patient 07 of the open MS lesion database, Lesjak et
al. 2017). One patient only, so source and target must not overlap: the scan
is brought to RAS, reduced in-plane by ``--inplane-factor`` (2 = 2 mm), cut into
hemispheres (left = site ``source``, right = site ``target``) and each
hemisphere into ``--slabs`` axial slabs; each slab is one pseudo-case. The
target's slabs are split per seed into training and held-out (``--val-fraction``).
Labels written (dataset.json):

- ``lesion`` (1): the experts' lesion mask;
- ``abnormal`` = lesion + a rim of ``--rim`` voxels around it (region [1, 2]): a
  whole-tumour-like superset, as oedema counts as tumour for a FLAIR whole-tumour
  source and as background for an enhancing-tumour target;
- ``CSF``, ``GM``, ``WM`` (3, 4, [1, 2, 5]): three tissue classes from a 1-D k-means
  of T1 in the brain (lesion and rim counted as WM), a source task with a label set
  unrelated to the target's.

Pairs (source -> target): cross-modality ``source/FLAIR/lesion -> target/T2/lesion``,
cross-task ``source/FLAIR/abnormal -> target/FLAIR/lesion``, both
``source/FLAIR/abnormal -> target/T2/lesion``, and tissue -> lesion
``source/T2/CSF+GM+WM -> target/T2/lesion``.

Phantom (``--phantom``): the quick study profile's 4-site tumour phantom and a
subset of its Table II pairs.

Every run goes through the study runner (trmcore.study: job cache, so an
interrupted benchmark resumes) and the training API. Output: ``OUT/results.csv``
(one row per run: pair, seed, column, Dice, risk warnings) and ``OUT/results.md``.

Example:
    OMP_NUM_THREADS=1 python scripts/real_benchmark.py --scan /data/msles-patient07 -o /tmp/realbench \\
        --seeds 0,1,2 --columns vanilla,trm,trm-per-class
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from statistics import mean
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Columns: label -> (method, TrainConfig overrides). The overrides are Job fields of trmcore.study.grid.
COLUMNS: Dict[str, Tuple[str, Dict[str, object]]] = {
    "vanilla": ("vanilla", {}),
    "trm": ("trm", {}),
    "trm-eq7w": ("trm", {"risk_balance": "none"}),
    "trm-per-class": ("trm", {"risk_balance": "per-class"}),
    "trm-foreground": ("trm", {"risk_balance": "foreground"}),
    "trm-per-class-mean": ("trm", {"risk_balance": "per-class", "trm_normalize": "mean"}),
    "trm-eq7w-mean": ("trm", {"risk_balance": "none", "trm_normalize": "mean"}),
    "trm-anneal": ("trm", {"risk_balance": "none", "risk_anneal": True}),
}

REAL_PAIRS = (("source/FLAIR/lesion", "target/T2/lesion"),
              ("source/FLAIR/abnormal", "target/FLAIR/lesion"),
              ("source/FLAIR/abnormal", "target/T2/lesion"),
              ("source/T2/CSF+GM+WM", "target/T2/lesion"))
PHANTOM_PAIRS = (("site-B/FLAIR/NCR+ED+ET", "site-D/FLAIR/NCR+ED+ET"),
                 ("site-A/T1/NCR+ED+ET", "site-B/T1/NCR+ED+ET"),
                 ("site-B/T1/NCR+ED+ET", "site-D/FLAIR/NCR+ED+ET"))
CHANNELS = ("FLAIR", "T1", "T2")
# Collapse as in the study: Dice below this where vanilla is above COLLAPSE_REFERENCE.
COLLAPSE_DICE, COLLAPSE_REFERENCE = 0.05, 0.1


def _fail(message: str) -> None:
    print(f"real_benchmark: {message}", file=sys.stderr)
    raise SystemExit(2)


def _kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 50) -> np.ndarray:
    """Sorted centres of a 1-D k-means (initialised at quantiles)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def _reduce(volume: np.ndarray, factor: int, label: bool = False) -> np.ndarray:
    """Block-mean in x and y by ``factor`` (labels: a voxel is lesion when >= half its block is)."""
    if factor == 1:
        return volume
    nx, ny = (volume.shape[0] // factor) * factor, (volume.shape[1] // factor) * factor
    v = volume[:nx, :ny].astype(np.float64)
    v = v.reshape(nx // factor, factor, ny // factor, factor, -1).mean(axis=(1, 3))
    return (v >= 0.5).astype(np.uint8) if label else v.astype(np.float32)


def prepare_scan_dataset(scan: Path, out: Path, factor: int = 2, slabs: int = 3, rim: int = 2) -> Path:
    """Write the derived dataset (standard layout) of one patient to ``out``; returns ``out``."""
    import nibabel as nib
    from scipy import ndimage

    from trmcore.fileio import atomic_write_json, prepare_output_folder, save_image

    settings = {"scan": str(scan.resolve()), "inplane_factor": factor, "slabs": slabs, "rim": rim}
    if (out / "dataset.json").is_file():
        made = json.loads((out / "dataset.json").read_text()).get("benchmark")
        if made != settings:
            _fail(f"{out}: holds a dataset made with {made}, not {settings}; choose another -o")
        return out
    for name in (*CHANNELS, "label"):
        if not (scan / f"{name}.nii.gz").is_file():
            _fail(f"{scan / (name + '.nii.gz')}: missing (the scan folder needs FLAIR, T1, T2 and label .nii.gz)")
    images = {}
    for name in (*CHANNELS, "label"):
        path = scan / f"{name}.nii.gz"
        try:
            img = nib.as_closest_canonical(nib.load(str(path)))  # RAS: x runs left -> right
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as err:  # noqa: BLE001 - any unreadable file is one line and exit code 2
            _fail(f"{path}: cannot read it as NIfTI ({type(err).__name__}: {err})")
        if data.ndim != 3 or not np.all(np.isfinite(data)):
            _fail(f"{path}: expected a 3-D volume of finite values, got shape {data.shape}")
        images[name] = (data, img.affine)
    shape = images["label"][0].shape
    if any(images[c][0].shape != shape for c in CHANNELS):
        _fail(f"{scan}: images and label differ in shape")
    raw_label = images["label"][0]
    if not np.all(np.isin(np.unique(raw_label), (0, 1))):
        _fail(f"{scan / 'label.nii.gz'}: expected a binary lesion mask (0 / 1)")
    brain = np.zeros(shape, bool)
    for c in CHANNELS:
        brain |= images[c][0] != 0  # skull-stripped scans: zero outside the brain (any sign inside)
    lesion = raw_label > 0
    t1 = images["T1"][0]
    centres = _kmeans_1d(t1[brain & ~lesion][::7])
    tissue = np.abs(t1[..., None] - centres).argmin(axis=-1) + 3  # 3 CSF, 4 GM, 5 WM
    ring = ndimage.binary_dilation(lesion, iterations=rim * factor) & ~lesion & brain
    label = np.where(brain, tissue, 0).astype(np.uint8)
    label[ring] = 2
    label[lesion] = 1

    affine = images["label"][1].copy()
    affine[:3, 0] *= factor
    affine[:3, 1] *= factor
    reduced = {c: _reduce(images[c][0] * brain, factor) for c in CHANNELS}
    # Labels: lesion by majority of the block, the rest by the block's most common class.
    lesion_r = _reduce(lesion.astype(np.float32), factor, label=True).astype(bool)
    ring_r = _reduce(ring.astype(np.float32), factor, label=True).astype(bool) & ~lesion_r
    classes = np.stack([_reduce((label == k).astype(np.float32), factor) for k in (0, 3, 4, 5)], axis=-1)
    label_r = np.array([0, 3, 4, 5], np.uint8)[classes.argmax(axis=-1)]
    label_r[ring_r] = 2
    label_r[lesion_r] = 1

    # Hemispheres at the brain's mid x; slabs along z holding equal shares of the lesion voxels (lesions
    # cluster around the ventricles: equal thickness would leave a slab with a handful), the outer slabs
    # reaching to the brain's ends.
    xs = np.nonzero(label_r.any(axis=(1, 2)))[0]
    mid = (xs[0] + xs[-1] + 1) // 2
    zs = np.nonzero(label_r.any(axis=(0, 1)))[0]
    lesion_z = np.cumsum((label_r == 1).sum(axis=(0, 1)))
    if lesion_z[-1] < slabs:
        _fail(f"{scan / 'label.nii.gz'}: too few lesion voxels ({int(lesion_z[-1])}) for {slabs} slabs")
    inner = [int(np.searchsorted(lesion_z, lesion_z[-1] * k / slabs)) + 1 for k in range(1, slabs)]
    bounds = np.array([zs[0], *inner, zs[-1] + 1])
    prepare_output_folder(out, "real-benchmark", ["dataset.json", "imagesTr", "labelsTr"])
    (out / "imagesTr").mkdir(exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    sites, counts = {}, {}
    for site, (x0, x1) in (("source", (xs[0], mid)), ("target", (mid, xs[-1] + 1))):
        for k in range(slabs):
            z0, z1 = int(bounds[k]), int(bounds[k + 1])
            case = f"{site}-slab{k}"
            crop = np.eye(4)
            crop[:3, 3] = (x0, 0, z0)
            case_affine = affine @ crop
            for index, c in enumerate(CHANNELS):
                save_image(nib.Nifti1Image(reduced[c][x0:x1, :, z0:z1], case_affine),
                           out / "imagesTr" / f"{case}_{index:04d}.nii.gz", overwrite=False)
            part = label_r[x0:x1, :, z0:z1]
            save_image(nib.Nifti1Image(part.astype(np.uint8), case_affine), out / "labelsTr" / f"{case}.nii.gz",
                       overwrite=False)
            sites[case] = site
            counts[case] = {"lesion": int((part == 1).sum()), "rim": int((part == 2).sum()),
                            "brain": int((part > 0).sum())}
    atomic_write_json(out / "dataset.json", {
        "name": f"real benchmark from {scan.name}",
        "channel_names": {str(i): c for i, c in enumerate(CHANNELS)},
        "labels": {"background": 0, "lesion": 1, "abnormal": [1, 2], "CSF": 3, "GM": 4, "WM": [1, 2, 5]},
        "file_ending": ".nii.gz", "sites": sites, "voxels": counts, "benchmark": settings,
        "notes": f"derived from {scan}: RAS, in-plane factor {factor}, hemispheres x {slabs} axial slabs, "
                 f"rim {rim} voxels, tissue = 1-D k-means of T1"}, overwrite=False, indent=1)
    return out


def _context(out: Path, data: Path, profile, width: int, iterations: int, source_iterations: int,
             val_fraction: float, lr: float):
    from trmcore.study.runner import StudyContext

    profile = replace(profile, name="real-benchmark", model=replace(profile.model, width=width),
                      training=replace(profile.training, iterations=iterations, lr=lr, val_fraction=val_fraction),
                      source_iterations=source_iterations, tumour_source_iterations=source_iterations)
    return StudyContext(str(out.resolve()), {"tumour": str(data.resolve())}, profile, None, threads=1)


def build_jobs(pairs: Sequence[Tuple[str, str]], seeds: Sequence[int], columns: Sequence[str],
               source_seed: Optional[int] = 0):
    """Jobs and (pair, seed, column, key) cells; sources trained once (``source_seed``) or per seed (None)."""
    from trmcore.study.grid import Job, StudyGrid

    grid = StudyGrid()
    cells = []
    for seed in seeds:
        for source, target in pairs:
            parent = grid.add(Job("source", "tumour", source, seed if source_seed is None else source_seed))
            for label in columns:
                method, overrides = COLUMNS[label]
                key = grid.add(Job("finetune", "tumour", target, seed, parent=parent, source=source, method=method,
                                   **overrides))
                cells.append((source, target, seed, label, key))
    return grid, cells


def run_diagnostics(run_dir: Path) -> Dict[str, Optional[float]]:
    """The numbers of trmcore.training.risk_diagnostics a trm run recorded in run.json (empty for vanilla)."""
    try:
        summary = json.loads((run_dir / "run.json").read_text()).get("risk_diagnostics") or {}
    except (OSError, ValueError):
        return {}
    mass, grads = summary.get("mass") or {}, summary.get("gradients") or {}
    classes = list((mass.get("target_classes") or {}).values())
    out = {"bg_emphasis": mass.get("background_emphasis"), "conflict_share": mass.get("conflict_share"),
           "fg_weight_share": sum(c["weight_share"] or 0 for c in classes[1:]) if classes else None,
           "fg_pixel_share": sum(c["pixel_share"] or 0 for c in classes[1:]) if classes else None,
           "grad_fg_bg": grads.get("fg_bg_ratio"), "vanilla_grad_fg_bg": grads.get("vanilla_fg_bg_ratio"),
           "loss_over_vanilla": (grads["loss"] / grads["vanilla_loss"]) if grads.get("vanilla_loss") else None,
           "denominator_factor": grads.get("denominator_factor"), "weight_factor": grads.get("weight_factor")}
    return {k: None if v is None else round(float(v), 4) for k, v in out.items()}


DIAGNOSTIC_FIELDS = ("bg_emphasis", "conflict_share", "fg_weight_share", "fg_pixel_share", "grad_fg_bg",
                     "vanilla_grad_fg_bg", "loss_over_vanilla", "denominator_factor", "weight_factor")


def summarise(cells, results: Dict[str, dict], columns: Sequence[str], runs: Optional[Path] = None
              ) -> Tuple[List[dict], str]:
    """CSV rows (one per run, with the run's trm diagnostics) and a markdown table: per pair, per column,
    every seed, and the means."""
    rows = []
    for source, target, seed, label, key in cells:
        result = results.get(key)
        diagnostics = run_diagnostics(runs / key) if runs is not None else {}
        rows.append({"source": source, "target": target, "seed": seed, "column": label,
                     "dice": None if result is None else round(float(result["dice"]), 4),
                     "risk_warnings": "" if result is None else ";".join(result.get("risk_warnings", [])),
                     **{k: diagnostics.get(k) for k in DIAGNOSTIC_FIELDS}})
    dice = {(r["source"], r["target"], r["seed"], r["column"]): r["dice"] for r in rows}
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = ["| source -> target | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    column_means: Dict[str, List[float]] = {c: [] for c in columns}
    collapses = {c: 0 for c in columns}
    for source, target in pairs:
        entries = []
        for c in columns:
            values = [dice.get((source, target, s, c)) for s in seeds]
            known = [v for v in values if v is not None]
            if known:
                column_means[c].append(mean(known))
            for s, v in zip(seeds, values):
                ref = dice.get((source, target, s, "vanilla"))
                if v is not None and ref is not None and v < COLLAPSE_DICE and ref > COLLAPSE_REFERENCE:
                    collapses[c] += 1
            per_seed = " / ".join("-" if v is None else f"{v:.3f}" for v in values)
            entries.append(f"{mean(known):.3f} ({per_seed})" if known else "-")
        lines.append(f"| {source} -> {target} | " + " | ".join(entries) + " |")
    lines.append("| mean over pairs | " + " | ".join(f"{mean(v):.3f}" if v else "-" for v in column_means.values())
                 + " |")
    lines.append("| collapses | " + " | ".join(str(collapses[c]) for c in columns) + " |")
    lines.append("")
    lines.append(f"Per cell: mean over seeds {seeds} (each seed's held-out Dice in brackets). Collapse: Dice < "
                 f"{COLLAPSE_DICE} where vanilla > {COLLAPSE_REFERENCE}.")
    lines += ["", "Diagnostics of the trm runs before training (mean over seeds): background / foreground "
              "effective weight (vanilla 1), foreground share of pixels -> of loss weight, gradient norm "
              "foreground / background (vanilla's), loss / vanilla's loss = denominator factor x weight factor.", "",
              "| source -> target | column | bg/fg weight | fg pixels -> weight | grad fg/bg (vanilla) | "
              "loss / vanilla = denominator x weight |", "|---|---|---|---|---|---|"]

    def avg(source, target, column, field):
        values = [r[field] for r in rows if (r["source"], r["target"], r["column"]) == (source, target, column)
                  and r[field] is not None]
        return mean(values) if values else None

    for source, target in pairs:
        for c in columns:
            if COLUMNS[c][0] != "trm" or avg(source, target, c, "bg_emphasis") is None:
                continue
            a = {f: avg(source, target, c, f) for f in DIAGNOSTIC_FIELDS}
            fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"| {source} -> {target} | {c} | {fmt(a['bg_emphasis'], '.2f')} | "
                         f"{fmt(a['fg_pixel_share'], '.2%')} -> {fmt(a['fg_weight_share'], '.2%')} | "
                         f"{fmt(a['grad_fg_bg'], '.2f')} ({fmt(a['vanilla_grad_fg_bg'], '.2f')}) | "
                         f"{fmt(a['loss_over_vanilla'], '.0f')} = {fmt(a['denominator_factor'], '.0f')} x "
                         f"{fmt(a['weight_factor'], '.2f')} |")
    return rows, "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scan", type=Path, help="folder with FLAIR/T1/T2/label .nii.gz of one patient")
    what.add_argument("--phantom", action="store_true", help="the quick profile's tumour phantom (generated)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="benchmark folder (made or resumed)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--columns", default="vanilla,trm,trm-eq7w,trm-per-class,trm-foreground",
                        help=f"comma-separated, from {', '.join(COLUMNS)}")
    parser.add_argument("--pairs", default=None, help="indices of the pairs to run, e.g. 0,2 (default all)")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--source-iterations", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-fraction", type=float, default=0.34)
    parser.add_argument("--inplane-factor", type=int, default=2)
    parser.add_argument("--slabs", type=int, default=3)
    parser.add_argument("--rim", type=int, default=2, help="rim of 'abnormal' around the lesion, reduced voxels")
    parser.add_argument("--source-per-seed", action="store_true", help="train a source per seed (default: seed 0)")
    args = parser.parse_args(argv)

    import torch

    from trmcore.study.profiles import get_profile
    from trmcore.study.runner import load_results, run_grid

    torch.set_num_threads(1)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        _fail(f"unknown column(s) {', '.join(unknown)}; choose from {', '.join(COLUMNS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    quick = get_profile("quick")
    if args.scan is not None and not args.scan.is_dir():
        _fail(f"{args.scan}: not a folder")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phantom:
        from trmcore.study.study import _phantom

        data = _phantom(args.out / "data", quick.tumour_data, progress=False)
        pairs = PHANTOM_PAIRS
        defaults = dict(width=quick.model.width, iterations=quick.training.iterations,
                        source_iterations=quick.tumour_source_iterations, val_fraction=quick.training.val_fraction)
    else:
        data = prepare_scan_dataset(args.scan, args.out / "data", args.inplane_factor, args.slabs, args.rim)
        pairs = REAL_PAIRS
        defaults = dict(width=16, iterations=200, source_iterations=600, val_fraction=args.val_fraction)
    if args.pairs:
        pairs = [pairs[int(i)] for i in args.pairs.split(",")]
    settings = {k: getattr(args, k) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
    ctx = _context(args.out, data, quick, lr=args.lr, **settings)
    grid, cells = build_jobs(pairs, seeds, columns, None if args.source_per_seed else 0)
    summary = run_grid(grid, ctx, workers=1, progress=True, log=lambda m: print(m, file=sys.stderr))
    results = load_results(ctx, grid)
    rows, table = summarise(cells, results, columns, args.out / "runs")
    from trmcore.fileio import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.out / "results.csv", buffer.getvalue(), overwrite=True)
    header = (f"{'phantom (quick profile tumour)' if args.phantom else 'real scan ' + str(args.scan)}; "
              f"settings {json.dumps(settings)}, lr {args.lr}; wall {summary.wall_s:.0f} s\n\n")
    atomic_write_text(args.out / "results.md", header + table, overwrite=True)
    print(header + table)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

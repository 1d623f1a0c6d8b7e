"""``trm phantom`` and ``trm import {iseg,brats}``: make or convert datasets.

Examples::

    trm phantom phantom/                              # 6 small cases, 3 sites
    trm phantom big/ --cases 20 --sites 4 --shape 240 240 155 --tumour
    trm import iseg iSeg-2019-Training/ data/iseg
    trm import brats FeTS2022/ data/fets --partitions partitioning_1.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    phantom = subparsers.add_parser(
        "phantom",
        help="write a synthetic multi-site brain MRI dataset (T1/T2/FLAIR, CSF/GM/WM, optional tumour)",
        description="Write a procedural multi-site brain MRI phantom in the standard layout "
        "(imagesTr/, labelsTr/, dataset.json). Deterministic by --seed.",
    )
    phantom.add_argument("out", type=Path, help="dataset folder to create")
    phantom.add_argument("--cases", type=int, default=6, help="number of cases (default 6)")
    phantom.add_argument(
        "--sites", default="3", help="number of built-in sites 1-4, or a comma list of names (site-A,...,site-D); default 3"
    )
    phantom.add_argument(
        "--shape", type=int, nargs=3, default=(48, 48, 24), metavar=("X", "Y", "Z"), help="volume shape (default 48 48 24)"
    )
    phantom.add_argument(
        "--tumour", nargs="?", const=1.0, default=0.0, type=float, metavar="FRACTION",
        help="add a tumour (NCR/ED/ET) to every case, or to FRACTION of them",
    )
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    phantom.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    phantom.set_defaults(func=_run_phantom)

    importer = subparsers.add_parser(
        "import",
        help="convert iSeg-2019 or BraTS/FeTS data into the standard layout",
        description="Convert a public dataset from its native layout into the standard layout.",
    )
    kinds = importer.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True
    iseg = kinds.add_parser(
        "iseg",
        help="iSeg-2019 Analyze files subject-N-{T1,T2,label}.hdr/.img",
        description="Convert iSeg-2019 (Analyze subject-N-T1/-T2/-label .hdr/.img). Labels keep their values: "
        "CSF 10, GM 150, WM 250.",
    )
    iseg.add_argument("src", type=Path, help="folder with the .hdr/.img files")
    iseg.add_argument("dst", type=Path, help="dataset folder to create")
    iseg.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    iseg.set_defaults(func=_run_import_iseg)
    brats = kinds.add_parser(
        "brats",
        help="BraTS / FeTS case folders (CASE_t1, _t1ce, _t2, _flair, _seg)",
        description="Convert BraTS/FeTS case folders. Labels keep their values: NCR 1, ED 2, ET 4. "
        "--partitions takes the FeTS CSV (Subject_ID, Partition_ID); partitions become sites.",
    )
    brats.add_argument("src", type=Path, help="folder of case folders")
    brats.add_argument("dst", type=Path, help="dataset folder to create")
    brats.add_argument("--partitions", type=Path, default=None, help="FeTS partitioning CSV (Subject_ID, Partition_ID)")
    brats.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    brats.set_defaults(func=_run_import_brats)


def _run_phantom(args: argparse.Namespace) -> int:
    from trmcore.data import make_phantom

    sites = int(args.sites) if str(args.sites).strip().isdigit() else args.sites
    out = make_phantom(
        args.out, n_cases=args.cases, sites=sites, size=tuple(args.shape), tumour=args.tumour,
        seed=args.seed, overwrite=args.overwrite, progress=True,
    )
    _summary(out)
    return 0


def _run_import_iseg(args: argparse.Namespace) -> int:
    from trmcore.data import import_iseg

    _summary(import_iseg(args.src, args.dst, overwrite=args.overwrite))
    return 0


def _run_import_brats(args: argparse.Namespace) -> int:
    from trmcore.data import import_brats

    _summary(import_brats(args.src, args.dst, partitions=args.partitions, overwrite=args.overwrite))
    return 0


def _summary(root: Path) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    n_test = len({p.name.rsplit("_", 1)[0] for p in (root / "imagesTs").glob("*.nii.gz")}) if (root / "imagesTs").is_dir() else 0
    sites = sorted(set(meta.get("sites", {}).values()))
    print(f"wrote {root}: {meta.get('numTraining', 0)} labelled case(s)" + (f", {n_test} unlabelled" if n_test else ""))
    print(f"  channels: {', '.join(meta['channel_names'].values())}")
    print(f"  labels:   {', '.join(f'{k}={v}' for k, v in meta['labels'].items())}")
    if sites:
        print(f"  sites:    {', '.join(sites)}")

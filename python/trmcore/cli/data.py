"""``trm phantom`` and ``trm import {iseg,brats}``: make or convert datasets.

Examples::

    trm phantom phantom/                              # 6 small cases, 3 sites
    trm phantom big/ --cases 20 --num-sites 4 --shape 240 240 155 --tumour
    trm import iseg iSeg-2019-Training/ data/iseg
    trm import brats FeTS2022/ data/fets --partitions partitioning_1.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trmcore.cli.common import HelpFormatter, add_quiet, command, examples
from trmcore.data.importers import IMPORTERS
from trmcore.data.phantom import DEFAULT_CASES, DEFAULT_SEED, DEFAULT_SHAPE, DEFAULT_SITES


def register(subparsers: argparse._SubParsersAction) -> None:
    phantom = command(
        subparsers, "phantom",
        help="write a synthetic multi-site brain MRI dataset (T1/T2/FLAIR, CSF/GM/WM, optional tumour)",
        description="Write a procedural multi-site brain MRI phantom in the standard layout "
        "(imagesTr/, labelsTr/, dataset.json). Deterministic by --seed.",
        example_lines=["trm phantom phantom/", "trm phantom big/ --cases 20 --num-sites 4 --shape 240 240 155 --tumour"],
    )
    phantom.add_argument("out", type=Path, help="dataset folder to create")
    phantom.add_argument("--cases", type=int, default=DEFAULT_CASES, help="number of cases (default %(default)s)")
    phantom.add_argument("--num-sites", dest="sites", default=str(DEFAULT_SITES), metavar="N|NAMES",
                         help="number of built-in sites 1-4, or a comma list of their names (site-A,...,site-D); "
                              "default %(default)s")
    phantom.add_argument(
        "--shape", type=int, nargs=3, default=DEFAULT_SHAPE, metavar=("X", "Y", "Z"),
        help=f"volume shape (default {' '.join(map(str, DEFAULT_SHAPE))})"
    )
    phantom.add_argument(
        "--tumour", nargs="?", const=1.0, default=0.0, type=float, metavar="FRACTION",
        help="add a tumour (NCR/ED/ET) to every case, or to FRACTION of them",
    )
    phantom.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    phantom.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    add_quiet(phantom)
    phantom.set_defaults(func=_run_phantom)

    importer = command(
        subparsers, "import",
        help=f"convert {' or '.join(IMPORTERS)} data into the standard layout",
        description="Convert a public dataset from its native layout into the standard layout.",
        example_lines=["trm import iseg iSeg-2019-Training/ data/iseg",
                       "trm import brats FeTS2022/ data/fets --partitions partitioning_1.csv"],
    )
    kinds = importer.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True
    for name, cls in IMPORTERS.items():
        fmt = cls()
        sub = kinds.add_parser(name, help=fmt.summary, description=fmt.description,
                               epilog=examples(fmt.example or f"trm import {name} SRC/ DST/"), formatter_class=HelpFormatter,
                               allow_abbrev=False)
        sub.add_argument("src", type=Path, help="folder in the native layout")
        sub.add_argument("dst", type=Path, help="dataset folder to create")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
        add_quiet(sub)
        fmt.add_arguments(sub)
        sub.set_defaults(func=_run_import, importer=fmt)


def _run_phantom(args: argparse.Namespace) -> int:
    from trmcore.data import make_phantom

    sites = int(args.sites) if str(args.sites).strip().isdigit() else args.sites
    out = make_phantom(
        args.out, n_cases=args.cases, sites=sites, size=tuple(args.shape), tumour=args.tumour,
        seed=args.seed, overwrite=args.overwrite, progress=not args.quiet,
    )
    _summary(out)
    return 0


def _run_import(args: argparse.Namespace) -> int:
    importer = args.importer
    _summary(importer.run(args.src, args.dst, overwrite=args.overwrite, progress=not args.quiet,
                          **importer.options(args)))
    return 0


def _summary(root: Path) -> None:
    from trmcore.schema import read_json

    meta = read_json(root / "dataset.json")
    n_test = len({p.name.rsplit("_", 1)[0] for p in (root / "imagesTs").glob("*.nii.gz")}) if (root / "imagesTs").is_dir() else 0
    sites = sorted(set(meta.get("sites", {}).values()))
    print(f"wrote {root}: {meta.get('numTraining', 0)} labelled case(s)" + (f", {n_test} unlabelled" if n_test else ""))
    print(f"  channels: {', '.join(meta['channel_names'].values())}")
    print(f"  labels:   {', '.join(f'{k}={v}' for k, v in meta['labels'].items())}")
    if sites:
        print(f"  sites:    {', '.join(sites)}")

"""``trm reproduce``: the reproduction study of the TRM and SEQ papers' tables.

Examples::

    trm reproduce -o study/ --profile quick                      # every table, phantom data, seed 0
    trm reproduce -o study/ --profile quick --seeds 0,1,2 --tables I
    trm reproduce -o study/ --profile full --device cuda --data iseg/ --tumour-data fets/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trmcore.cli.common import add_device, add_output, add_quiet, command
from trmcore.study.grid import DEFAULT_SEEDED_TABLES, DEFAULT_SEEDS, TABLES
from trmcore.study.profiles import DEFAULT_PROFILE, PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "reproduce", help="regenerate the papers' tables (I-III, Fig. 2, sequential transfer) on phantom or real data",
        description="Run the reproduction study into -o DIR: Table I (binary tissue tasks), Table II (tumour "
                    "tasks), Table III (few-shot), the sequential-transfer comparison and Fig. 2 risk maps; "
                    "writes DIR/results.md, DIR/tables/*.csv and DIR/figures/*.png. Every job is cached in "
                    "DIR/cache, so the same command resumes an interrupted study.",
        example_lines=["trm reproduce -o study/ --profile quick",
                       "trm reproduce -o study/ --profile quick --seeds 0,1,2 --tables I",
                       "trm reproduce -o study/ --profile full --device cuda --data iseg/ --tumour-data fets/"])
    add_output(parser, required=True, help="study folder")
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=tuple(PROFILES),
                        help="quick (2 CPU cores), quick500 (quick with 500 fine-tuning iterations), full (the paper, "
                             "for a GPU) or tiny (tests); default %(default)s")
    parser.add_argument("--data", type=Path, default=None,
                        help="real tissue dataset in the standard layout (channels T1, T2; labels CSF, GM, WM) "
                             "instead of the phantom")
    parser.add_argument("--tumour-data", type=Path, default=None,
                        help="real tumour dataset for Table II (labels NCR, ED, ET; sites as the profile's tasks)")
    add_device(parser)
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)),
                        help="comma-separated seeds; the --seeded-tables run all, the rest the first (default %(default)s)")
    parser.add_argument("--seeded-tables", default=",".join(DEFAULT_SEEDED_TABLES),
                        help="tables that run every seed (default %(default)s; e.g. I,III)")
    parser.add_argument("--tables", default=",".join(TABLES), help=f"subset of {','.join(TABLES)} (default all)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel training processes (default: 1 on a GPU, else cores / threads, at most 4)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: the profile's)")
    add_quiet(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from trmcore.study.grid import parse_tables
    from trmcore.study.profiles import get_profile
    from trmcore.study.study import parse_seeds, reproduce

    # Check the cheap arguments before anything is generated or trained.
    profile = get_profile(args.profile)
    tables = parse_tables(args.tables)
    seeds = parse_seeds(args.seeds)
    seeded_tables = parse_tables(args.seeded_tables)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    outcome = reproduce(args.output, profile, seeds=seeds, tables=tables, data=args.data,
                        tumour_data=args.tumour_data, device=args.device, workers=args.workers,
                        threads=args.threads, progress=not args.quiet, seeded_tables=seeded_tables)
    summary = outcome.summary
    print(f"{len(outcome.grid.jobs)} jobs: {len(summary.executed)} run, {len(summary.cached)} cached, "
          f"{len(summary.failed)} failed, {len(summary.skipped)} skipped ({summary.wall_s:.0f} s)")
    print(f"results: {Path(args.output) / 'results.md'}")
    return 1 if summary.failed else 0

"""Arguments that several ``trm`` commands share, so they read the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_task_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The dataset folder and the task in it: ``DATA --channel C --labels L [--site S]``."""
    parser.add_argument("data", type=Path,
                        help="dataset folder in the standard layout (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--channel", required=required, help="input channel(s), e.g. T1 or T1,T2")
    parser.add_argument("--labels", required=required, help="foreground label(s), e.g. CSF or NCR,ED,ET")
    parser.add_argument("--site", default=None, help="use only the cases of this site / partition")

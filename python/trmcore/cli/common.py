"""Arguments that several ``trm`` commands share, so they read the same everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence


def add_task_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The dataset folder and the task in it: ``DATA --channel C --labels L [--site S]``."""
    parser.add_argument("data", type=Path,
                        help="dataset folder in the standard layout (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--channel", required=required, help="input channel(s), e.g. T1 or T1,T2")
    parser.add_argument("--labels", required=required, help="foreground label(s), e.g. CSF or NCR,ED,ET")
    parser.add_argument("--site", default=None, help="use only the cases of this site / partition")


def add_time_limit(parser: argparse.ArgumentParser) -> None:
    """``--time-limit SECONDS``: how long an ONNX model may run on one volume before it is stopped."""
    from trmcore.limits import DEFAULT_TIME_LIMIT, TIME_ENV, parse_seconds

    def seconds(text: str) -> float:
        try:
            return parse_seconds(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parser.add_argument("--time-limit", type=seconds, default=None, metavar="SECONDS",
                        help="stop an ONNX model that runs longer than this on one volume (default: environment "
                             f"variable {TIME_ENV}, else {DEFAULT_TIME_LIMIT:g})")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``: no progress bars."""
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def add_output(parser: argparse.ArgumentParser, help: str, required: bool = False, **kwargs: Any) -> None:
    """``-o/--output`` as a Path."""
    parser.add_argument("-o", "--output", type=Path, required=required, help=help, **kwargs)


def add_sites_csv(parser: argparse.ArgumentParser) -> None:
    """``--sites-csv``: a CSV case,site overriding dataset.json 'sites'."""
    parser.add_argument("--sites-csv", type=Path, default=None,
                        help="CSV assigning cases to sites (columns case,site; overrides dataset.json 'sites')")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description (blank-line separated); prints the examples epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES_HEADER):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return "\n\n".join(super(HelpFormatter, self)._fill_text(part, width, indent) for part in text.split("\n\n"))


EXAMPLES_HEADER = "example"


def examples(*lines: str) -> str:
    """An ``epilog`` listing example command lines (printed unwrapped by :class:`HelpFormatter`)."""
    return EXAMPLES_HEADER + ("s" if len(lines) > 1 else "") + ":\n" + "\n".join(f"  {line}" for line in lines)


def command(subparsers: argparse._SubParsersAction, name: str, help: str, description: str,
            example_lines: Sequence[str], **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand with a one-line help, a description and examples in its epilog.

    Options must be spelled in full (``allow_abbrev=False``): a prefix such as
    ``--out`` is refused rather than silently read as ``--output``, so each
    option has exactly one spelling.
    """
    return subparsers.add_parser(name, help=help, description=description, epilog=examples(*example_lines),
                                 formatter_class=HelpFormatter, allow_abbrev=False, **kwargs)

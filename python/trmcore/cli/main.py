"""Entry point of the ``trm`` command.

Each area of trmcore keeps its subcommands in its own module under
``trmcore.cli`` with a ``register(subparsers)`` function; this file only lists
those modules. A subcommand stores its handler as ``func`` on the parser
(``parser.set_defaults(func=...)``); the handler takes the parsed namespace and
returns an exit code. Handlers import heavy dependencies (torch) inside
themselves so that ``trm predict`` stays torch-free.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Optional, Sequence

from trmcore import __version__

# Modules with a register(subparsers) function, in the order of `trm --help`.
COMMAND_MODULES = [
    "trmcore.cli.data",
    "trmcore.cli.train",
    "trmcore.cli.deploy",
    "trmcore.cli.selection",
    "trmcore.cli.study",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trm",
        description="trmcore: transfer risk maps, risk-aware fine-tuning and deployment "
        "for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"trmcore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    # Warnings are meant for users of the command line: one line, no source location.
    return f"warning: {message}\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input is the user's to fix: say what is wrong, no traceback. trmcore reports bad input as
        # ValueError (or its subclasses) and missing / existing files; a TypeError is a programming error
        # and keeps its traceback.
        print(f"trm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

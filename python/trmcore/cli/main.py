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
from typing import Optional, Sequence

from trmcore import __version__
from trmcore.limits import DEFAULT_FRACTION, MEMORY_ENV, set_memory_limit
from trmcore.extras import MissingExtraError, extra_for_module, install_hint, onnxruntime_conflict, require_command

# Modules with a register(subparsers) function, in the order of `trm --help`.
COMMAND_MODULES = [
    "trmcore.cli.data",
    "trmcore.cli.train",
    "trmcore.cli.deploy",
    "trmcore.cli.selection",
    "trmcore.cli.study",
    "trmcore.cli.doctor",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trm", allow_abbrev=False,
        description="trmcore: transfer risk maps, risk-aware fine-tuning and deployment "
        "for medical image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"trmcore {__version__}")
    parser.add_argument("--memory-limit", default=None, metavar="SIZE",
                        help="memory a command may plan to use, e.g. 8G or 512M: larger inputs are refused before "
                             f"they are read (default: environment variable {MEMORY_ENV}, else "
                             f"{DEFAULT_FRACTION * 100:.0f}%% of this machine's memory)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    conflict = onnxruntime_conflict()
    if conflict and args.command != "doctor":  # doctor reports it itself
        print(f"trm: warning: {conflict}", file=sys.stderr)
    try:
        set_memory_limit(args.memory_limit)  # None: the environment variable or the machine's default
        require_command(args.command, args)  # optional dependencies, before any work is done
        return int(args.func(args) or 0)
    except MissingExtraError as err:
        print(f"trm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = extra_for_module(err.name)
        if extra is None:
            raise
        print(f"trm {args.command}: error: needs {err.name}, not installed: {install_hint(extra)}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input is the user's to fix: say what is wrong, no traceback. trmcore reports bad input as
        # ValueError (or its subclasses) and missing / existing files; a TypeError is a programming error
        # and keeps its traceback.
        print(f"trm {args.command}: error: {_os_error_text(err) if isinstance(err, OSError) else err}",
              file=sys.stderr)
        return 2
    except OSError as err:
        # A read-only or full disk, a permission problem: one line naming the path, no traceback.
        print(f"trm {args.command}: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: the atomic writer and the staged folders have removed their temporary files on the way
        # out (trmcore.fileio); one line and the shell's code for SIGINT (128 + 2), no traceback.
        print(f"trm {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_memory_limit(None)  # the option is this command's, not the process's (main() is also called in-process)


def _os_error_text(err: OSError) -> str:
    """``path: cause`` for an error raised by the operating system, the message itself for trmcore's own."""
    if err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())

"""Arguments that several ``trm`` commands share, so they read the same everywhere."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Collection, List, Optional, Sequence


def add_task_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The dataset folder and the task in it: ``DATA --channel C --labels L [--site S]``."""
    parser.add_argument("data", type=Path,
                        help="dataset folder in the standard layout (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--channel", required=required, help="input channel(s), e.g. T1 or T1,T2")
    parser.add_argument("--labels", required=required, help="foreground label(s), e.g. CSF or NCR,ED,ET")
    parser.add_argument("--site", default=None, help="use only the cases of this site / partition")


def add_settings_options(parser: Any, settings: type, prefix: str = "", only: Optional[Collection[str]] = None,
                         skip: Collection[str] = ()) -> List[argparse.Action]:
    """One option per field of the settings dataclass ``settings`` (a method's, see training.method_settings).

    The option is the field's metadata ``flag`` (default ``--`` + the name with dashes), its ``dest``
    the field name, its default the field's; ``bool`` fields are flags (``store_true``, default False),
    ``int``/``float``/``str`` fields take a value of that type; ``choices`` and ``metavar`` come from
    the metadata, the help text is ``prefix`` + metadata ``help`` + the default. ``only``: just these
    fields; ``skip``: leave these out (already added for another method). ``parser`` may be an
    argument group.
    """
    hints = typing.get_type_hints(settings)
    actions = []
    for f in dataclasses.fields(settings):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        meta, kind = f.metadata, hints[f.name]
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        help = prefix + meta["help"]
        if kind is bool:
            if f.default is not False:
                raise ValueError(f"{settings.__name__}.{f.name}: a bool setting must default to False (a flag)")
            actions.append(parser.add_argument(flag, dest=f.name, action="store_true", help=help))
            continue
        if kind not in (int, float, str):
            raise ValueError(f"{settings.__name__}.{f.name}: settings options take int, float, str or bool, "
                             f"got {kind!r}")
        extra = {k: meta[k] for k in ("choices", "metavar") if k in meta}
        default_text = "%(default)g" if kind is float else "%(default)s"
        actions.append(parser.add_argument(flag, dest=f.name, type=kind, default=f.default,
                                           help=f"{help} (default {default_text})", **extra))
    return actions


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

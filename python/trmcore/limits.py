"""Resource bounds: the memory budget and the per-volume time limit every command works under.

A file declares sizes (a NIfTI header its shape and data type, run.json a
U-Net's depth and width, a model its voxel spacing) long before anything is
allocated. Each reader checks what a file declares against the memory budget
*before* allocating, and refuses with one line naming the file and the figure
(:func:`check_allocation`), so a 4 MB ``.nii.gz`` that declares 1024^3 voxels
or a run.json with ``depth: 64`` stops at once instead of eating the machine.

The budget (bytes):

- ``--memory-limit`` (a global ``trm`` option) or the environment variable
  ``TRM_MEMORY_LIMIT``: a size such as ``8G``, ``1500M``, ``0.5T`` or a byte count;
- otherwise :data:`DEFAULT_FRACTION` of the physical memory this process may
  use: the smallest of the machine's memory (``/proc/meminfo`` ``MemTotal`` or
  ``sysconf``), a cgroup limit (containers) and the address-space limit
  (``ulimit -v``).

The time limit bounds the network's work on one volume (seconds): ``--time-limit``
on the commands that run a model, or ``TRM_TIME_LIMIT``; default
:data:`DEFAULT_TIME_LIMIT`.

NumPy-free and torch-free: the inference-only install and the CLI parser use it.

Example:
    >>> parse_size("8G"), parse_size("1.5M"), parse_size("4096")
    (8589934592, 1572864, 4096)
    >>> format_size(3 * 2**30)
    '3.0 GiB'
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Optional, Union

#: Environment variable that sets the memory budget (same syntax as ``--memory-limit``).
MEMORY_ENV = "TRM_MEMORY_LIMIT"
#: Environment variable that sets the per-volume time limit in seconds (as ``--time-limit``).
TIME_ENV = "TRM_TIME_LIMIT"
#: Share of the usable physical memory a command may plan to use by default: the rest is
#: for the operating system, onnxruntime's and torch's own overheads and other processes.
DEFAULT_FRACTION = 0.75
#: Used when the machine's memory cannot be read at all.
FALLBACK_BUDGET = 4 * 2**30
#: Seconds the network may spend on one volume (a real scan takes seconds to a minute on a CPU).
DEFAULT_TIME_LIMIT = 600.0

#: The deepest U-Net (2**12 = 4096: a 2D slice is at most a few thousand pixels wide) and so the
#: largest size divisor a run.json or a model's metadata may declare.
MAX_DEPTH = 12
MAX_DIVISOR = 2 ** MAX_DEPTH

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

_memory_override: Optional[int] = None
_time_override: Optional[float] = None


class ResourceLimitError(ValueError):
    """What a file declares needs more memory (or time) than this command may use."""


def parse_size(text: Union[str, int]) -> int:
    """Bytes of a size such as ``"8G"``, ``"512M"``, ``"1.5GiB"`` or ``"4096"`` (binary units).

    ValueError for anything else (negative, zero, NaN, unknown unit).
    """
    if isinstance(text, bool):
        raise ValueError(f"memory limit must be a size such as 8G or 512M, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise ValueError(f"memory limit must be a size such as 8G, 512M or a number of bytes, got {text!r}")
        value = int(float(match["number"]) * _UNITS[match["unit"].upper()])
    if value <= 0:
        raise ValueError(f"memory limit must be positive, got {text!r}")
    return value


def format_size(nbytes: float) -> str:
    """``3221225472`` -> ``'3.0 GiB'`` (binary units, one decimal)."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def physical_memory() -> Optional[int]:
    """Bytes of memory this process may use: min of the machine's, a cgroup's and ``ulimit -v``; None if unknown."""
    candidates = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    candidates.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, OSError, ValueError):
            pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as handle:
                text = handle.read().strip()
            if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
                candidates.append(int(text))
        except OSError:
            pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            candidates.append(int(soft))
    except (ImportError, OSError, ValueError):
        pass
    positive = [c for c in candidates if c > 0]
    return min(positive) if positive else None


def default_memory_limit() -> int:
    """The budget without ``--memory-limit``: :data:`DEFAULT_FRACTION` of :func:`physical_memory`."""
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else FALLBACK_BUDGET


def set_memory_limit(limit: Union[str, int, None]) -> None:
    """Set the budget for this process (``--memory-limit``); None returns to the environment / default."""
    global _memory_override
    _memory_override = None if limit is None else parse_size(limit)


def memory_limit() -> int:
    """The memory budget in bytes: ``--memory-limit``, else ``TRM_MEMORY_LIMIT``, else the machine's default."""
    if _memory_override is not None:
        return _memory_override
    text = os.environ.get(MEMORY_ENV, "").strip()
    if text:
        try:
            return parse_size(text)
        except ValueError as err:
            raise ValueError(f"environment variable {MEMORY_ENV}: {err}") from None
    return default_memory_limit()


def parse_seconds(text: Union[str, float, int]) -> float:
    """A positive finite number of seconds; ValueError otherwise."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"time limit must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"time limit must be a positive, finite number of seconds, got {text!r}")
    return value


def set_time_limit(seconds: Union[str, float, None]) -> None:
    """Set the per-volume time limit for this process (``--time-limit``); None: environment / default."""
    global _time_override
    _time_override = None if seconds is None else parse_seconds(seconds)


def time_limit() -> float:
    """Seconds the network may spend on one volume: ``--time-limit``, ``TRM_TIME_LIMIT``, or the default."""
    if _time_override is not None:
        return _time_override
    text = os.environ.get(TIME_ENV, "").strip()
    if text:
        try:
            return parse_seconds(text)
        except ValueError as err:
            raise ValueError(f"environment variable {TIME_ENV}: {err}") from None
    return DEFAULT_TIME_LIMIT


def shape_text(shape: Iterable[int]) -> str:
    """``(1024, 1024, 1024)`` -> ``'1024x1024x1024'``."""
    return "x".join(str(int(s)) for s in shape)


def check_allocation(nbytes: float, what: str, path: object = None, limit: Optional[int] = None) -> None:
    """ResourceLimitError (a ValueError) when ``nbytes`` exceed the memory budget.

    Args:
        nbytes: bytes the planned work needs (Python ints: no overflow however large).
        what: what needs them, e.g. ``"1024x1024x1024 voxels as float32 working copies (x6)"``.
        path: the file that declares the size (named first in the message), or None.
        limit: the budget (default :func:`memory_limit`).

    >>> check_allocation(2**40, "1024^4 voxels", "scan.nii.gz", limit=2**30)
    Traceback (most recent call last):
    ...
    trmcore.limits.ResourceLimitError: scan.nii.gz: 1024^4 voxels need 1.0 TiB, over the 1.0 GiB memory limit (raise it with --memory-limit or TRM_MEMORY_LIMIT)
    """
    budget = memory_limit() if limit is None else int(limit)
    if nbytes > budget:
        where = f"{path}: " if path is not None else ""
        raise ResourceLimitError(f"{where}{what} need {format_size(nbytes)}, over the {format_size(budget)} memory "
                                 f"limit (raise it with --memory-limit or {MEMORY_ENV})")


def check_divisor(divisor, what: str = "size divisor") -> int:
    """``divisor`` as an int in [1, :data:`MAX_DIVISOR`]; ValueError naming ``what`` otherwise.

    Slices are zero-padded to a multiple of it: a divisor of 100000 would pad every slice to 10^10 pixels.
    """
    if isinstance(divisor, bool) or not isinstance(divisor, (int, float)) or int(divisor) != divisor:
        raise ValueError(f"{what} must be a positive integer, got {divisor!r}")
    if not 1 <= divisor <= MAX_DIVISOR:
        raise ValueError(f"{what} must be between 1 and {MAX_DIVISOR} (2**{MAX_DEPTH}, the deepest U-Net), "
                         f"got {divisor!r}")
    return int(divisor)


def product(values: Iterable[int]) -> int:
    """Exact product of integers (Python ints: a declared 2^60-voxel volume does not overflow)."""
    total = 1
    for value in values:
        total *= int(value)
    return total


__all__ = ["DEFAULT_FRACTION", "DEFAULT_TIME_LIMIT", "MAX_DEPTH", "MAX_DIVISOR", "MEMORY_ENV", "TIME_ENV",
           "ResourceLimitError", "check_allocation", "check_divisor", "default_memory_limit", "format_size", "memory_limit", "parse_seconds", "parse_size",
           "physical_memory", "product", "set_memory_limit", "set_time_limit", "shape_text", "time_limit"]

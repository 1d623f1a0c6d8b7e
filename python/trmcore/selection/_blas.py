"""Keep NumPy's BLAS single-threaded while the selection code runs its own thread pool.

The affinity computation parallelises over volumes and pairs with Python
threads (NumPy releases the GIL). A multi-threaded BLAS underneath each of
them oversubscribes the cores; on some machines OpenBLAS with 2 threads was
measured 20x slower than with 1 on a 16384 x 128 covariance. When NumPy's
bundled OpenBLAS exposes its thread setter, :func:`single_threaded_blas`
sets it to 1 for the duration and restores it; otherwise it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

_LOCK = threading.Lock()
_DEPTH = 0
_SAVED: Optional[int] = None


def _openblas() -> Optional[Tuple[object, object]]:
    import numpy

    base = os.path.dirname(numpy.__file__)
    for path in glob.glob(os.path.join(base, os.pardir, "numpy.libs", "*openblas*")) + \
            glob.glob(os.path.join(base, ".libs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if getter is not None and setter is not None:
                    return getter, setter
    return None


_FUNCS = None
_LOOKED_UP = False


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Within the block, BLAS calls use one thread (re-entrant, thread-safe)."""
    global _DEPTH, _SAVED, _FUNCS, _LOOKED_UP
    with _LOCK:
        if not _LOOKED_UP:
            _FUNCS, _LOOKED_UP = _openblas(), True
        if _FUNCS is not None and _DEPTH == 0:
            getter, setter = _FUNCS
            _SAVED = int(getter())
            setter(1)
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _FUNCS is not None and _DEPTH == 0 and _SAVED is not None:
                _FUNCS[1](_SAVED)


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)

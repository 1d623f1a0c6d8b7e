"""Access to the compiled extension ``trmcore._C`` and the launch conventions.

The extension takes raw addresses, sizes, a device flag and a CUDA stream; both
the NumPy and the torch backends reach it through :func:`launch` so that the
argument names live in one place (they mirror ``trmcore/include/trmcore/ops.h``).
"""

from __future__ import annotations

import functools
from types import ModuleType

# trmcore::DType codes, keyed by dtype name (numpy and torch spellings).
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


@functools.lru_cache(maxsize=None)
def native() -> ModuleType:
    """The compiled extension; a clear ImportError if the package was not built."""
    try:
        from trmcore import _C
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "trmcore's compiled extension (trmcore._C) is missing or failed to load: "
            f"{err}. Install trmcore with pip (it builds the C++ core), or in a source "
            "checkout run `bash scripts/build_inplace.sh`."
        ) from err
    return _C


def built_with_cuda() -> bool:
    """Whether the extension contains the CUDA kernels."""
    return bool(native().built_with_cuda())


def launch(kernel: str, **params: object) -> None:
    """Call launcher ``kernel`` (e.g. ``"leep_joint"``) with the params-struct fields."""
    getattr(native(), kernel)(**params)

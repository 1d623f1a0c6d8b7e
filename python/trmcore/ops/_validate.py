"""Input checks shared by the NumPy and torch backends.

They look only at shapes and sizes so they cost nothing and stay traceable by
``torch.compile``; value checks (labels in range, finite logits) are counted by
the kernels themselves in a status array and raised by :func:`raise_for_status`
(labels in range, finite logits; for the loss also finite, non-negative weights).
"""

from __future__ import annotations

import numbers
import operator
from typing import Optional, Sequence, Tuple

# Layout of the kernels' status counters (trmcore/include/trmcore/ops.h).
STATUS_VALID, STATUS_BAD_LABELS, STATUS_NONFINITE = 0, 1, 2
STATUS_NONFINITE_WEIGHTS, STATUS_NEGATIVE_WEIGHTS = 3, 4
STATUS_SIZE = 5
SCOPES = ("image", "batch")
# SPEC 3: the risk map lies in [1, base]; the default of every risk_base / --risk-base.
RISK_BASE = 10.0
# SPEC 3: T is rescaled per image by default; the default of every risk scope / --risk-scope.
RISK_SCOPE = "image"
DENOMINATORS = ("batch", "image", "valid")


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


def _as_int(name: str, value: object) -> int:
    """``value`` as a Python int: ints and NumPy integer scalars (anything with ``__index__``), not bools."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def check_num_classes(num_classes: object) -> int:
    num_classes = _as_int("num_classes", num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if num_classes > INT64_MAX:
        raise ValueError(f"num_classes must fit in int64, got {num_classes}")
    return num_classes


def check_ignore_index(ignore_index: object) -> int:
    ignore_index = _as_int("ignore_index", ignore_index)
    if not INT64_MIN <= ignore_index <= INT64_MAX:
        raise ValueError(f"ignore_index must fit in int64 [-2**63, 2**63), got {ignore_index}")
    return ignore_index


# Spatial dims the ops accept: [N, K, W] rows, [N, K, H, W] slices, [N, K, D, H, W] volumes. The kernels
# see only N, K and the pixel count S (a C-contiguous [N, K, *spatial] is [N, K, S] in memory), so
# every rank runs the same kernels on the same buffer, without a copy.
MIN_SPATIAL_DIMS, MAX_SPATIAL_DIMS = 1, 3


def _pixels(spatial: Sequence[int]) -> int:
    count = 1
    for size in spatial:
        count *= int(size)
    return count


def check_logits_labels(logits_shape: Sequence[int], labels_shape: Sequence[int],
                        logits_name: str = "logits") -> Tuple[int, int, int]:
    """Check ``[N, K, *spatial]`` (1-3 spatial dims) against ``[N, *spatial]``; return ``(N, K, S)``.

    S is the number of pixels (voxels) of one image, the product of the spatial sizes.
    """
    rank = len(logits_shape)
    if not 2 + MIN_SPATIAL_DIMS <= rank <= 2 + MAX_SPATIAL_DIMS:
        raise ValueError(f"{logits_name} must have shape [N, K, *spatial] with {MIN_SPATIAL_DIMS} to "
                         f"{MAX_SPATIAL_DIMS} spatial dims (e.g. [N, K, H, W] or [N, K, D, H, W]), got "
                         f"{rank} dims {tuple(logits_shape)}")
    if len(labels_shape) != rank - 1:
        raise ValueError(f"labels must have shape [N, *spatial] ({rank - 1} dims for {logits_name} of shape "
                         f"{tuple(logits_shape)}), got {len(labels_shape)} dims {tuple(labels_shape)}")
    n, k, spatial = logits_shape[0], logits_shape[1], tuple(logits_shape[2:])
    if tuple(labels_shape) != (n, *spatial):
        raise ValueError(f"labels shape {tuple(labels_shape)} does not match {logits_name} shape "
                         f"{tuple(logits_shape)}: expected {(n, *spatial)}")
    pixels = _pixels(spatial)
    if n == 0 or pixels == 0:
        raise ValueError(f"empty batch: {logits_name} has shape {tuple(logits_shape)}")
    if k == 0:
        raise ValueError(f"{logits_name} has no classes (shape {tuple(logits_shape)})")
    return n, k, pixels


def check_map_labels(map_shape: Sequence[int], labels_shape: Sequence[int], map_name: str) -> Tuple[int, int]:
    """Check a ``[N, *spatial]`` map (1-3 spatial dims) against labels of the same shape; return ``(N, S)``."""
    if not 1 + MIN_SPATIAL_DIMS <= len(map_shape) <= 1 + MAX_SPATIAL_DIMS:
        raise ValueError(f"{map_name} must have shape [N, *spatial] with {MIN_SPATIAL_DIMS} to {MAX_SPATIAL_DIMS} "
                         f"spatial dims (e.g. [N, H, W]), got {tuple(map_shape)}")
    if tuple(labels_shape) != tuple(map_shape):
        raise ValueError(f"labels shape {tuple(labels_shape)} does not match {map_name} shape {tuple(map_shape)}")
    n, pixels = map_shape[0], _pixels(map_shape[1:])
    if n == 0 or pixels == 0:
        raise ValueError(f"empty batch: {map_name} has shape {tuple(map_shape)}")
    return n, pixels


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value  # type: ignore[return-value]


def check_base(base: object) -> float:
    # numbers.Real: Python and NumPy ints and floats (not bool, str or complex).
    if isinstance(base, bool) or type(base).__name__ == "bool_" or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a number, got {type(base).__name__}")
    value = float(base)
    if not (value >= 1.0) or value > FLOAT32_MAX:
        raise ValueError(f"base must be a finite number >= 1 and <= {FLOAT32_MAX:.4g} (risk maps are float32), got {base}")
    return value


def check_joint(sums_shape: Sequence[int], count: object, num_source_classes: Optional[int] = None) -> int:
    """Check a LeepJoint's ``sums`` shape ``[C, Z]`` and ``count``; returns ``count`` as int."""
    if len(sums_shape) != 2:
        raise ValueError(f"joint.sums must have shape [C, Z] (2 dims), got {len(sums_shape)} dims {tuple(sums_shape)}")
    if sums_shape[0] < 1 or sums_shape[1] < 1:
        raise ValueError(f"joint.sums must have at least one class each way, got shape {tuple(sums_shape)}")
    count = _as_int("joint.count", count)
    if count < 0:
        raise ValueError(f"joint.count must be >= 0, got {count}")
    if num_source_classes is not None and sums_shape[1] != num_source_classes:
        raise ValueError(f"logits have {num_source_classes} source classes but the joint was built with "
                         f"{sums_shape[1]}")
    return count


def check_min_foreground(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"min_foreground must be a number, got {type(value).__name__}")
    if not (value >= 1.0) or value == float("inf"):
        raise ValueError(f"min_foreground must be a finite number >= 1, got {value}")
    return float(value)


def raise_for_status(status: Sequence[int], num_classes: int, ignore_index: int,
                     require_valid: bool = True) -> None:
    """Turn the kernels' status counters into a clear error."""
    valid, bad_labels, nonfinite, nonfinite_weights, negative_weights = (int(v) for v in status[:STATUS_SIZE])
    if nonfinite_weights:
        raise ValueError(f"weights contain non-finite values (NaN or inf) at {nonfinite_weights} pixels")
    if negative_weights:
        raise ValueError(f"weights must be >= 0; {negative_weights} pixels have a negative weight")
    if nonfinite:
        raise ValueError(f"logits contain {nonfinite} non-finite values (NaN or inf)")
    if bad_labels:
        raise ValueError(f"labels: {bad_labels} pixels have a label outside [0, {num_classes}) "
                         f"that is not ignore_index ({ignore_index})")
    if require_valid and valid == 0:
        raise ValueError(f"labels: every pixel is ignore_index ({ignore_index}); nothing to compute")

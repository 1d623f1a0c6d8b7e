"""NumPy backend of :mod:`trmcore.ops`: calls the CPU kernels, never imports torch."""

from __future__ import annotations

import numpy as np

from . import _validate as V
from ._native import DTYPE_CODES, launch
from ._reduce import reduce_loss
from .joint import LeepJoint


def _logits_array(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    if logits.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {logits.dtype}")
    if logits.dtype not in (np.float32, np.float16):
        logits = logits.astype(np.float32)  # float64 in, float32 kernels: ample for softmax
    return np.ascontiguousarray(logits)


def _labels_array(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.dtype.kind == "u" and labels.dtype.itemsize == 8 and labels.size and labels.max() > V.INT64_MAX:
        # int64 would wrap such a value to a negative one, possibly ignore_index: refuse instead.
        raise ValueError(f"labels: values up to {int(labels.max())} do not fit in int64")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _map_array(values: np.ndarray, name: str, check_finite: bool = True) -> np.ndarray:
    if values.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {values.dtype}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    if check_finite and not np.isfinite(values).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return values


def leep_joint(logits: np.ndarray, labels: np.ndarray, num_classes: int, ignore_index: int) -> LeepJoint:
    n, z, hw = V.check_logits_labels(logits.shape, labels.shape)
    logits, labels = _logits_array(logits), _labels_array(labels)
    sums = np.empty((num_classes, z), dtype=np.float64)
    status = np.zeros(V.STATUS_SIZE, dtype=np.int64)
    launch("leep_joint", logits=logits.ctypes.data, dtype=DTYPE_CODES[logits.dtype.name], labels=labels.ctypes.data,
           n=n, z=z, hw=hw, c=num_classes, ignore_index=ignore_index, joint=sums.ctypes.data,
           status=status.ctypes.data, num_threads=0, cuda=False, stream=0)
    V.raise_for_status(status, num_classes, ignore_index)
    return LeepJoint(sums, int(status[V.STATUS_VALID]), ignore_index)


def pixel_leep(logits: np.ndarray, labels: np.ndarray, conditional: np.ndarray, ignore_index: int) -> np.ndarray:
    n, z, hw = V.check_logits_labels(logits.shape, labels.shape)
    logits, labels = _logits_array(logits), _labels_array(labels)
    num_classes = conditional.shape[0]
    conditional = np.ascontiguousarray(conditional, dtype=np.float64)
    out = np.empty(labels.shape, dtype=np.float32)
    status = np.zeros(V.STATUS_SIZE, dtype=np.int64)
    launch("pixel_leep", logits=logits.ctypes.data, dtype=DTYPE_CODES[logits.dtype.name], labels=labels.ctypes.data,
           conditional=conditional.ctypes.data, n=n, z=z, hw=hw, c=num_classes, ignore_index=ignore_index,
           out=out.ctypes.data, status=status.ctypes.data, num_threads=0, cuda=False, stream=0)
    V.raise_for_status(status, num_classes, ignore_index)
    return out


def risk_map(leep_map: np.ndarray, labels: np.ndarray, base: float, per_image: bool, ignore_index: int) -> np.ndarray:
    n, hw = V.check_map_labels(leep_map.shape, labels.shape, "leep_map")
    leep_map, labels = _map_array(leep_map, "leep_map"), _labels_array(labels)
    if not (labels != ignore_index).any():
        raise ValueError(f"labels: every pixel is ignore_index ({ignore_index}); nothing to compute")
    risk = np.empty(labels.shape, dtype=np.float32)
    launch("risk_map", leep_map=leep_map.ctypes.data, labels=labels.ctypes.data, n=n, hw=hw,
           ignore_index=ignore_index, base=base, per_image=per_image, risk=risk.ctypes.data,
           num_threads=0, cuda=False, stream=0)
    return risk


def risk_weighted_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray, ignore_index: int,
                     normalize: str, min_foreground: float = 1.0) -> np.float64:
    n, c, hw = V.check_logits_labels(logits.shape, labels.shape)
    V.check_map_labels(weights.shape, labels.shape, "weights")
    logits, labels = _logits_array(logits), _labels_array(labels)
    weights = _map_array(weights, "weights", check_finite=False)  # the kernel checks the values
    per_image = np.empty((n, 3), dtype=np.float64)
    status = np.zeros(V.STATUS_SIZE, dtype=np.int64)
    launch("rwce_forward", logits=logits.ctypes.data, dtype=DTYPE_CODES[logits.dtype.name], labels=labels.ctypes.data,
           weights=weights.ctypes.data, n=n, c=c, hw=hw, ignore_index=ignore_index, per_image=per_image.ctypes.data,
           status=status.ctypes.data, num_threads=0, cuda=False, stream=0)
    V.raise_for_status(status, c, ignore_index)
    loss, _ = reduce_loss(per_image, normalize, np, min_foreground)
    return np.float64(loss)

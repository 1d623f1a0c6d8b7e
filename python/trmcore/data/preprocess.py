"""Intensity normalisation and in-plane padding shared by training and inference.

These functions are the whole preprocessing contract of a trmcore model
(``RunInfo.normalization == "zscore-nonzero"``): inference must call exactly
the same ones, so they live here, torch-free.

Example:
    >>> import numpy as np
    >>> vol = np.zeros((4, 5, 3), np.float32); vol[1:3, 1:4] = 7.0; vol[1, 1, 1] = 9.0
    >>> z = zscore_nonzero(vol)
    >>> float(z[0, 0, 0]), bool(abs(z[vol != 0].mean()) < 1e-6)
    (0.0, True)
    >>> padded, pad = pad_to_multiple(np.ones((2, 30, 17)), 16)
    >>> padded.shape, pad
    ((2, 32, 32), ((1, 1), (7, 8)))
    >>> unpad(padded, pad).shape
    (2, 30, 17)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

#: Padding of the last two axes: ((before_H, after_H), (before_W, after_W)).
Pad = Tuple[Tuple[int, int], Tuple[int, int]]

# Below this standard deviation a volume is treated as constant: dividing by it
# would blow noise up into huge values (or NaN for exactly 0).
_MIN_STD = 1e-8


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    """Z-score ``volume`` over its non-zero voxels; zero voxels stay exactly 0.

    Skull-stripped MRI has background exactly 0, so the statistics describe the
    brain only, and the background (and all-zero slices) stay recognisable.

    Args:
        volume: array of any shape (one channel of one case), any real dtype.
    Returns:
        float32 array of the same shape. An all-zero volume is returned as zeros;
        a constant non-zero volume becomes 0 everywhere (no division by zero).
    Raises:
        ValueError: if the volume holds NaN or infinite values.
    """
    vol = np.asarray(volume)
    if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
        raise TypeError(f"zscore_nonzero: expected a real numeric array, got dtype {vol.dtype}")
    vol = vol.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vol)):
        raise ValueError("zscore_nonzero: volume holds NaN or infinite values")
    out = np.zeros(vol.shape, np.float32)
    mask = vol != 0
    if not mask.any():
        return out
    values = vol[mask].astype(np.float64)
    mean = values.mean()
    std = values.std()
    scale = 1.0 / std if std > _MIN_STD * max(1.0, abs(mean)) else 0.0
    out[mask] = ((values - mean) * scale).astype(np.float32)
    return out


def padding_for(shape_hw: Tuple[int, int], divisor: int, target_hw: Tuple[int, int] | None = None) -> Pad:
    """Padding that brings an (H, W) plane to a multiple of ``divisor``.

    Args:
        shape_hw: current (H, W).
        divisor: the padded H and W are multiples of it (2**depth of the U-Net).
        target_hw: optional minimum (H, W) to reach first (to give planes of
            different sizes one common padded size).
    Returns:
        ((before_H, after_H), (before_W, after_W)); the plane is centred, the odd
        pixel goes after.
    """
    if not isinstance(divisor, (int, np.integer)) or isinstance(divisor, bool) or divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor!r}")
    pads = []
    for axis, size in enumerate(shape_hw):
        want = size if target_hw is None else max(size, int(target_hw[axis]))
        padded = -(-want // divisor) * divisor
        total = padded - size
        pads.append((total // 2, total - total // 2))
    return (pads[0], pads[1])


def pad_to_multiple(arr: np.ndarray, divisor: int, value: float = 0) -> Tuple[np.ndarray, Pad]:
    """Zero-pad the last two axes of ``arr`` [..., H, W] up to multiples of ``divisor``.

    Returns:
        (padded [..., H', W'] with the dtype of ``arr``, pad) where ``pad`` is
        ((before_H, after_H), (before_W, after_W)) for :func:`unpad`.
    """
    arr = np.asarray(arr)
    if arr.ndim < 2:
        raise ValueError(f"pad_to_multiple: need an array [..., H, W], got shape {arr.shape}")
    pad = padding_for(arr.shape[-2:], divisor)
    return apply_pad(arr, pad, value), pad


def apply_pad(arr: np.ndarray, pad: Pad, value: float = 0) -> np.ndarray:
    """Pad the last two axes of ``arr`` by ``pad`` (as returned by :func:`pad_to_multiple`)."""
    arr = np.asarray(arr)
    _check_pad(pad)
    if pad == ((0, 0), (0, 0)):
        return arr
    widths = [(0, 0)] * (arr.ndim - 2) + [tuple(pad[0]), tuple(pad[1])]
    return np.pad(arr, widths, mode="constant", constant_values=value)


def unpad(arr, pad: Pad):
    """Undo :func:`pad_to_multiple` on the last two axes of ``arr`` [..., H', W'].

    Works on anything that supports NumPy-style slicing (NumPy arrays, torch
    tensors) and returns a view of the same type.
    """
    _check_pad(pad)
    (h0, h1), (w0, w1) = pad
    shape = tuple(arr.shape)
    if len(shape) < 2 or h0 + h1 >= shape[-2] or w0 + w1 >= shape[-1]:
        raise ValueError(f"unpad: pad {pad} does not fit an array of shape {shape}")
    return arr[..., h0 : shape[-2] - h1, w0 : shape[-1] - w1]


def _check_pad(pad) -> None:
    try:
        ok = len(pad) == 2 and all(len(p) == 2 and all(int(v) == v and v >= 0 for v in p) for p in pad)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"pad must be ((before_H, after_H), (before_W, after_W)) of non-negative ints, got {pad!r}")

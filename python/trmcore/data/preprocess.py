"""Intensity normalisation and in-plane padding shared by training and inference.

These functions are the whole intensity and padding contract of a trmcore
model (``RunInfo.normalization``, e.g. ``"zscore-foreground"``): inference
must call exactly the same ones, so they live here, torch-free.
:func:`foreground_mask` is the one definition of "tissue" (normalisation
statistics, inference cropping).

Example:
    >>> import numpy as np
    >>> vol = np.zeros((4, 5, 3), np.float32); vol[1:3, 1:4] = 7.0; vol[1, 1, 1] = 9.0
    >>> z = zscore_foreground(vol)
    >>> float(z[0, 0, 0]), bool(abs(z[vol != 0].mean()) < 1e-6)
    (0.0, True)
    >>> int(foreground_mask(vol - 3.6).sum())        # constant non-zero background (BraTS style)
    18
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


#: Names of the intensity normalisations (``RunInfo.normalization``, model metadata).
#: ``zscore-foreground`` is the default since trmcore recorded geometry; ``zscore-nonzero``
#: is what older runs and models did and is kept for them.
NORMALIZATIONS = ("zscore-foreground", "zscore-nonzero")
DEFAULT_NORMALIZATION = "zscore-foreground"

# Voxels within this distance of the background value (relative to max(1, |value|))
# count as background: linear resampling of a constant background can move it by an ulp.
_BACKGROUND_RTOL = 1e-5


def background_value(volume: np.ndarray) -> float:
    """The constant background of a volume: 0 or its minimum, whichever fills more voxels.

    Skull-stripped scans have background 0; scans normalised before export
    (BraTS "subtrMeanDivStd": background about -3.6) or stored with an
    intensity offset (``scl_inter``) have a constant non-zero background, which
    is then the volume's minimum. Ties go to 0.
    """
    vol = _real_finite(volume, "background_value")
    if vol.size == 0:
        return 0.0
    low = float(vol.min())
    if low == 0.0:
        return 0.0
    zero = int(np.count_nonzero(_near(vol, 0.0)))
    at_min = int(np.count_nonzero(_near(vol, low)))
    return low if at_min > zero else 0.0


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    """bool array of ``volume``'s shape: True where the voxel is not the constant background.

    The rule (docs/data.md, "Intensities"): the background value ``b`` is 0 or
    the volume's minimum, whichever more voxels hold (0 on ties; a voxel holds
    ``b`` when within 1e-5 * max(1, |b|) of it); the foreground is every other
    voxel. Training and inference normalise with it, and inference crops to
    its bounding box, so both always agree.

    Args:
        volume: one channel of one case, any shape, any real dtype, finite.
    """
    vol = _real_finite(volume, "foreground_mask")
    return ~_near(vol, background_value(vol))


def normalization_mask(volume: np.ndarray, method: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    """bool array of ``volume``'s shape: the voxels :func:`normalize` computes its statistics over.

    Inference crops to them (:mod:`trmcore.data.crop`), so it never cuts off a
    voxel the normalisation counts as tissue.
    """
    if method == "zscore-foreground":
        return foreground_mask(volume)
    if method == "zscore-nonzero":
        return np.asarray(volume) != 0
    raise ValueError(f"unknown normalisation {method!r}; known: {', '.join(NORMALIZATIONS)}")


def normalize(volume: np.ndarray, method: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    """Normalise one channel with the named method (see :data:`NORMALIZATIONS`): float32, same shape."""
    if method == "zscore-foreground":
        return zscore_foreground(volume)
    if method == "zscore-nonzero":
        return zscore_nonzero(volume)
    raise ValueError(f"unknown normalisation {method!r}; known: {', '.join(NORMALIZATIONS)}")


def zscore_foreground(volume: np.ndarray) -> np.ndarray:
    """Z-score ``volume`` over its :func:`foreground_mask`; background voxels become exactly 0.

    Works for a zero background (as :func:`zscore_nonzero`) and for a constant
    non-zero one (pre-normalised data, ``scl_inter``): the statistics describe
    the tissue only and background slices stay all-zero ("empty").
    Returns float32 of the input's shape.
    """
    vol = _real_finite(volume, "zscore_foreground")
    return _zscore(vol, foreground_mask(vol))


def zscore_nonzero(volume: np.ndarray) -> np.ndarray:
    """Z-score ``volume`` over its non-zero voxels; zero voxels stay exactly 0.

    Skull-stripped MRI has background exactly 0, so the statistics describe the
    brain only, and the background (and all-zero slices) stay recognisable.
    The normalisation of runs and models from before :func:`zscore_foreground`.

    Args:
        volume: array of any shape (one channel of one case), any real dtype.
    Returns:
        float32 array of the same shape. An all-zero volume is returned as zeros;
        a constant non-zero volume becomes 0 everywhere (no division by zero).
    Raises:
        ValueError: if the volume holds NaN or infinite values.
    """
    vol = _real_finite(volume, "zscore_nonzero")
    return _zscore(vol, normalization_mask(vol, "zscore-nonzero"))


def _real_finite(volume: np.ndarray, who: str) -> np.ndarray:
    vol = np.asarray(volume)
    if not np.issubdtype(vol.dtype, np.number) or np.iscomplexobj(vol):
        raise TypeError(f"{who}: expected a real numeric array, got dtype {vol.dtype}")
    vol = vol.astype(np.float32, copy=False)
    if not np.all(np.isfinite(vol)):
        raise ValueError(f"{who}: volume holds NaN or infinite values")
    return vol


def _near(vol: np.ndarray, value: float) -> np.ndarray:
    return np.abs(vol - np.float32(value)) <= _BACKGROUND_RTOL * max(1.0, abs(value))


def _zscore(vol: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.zeros(vol.shape, np.float32)
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

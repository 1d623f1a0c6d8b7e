"""Which slices and which in-plane window of a volume a 2D network runs on (the ``crop`` and ``slice`` steps).

Most of a head scan is background: the brain fills about 70% of each in-plane
axis and 70-90% of the slices. Like nnU-Net's crop to the non-zero region,
inference runs the network only on the slices that hold foreground, and only
on one in-plane window around the foreground of all slices plus a margin;
every other voxel is background. The label volume stays on the input grid.

Foreground is :func:`trmcore.data.preprocess.normalization_mask` of each
channel for the model's normalisation (the voxels its statistics are computed
over: :func:`~trmcore.data.preprocess.foreground_mask` for
``zscore-foreground``), united over channels. The window is aligned to the grid of the uncropped path: the full
plane, centred-padded to a multiple of the size divisor, is cut at multiples
of the divisor, so every pooling step sees the same voxel groups as without
the crop. Only the network's context beyond the window differs (zero padding
instead of the background's activations), which the margin keeps away from
the foreground.

    >>> import numpy as np
    >>> mask = np.zeros((40, 50, 6), bool); mask[10:20, 12:30, 2:4] = True
    >>> plan = plan_crop(mask, axis=2, divisor=8, margin=2)
    >>> plan.slices.tolist(), plan.window, plan.pad
    ([2, 3], ((8, 24), (5, 37)), ((0, 0), (0, 0)))
    >>> full = plan_full((40, 50, 6), axis=2, divisor=8)
    >>> full.slices.tolist(), full.window, full.pad
    ([0, 1, 2, 3, 4, 5], ((0, 40), (0, 50)), ((0, 0), (3, 3)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .preprocess import DEFAULT_NORMALIZATION, Pad, normalization_mask, padding_for

#: In-plane voxels kept around the foreground on each side (``trm predict --crop-margin``).
#: The uncropped path gives the same labels on the phantom with 0; 8 leaves
#: the network some real context at the foreground's border.
DEFAULT_CROP_MARGIN = 8

Window = Tuple[Tuple[int, int], Tuple[int, int]]


@dataclass(frozen=True)
class CropPlan:
    """Where the network runs, in the coordinates of a volume ``[X, Y, Z]``.

    - ``slices``: int64 indices along the slice axis that are run, ascending.
    - ``window``: ``((h0, h1), (w0, w1))``, the in-plane rows and columns of
      each slice (the slice is the volume with the slice axis removed).
    - ``pad``: zero padding of the window to the network's input, as
      :func:`trmcore.data.preprocess.pad_to_multiple` gives it; the padded
      window is a multiple of the divisor.
    """

    slices: np.ndarray
    window: Window
    pad: Pad

    @property
    def empty(self) -> bool:
        return self.slices.size == 0

    def plane(self) -> Tuple[slice, slice]:
        """The in-plane window as two slices."""
        (h0, h1), (w0, w1) = self.window
        return slice(h0, h1), slice(w0, w1)


def plane_shape(shape: Sequence[int], axis: int) -> Tuple[int, int]:
    """(H, W) of a slice of a volume of ``shape`` [X, Y, Z] cut along ``axis``."""
    rest = [int(n) for i, n in enumerate(shape) if i != axis]
    return rest[0], rest[1]


def plan_full(shape: Sequence[int], axis: int, divisor: int) -> CropPlan:
    """Every slice, the whole plane: the uncropped path."""
    h, w = plane_shape(shape, axis)
    return CropPlan(np.arange(int(shape[axis]), dtype=np.int64), ((0, h), (0, w)), padding_for((h, w), divisor))


def plan_crop(mask: np.ndarray, axis: int, divisor: int, margin: int = DEFAULT_CROP_MARGIN) -> CropPlan:
    """The slices with foreground and the aligned in-plane window around it.

    Args:
        mask: bool ``[X, Y, Z]``, True on foreground (see :func:`volume_foreground`).
        axis: the slice axis.
        divisor: the network's size divisor.
        margin: voxels added on each in-plane side of the foreground's box
            before aligning (clipped to the plane).
    Returns:
        a :class:`CropPlan`; ``plan.empty`` when the mask has no foreground.
    """
    if mask.ndim != 3:
        raise ValueError(f"foreground mask must be 3D [X, Y, Z], got shape {mask.shape}")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"crop margin must be a non-negative integer, got {margin!r}")
    inplane = tuple(i for i in range(3) if i != axis)
    slices = np.flatnonzero(mask.any(axis=inplane)).astype(np.int64)
    h, w = plane_shape(mask.shape, axis)
    full_pad = padding_for((h, w), divisor)
    if slices.size == 0:
        return CropPlan(slices, ((0, 0), (0, 0)), ((0, 0), (0, 0)))
    projection = mask.any(axis=axis)  # [H, W]
    window, pad = [], []
    for dim, size in enumerate((h, w)):
        present = np.flatnonzero(projection.any(axis=1 - dim))
        lo, hi = max(0, int(present[0]) - margin), min(size, int(present[-1]) + 1 + margin)
        span, extent = _aligned(lo, hi, size, full_pad[dim][0], divisor)
        window.append(span)
        pad.append(extent)
    return CropPlan(slices, (window[0], window[1]), (pad[0], pad[1]))


def volume_foreground(channels: np.ndarray, normalization: str = DEFAULT_NORMALIZATION) -> np.ndarray:
    """bool ``[X, Y, Z]``: the voxels ``normalization`` counts as tissue in any channel of a raw ``[Cin, X, Y, Z]``."""
    mask = normalization_mask(channels[0], normalization)
    for channel in channels[1:]:
        mask |= normalization_mask(channel, normalization)
    return mask


def _aligned(lo: int, hi: int, size: int, before: int, divisor: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Image span [a, b) and its padding for the divisor-aligned cut of the padded plane around [lo, hi).

    In the uncropped path voxel i sits at i + ``before`` of the padded plane
    (length a multiple of ``divisor``); the cut [s, e) is the smallest run of
    whole divisor blocks of it that covers [lo, hi).
    """
    padded = -(-size // divisor) * divisor
    start = (lo + before) // divisor * divisor
    stop = min(padded, -(-(hi + before) // divisor) * divisor)
    a, b = max(0, start - before), min(size, stop - before)
    return (a, b), (a - (start - before), (stop - before) - b)


def crop_margin_or_none(margin: Optional[int]) -> Optional[int]:
    """Validate a crop margin (None: no cropping)."""
    if margin is None:
        return None
    if isinstance(margin, bool) or int(margin) != margin or margin < 0:
        raise ValueError(f"crop margin must be a non-negative integer or None, got {margin!r}")
    return int(margin)

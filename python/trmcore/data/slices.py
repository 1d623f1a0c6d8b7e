"""2D slices of 3D volumes: slicing, padding, few-shot subsets and the way back.

Example:
    >>> import numpy as np
    >>> from trmcore.data.volumes import Volume
    >>> vol = Volume("c1", None, np.ones((1, 30, 20, 5), np.float32),
    ...              np.zeros((30, 20, 5), np.int64), np.eye(4))
    >>> s = volumes_to_slices([vol], axis=2, divisor=16)
    >>> s.images.shape, s.labels.shape, s.pad
    ((5, 1, 32, 32), (5, 32, 32), ((1, 1), (6, 6)))
    >>> back = slices_to_volume(s.labels, s.pad, axis=2, shape=(30, 20, 5))
    >>> back.shape
    (30, 20, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .crop import CropPlan
from .pipeline import Slice
from .preprocess import Pad, unpad


@dataclass
class SliceSet:
    """Padded 2D slices of a list of volumes.

    Attributes:
        images: float32 [S, Cin, H, W] (H, W multiples of the divisor; padding 0).
        labels: int64 [S, H, W] task classes, padding pixels 0; None if the
            volumes are unlabelled.
        volume_index: int64 [S], index of the slice's volume in the input list.
        slice_index: int64 [S], position of the slice along ``axis`` in its volume.
        pad: the padding ((before_H, after_H), (before_W, after_W)) applied to
            every slice when all volumes share one in-plane shape; None when they
            differ (then use ``pads[volume_index]``).
        pads: the padding of each volume.
        shapes: the original [X, Y, Z] shape of each volume.
        case_ids: the case id of each volume.
        axis: the slicing axis of the volumes (0, 1 or 2).
    """

    images: np.ndarray
    labels: Optional[np.ndarray]
    volume_index: np.ndarray
    slice_index: np.ndarray
    pad: Optional[Pad]
    pads: List[Pad] = field(default_factory=list)
    shapes: List[Tuple[int, int, int]] = field(default_factory=list)
    case_ids: List[str] = field(default_factory=list)
    axis: int = 2

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices) -> "SliceSet":
        """The slices at ``indices`` (volume bookkeeping kept whole)."""
        indices = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            images=self.images[indices],
            labels=None if self.labels is None else self.labels[indices],
            volume_index=self.volume_index[indices],
            slice_index=self.slice_index[indices],
        )


def volumes_to_slices(volumes: Sequence, axis: int = 2, divisor: int = 16, skip_empty: bool = False) -> SliceSet:
    """Cut volumes into 2D slices along ``axis`` and pad them to multiples of ``divisor``.

    Args:
        volumes: :class:`~trmcore.data.volumes.Volume` objects (image [Cin, X, Y, Z]).
        axis: 0, 1 or 2 of [X, Y, Z] (2 = axial for RAS-like volumes).
        divisor: padded H and W are multiples of it (2**depth of the U-Net).
            Volumes with different in-plane shapes are padded to one common size.
        skip_empty: drop slices whose image is zero in every channel (no brain).
    Returns:
        A :class:`SliceSet`; slice h, w of volume slice k is ``volume[..., k]``
        moved to the front (for axis=2: H = X, W = Y).
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    volumes = list(volumes)
    if not volumes:
        raise ValueError("volumes_to_slices: no volumes given")
    channels = {v.image.shape[0] for v in volumes}
    if len(channels) != 1:
        raise ValueError(f"volumes_to_slices: volumes have different channel counts {sorted(channels)}")
    labelled = [v.label is not None for v in volumes]
    if any(labelled) and not all(labelled):
        missing = [v.case_id for v in volumes if v.label is None]
        raise ValueError(f"volumes_to_slices: cases {missing} have no label while others do")

    slicer = Slice(axis, divisor)  # the pipeline's slice step (trmcore.data.pipeline), as inference cuts
    planes = [_plane_shape(v.image.shape[1:], axis) for v in volumes]
    target = (max(p[0] for p in planes), max(p[1] for p in planes))
    pads = [slicer.padding(p, target) for p in planes]

    images, labels, vol_idx, sl_idx = [], [], [], []
    for index, (volume, pad, (h, w)) in enumerate(zip(volumes, pads, planes)):
        image = np.asarray(volume.image, np.float32)
        keep = np.arange(image.shape[1 + axis])
        if skip_empty:
            keep = keep[np.any(np.moveaxis(image, axis + 1, 0).reshape(keep.size, -1) != 0, axis=1)]
        if keep.size == 0:
            continue
        plan = CropPlan(keep.astype(np.int64), ((0, h), (0, w)), pad)  # every kept slice, whole, padded to the target
        images.append(slicer.cut(image, plan))
        if volume.label is not None:
            labels.append(slicer.cut(np.asarray(volume.label, np.int64), plan))
        vol_idx.append(np.full(keep.size, index, np.int64))
        sl_idx.append(keep.astype(np.int64))
    if not images:
        raise ValueError(
            f"volumes_to_slices: every slice of cases {[v.case_id for v in volumes][:5]} is empty (all-zero image)"
        )
    common = pads[0] if all(p == pads[0] for p in pads) else None
    return SliceSet(
        images=np.concatenate(images),
        labels=np.concatenate(labels) if labels else None,
        volume_index=np.concatenate(vol_idx),
        slice_index=np.concatenate(sl_idx),
        pad=common,
        pads=pads,
        shapes=[tuple(int(s) for s in v.image.shape[1:]) for v in volumes],
        case_ids=[v.case_id for v in volumes],
        axis=axis,
    )


def few_shot(slices: SliceSet, n: int, seed: int = 0) -> SliceSet:
    """A seeded random subset of ``n`` slices (in their original order).

    Subsets are nested: with the same seed, the ``n=10`` subset is contained in
    the ``n=20`` one.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"few_shot: n must be a positive integer, got {n!r}")
    total = len(slices)
    if n > total:
        raise ValueError(f"few_shot: asked for {n} slices but the set has only {total}")
    order = np.random.default_rng(seed).permutation(total)
    return slices.subset(np.sort(order[:n]))


def slices_to_volume(pred, pad: Pad, axis: int, shape: Sequence[int]) -> np.ndarray:
    """Reassemble one volume from its slices (all of them, in order).

    Args:
        pred: [S, H', W'] (labels, probabilities...) or [S, C, H', W'] padded slices
            of one volume, S = shape[axis].
        pad: the padding that was applied (``SliceSet.pad`` or ``pads[v]``).
        axis: the slicing axis.
        shape: the volume's [X, Y, Z].
    Returns:
        [X, Y, Z] (or [C, X, Y, Z]) NumPy array with the dtype of ``pred``.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be [X, Y, Z], got {shape}")
    arr = np.asarray(unpad(np.asarray(pred), pad))
    plane = _plane_shape(shape, axis)
    if arr.ndim not in (3, 4) or arr.shape[0] != shape[axis] or arr.shape[-2:] != plane:
        raise ValueError(
            f"slices_to_volume: slices of shape {tuple(np.asarray(pred).shape)} with pad {pad} do not make a "
            f"volume {shape} along axis {axis} (need {shape[axis]} slices of {plane} after unpadding)"
        )
    if arr.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(arr, 0, axis))
    return np.ascontiguousarray(np.moveaxis(arr, 0, axis + 1))


def _plane_shape(shape: Sequence[int], axis: int) -> Tuple[int, int]:
    rest = [int(s) for i, s in enumerate(shape) if i != axis]
    return rest[0], rest[1]

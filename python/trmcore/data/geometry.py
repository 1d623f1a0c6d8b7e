"""Voxel geometry: bring a volume to a model's orientation and in-plane spacing, and back.

A trmcore model is 2D: it sees slices along one voxel axis, so the order and
direction of the voxel axes (the orientation, e.g. ``RAS``) and the in-plane
voxel size are part of what it learnt. Scans come in any orientation (FSL and
MNI data are ``LAS``, DICOM conversions often ``LPS`` or ``PIR``) and spacing.

The *working grid* of a volume is its stored grid

1. reoriented to the target axis codes with nibabel's orientation tools
   (a permutation and flips of the voxel axes: lossless, exactly invertible),
2. then, when an in-plane spacing (the two axes other than the slice axis)
   differs from the target spacing by more than ``tolerance`` (relative),
   resampled along those axes to the target spacing: images linearly, labels
   through linearly interpolated one-hot maps (the class with the largest
   interpolated share wins). The slice axis is never resampled.

:class:`GridMap` records both steps for one volume, so that anything computed
on the working grid (labels, probabilities, maps) is written back on the
input's own grid (:meth:`GridMap.to_native`): same shape, same affine.

NumPy + nibabel only (no SciPy, no torch): the inference-only install uses it.

Example:
    >>> import numpy as np
    >>> las = np.diag([-1.0, 1.0, 1.0, 1.0])                         # x runs to the left
    >>> grid = plan_grid((4, 5, 3), las, Geometry("RAS", (0.5, 1.0, 1.0)))
    >>> grid.working_shape, grid.resampled                          # 1 mm -> 0.5 mm along x
    ((8, 5, 3), True)
    >>> labels = np.random.default_rng(0).integers(0, 3, (4, 5, 3))
    >>> bool((grid.to_native(grid.to_working(labels, "label"), "label") == labels).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from nibabel import orientations as ornt

from trmcore.limits import check_allocation, product, shape_text

#: Orientation volumes are brought to at training unless told otherwise.
DEFAULT_ORIENTATION = "RAS"
#: "native": volumes are used as stored (``--no-resample``; runs from before geometry was recorded).
NATIVE = "native"
#: In-plane spacings within this relative difference of the target are not resampled
#: (0.9375 mm against 1 mm, 6 %, is resampled; scanner rounding, < 1 %, is not).
SPACING_RTOL = 0.05
#: Bytes per working-grid voxel that :func:`plan_grid` budgets by default: a few float32
#: copies of a channel and of the per-class maps made while resampling (callers that know
#: their channel and class counts pass their own figure).
GRID_BYTES_PER_VOXEL = 32
# An affine whose 3x3 part has |det| below this share of the product of its column norms
# maps the voxel grid onto a plane or a line: no orientation, no spacing (a damaged header).
_SINGULAR_RTOL = 1e-6


@dataclass(frozen=True)
class Geometry:
    """The grid a model works on.

    Attributes:
        orientation: axis codes of the voxel axes, e.g. ``"RAS"`` (x runs to
            the Right, y to Anterior, z to Superior), or ``"native"`` to use
            volumes as stored.
        spacing: voxel size in mm per axis of that orientation, or None to
            keep every volume's own spacing. Only the in-plane axes are used.
        axis: the slice axis (never resampled).
        tolerance: relative in-plane spacing difference below which a volume
            is not resampled.
    """

    orientation: str = DEFAULT_ORIENTATION
    spacing: Optional[Tuple[float, float, float]] = None
    axis: int = 2
    tolerance: float = SPACING_RTOL

    def __post_init__(self) -> None:
        if self.orientation != NATIVE:
            codes = str(self.orientation).upper()
            try:
                ornt.axcodes2ornt(tuple(codes))
            except Exception:
                codes = ""
            if len(codes) != 3 or len({_axis_of(c) for c in codes}) != 3:
                raise ValueError(f"orientation must be three axis codes such as RAS or LPS, one per axis "
                                 f"(L/R, A/P, S/I), got {self.orientation!r}")
            object.__setattr__(self, "orientation", codes)
        if self.spacing is not None:
            spacing = tuple(float(s) for s in self.spacing)
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise ValueError(f"spacing must be three positive voxel sizes in mm, got {self.spacing!r}")
            object.__setattr__(self, "spacing", spacing)
        if self.axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {self.axis!r}")
        if not 0 <= float(self.tolerance) < 1:
            raise ValueError(f"spacing tolerance must be in [0, 1), got {self.tolerance!r}")

    @property
    def native(self) -> bool:
        return self.orientation == NATIVE


def native_geometry(axis: int = 2) -> Geometry:
    """Volumes used as stored: no reorientation, no resampling."""
    return Geometry(NATIVE, None, axis)


class GeometryWarning(UserWarning):
    """A model or run does not say which grid it was trained on."""


def recorded_geometry(orientation: Optional[str], spacing: Optional[Sequence[float]], axis: int, what: str,
                      resample: bool = True) -> Geometry:
    """The working grid a run or model recorded (``orientation``/``spacing`` of run.json or model metadata).

    ``resample=False`` (``--no-resample``) uses volumes as stored. A record
    from before trmcore recorded geometry (``orientation`` None) keeps working
    as then (volumes as stored) with a :class:`GeometryWarning` naming ``what``.
    """
    if not resample:
        return native_geometry(axis)
    if orientation is None:
        import warnings

        warnings.warn(f"{what} does not record the orientation and voxel spacing it was trained on (made before "
                      "trmcore recorded them): volumes are used as stored, as then; re-export or retrain to have "
                      "scans reoriented and resampled", GeometryWarning, stacklevel=2)
        return native_geometry(axis)
    return Geometry(orientation, None if spacing is None else tuple(spacing), axis)


def voxel_spacing(affine: np.ndarray) -> Tuple[float, float, float]:
    """Voxel size in mm along each voxel axis (column norms of the affine's 3x3 part)."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0)))


def axcodes(affine: np.ndarray) -> str:
    """The nearest axis codes of an affine, e.g. ``"LAS"``."""
    return "".join(ornt.aff2axcodes(np.asarray(affine, np.float64)))


@dataclass
class GridMap:
    """How one volume's stored grid maps to its working grid, and back.

    Attributes:
        native_shape: (X, Y, Z) as stored.
        native_affine: float64 [4, 4] voxel-to-world as stored.
        transform: nibabel orientation transform stored -> target (None: no reorientation).
        reoriented_shape: shape after reorientation.
        working_shape: shape after in-plane resampling.
        working_affine: float64 [4, 4] voxel-to-world of the working grid.
        orientation: the target axis codes (None when not reoriented).
    """

    native_shape: Tuple[int, int, int]
    native_affine: np.ndarray
    transform: Optional[np.ndarray]
    reoriented_shape: Tuple[int, int, int]
    working_shape: Tuple[int, int, int]
    working_affine: np.ndarray
    orientation: Optional[str] = None

    @property
    def reoriented(self) -> bool:
        return self.transform is not None

    @property
    def resampled(self) -> bool:
        return tuple(self.working_shape) != tuple(self.reoriented_shape)

    @property
    def identity(self) -> bool:
        return not self.reoriented and not self.resampled

    @property
    def working_spacing(self) -> Tuple[float, float, float]:
        return voxel_spacing(self.working_affine)

    def then(self, other: "GridMap") -> "GridMap":
        """This map followed by ``other`` (whose stored grid is this map's working grid), as one map.

        A map reorients, then resamples: ``other`` must not reorient when this
        one resamples. Applying the composite is applying the two in turn
        (the same operations in the same order).
        """
        if tuple(other.native_shape) != tuple(self.working_shape):
            raise ValueError(f"cannot compose grid maps: working shape {self.working_shape} is not the next map's "
                             f"stored shape {other.native_shape}")
        if other.identity:
            return self
        if self.identity:
            return GridMap(self.native_shape, self.native_affine, other.transform, other.reoriented_shape,
                           other.working_shape, other.working_affine, other.orientation)
        if self.resampled or other.reoriented:
            raise ValueError("cannot compose grid maps: a resampling followed by a reorientation is not one GridMap")
        return GridMap(self.native_shape, self.native_affine, self.transform, self.working_shape,
                       other.working_shape, other.working_affine, self.orientation)

    def to_working(self, data: np.ndarray, mode: str = "linear", num_classes: Optional[int] = None) -> np.ndarray:
        """Stored grid -> working grid.

        Args:
            data: ``[..., X, Y, Z]`` on the stored grid (leading axes, e.g.
                channels, are carried along).
            mode: ``"linear"`` (images, probabilities, maps), ``"nearest"``, or
                ``"label"`` (integer labels via interpolated one-hot maps; then
                ``num_classes`` bounds the class values, negative values such
                as an ignore index are kept as classes too).
        Returns:
            ``[..., X', Y', Z']`` on the working grid, dtype of ``data`` (float32 for linear).
        """
        data = np.asarray(data)
        _check_trailing(data, self.native_shape, "stored")
        if self.transform is not None:
            data = _apply_orientation(data, self.transform)
        if self.resampled:
            data = _resample(data, self.reoriented_shape, self.working_shape, mode)
        return data

    def to_native(self, data: np.ndarray, mode: str = "linear") -> np.ndarray:
        """Working grid -> stored grid (the inverse of :meth:`to_working`); same conventions."""
        data = np.asarray(data)
        _check_trailing(data, self.working_shape, "working")
        if self.resampled:
            data = _resample(data, self.working_shape, self.reoriented_shape, mode)
        if self.transform is not None:
            data = _apply_orientation(data, ornt.ornt_transform(ornt.axcodes2ornt(tuple(self.orientation)),
                                                                ornt.io_orientation(self.native_affine)))
        return data


def check_affine(affine, source: object = "volume") -> np.ndarray:
    """The affine as float64 [4, 4]; ValueError naming ``source`` when it is not a usable voxel-to-world map.

    Refused: a shape other than 4x4, NaN or infinite entries, and a singular 3x3
    part (a zero voxel size, or two voxel axes along one direction): such a
    header has no orientation and no spacing, and nibabel fails on it with
    "SVD did not converge" or "Unable to find out axis".
    """
    try:
        affine = np.asarray(affine, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: the affine (voxel-to-world) is not a 4x4 matrix of numbers") from None
    if affine.shape != (4, 4):
        raise ValueError(f"{source}: the affine (voxel-to-world) must be 4x4, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise ValueError(f"{source}: the affine (voxel-to-world, from the header's sform/qform) holds NaN or "
                         "infinite values: the header is damaged")
    linear = affine[:3, :3]
    norms = np.sqrt((linear ** 2).sum(axis=0))
    if (norms <= 0).any():
        zero = [int(a) for a in np.flatnonzero(norms <= 0)]
        raise ValueError(f"{source}: the affine (voxel-to-world) gives voxel axis {zero} a size of 0 mm: the "
                         "header does not say where the voxels are (fix its sform/qform or pixdim)")
    if abs(np.linalg.det(linear)) <= _SINGULAR_RTOL * float(np.prod(norms)):
        raise ValueError(f"{source}: the affine (voxel-to-world) is singular (two voxel axes point along one "
                         "direction): the header is damaged (fix its sform/qform)")
    return affine


def plan_grid(shape: Sequence[int], affine: np.ndarray, geometry: Optional[Geometry], source: object = "volume",
              bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> GridMap:
    """The :class:`GridMap` of a volume of ``shape`` with ``affine`` for ``geometry`` (None = native).

    The reorientation (:func:`plan_reorient`) followed by the in-plane
    resampling (:func:`plan_resample`), composed (:meth:`GridMap.then`): the
    steps ``reorient`` and ``resample`` of :mod:`trmcore.data.pipeline`.
    ValueError naming ``source`` (the file, or the case) when the affine is
    unusable (:func:`check_affine`); :class:`trmcore.limits.ResourceLimitError`
    when the working grid (``bytes_per_voxel`` per voxel) would not fit the
    memory budget, e.g. a 1e-6 mm voxel size resampled to 1 mm or back.
    """
    shape = tuple(int(s) for s in shape[:3])
    affine = check_affine(affine, source)
    if geometry is None or geometry.native:
        return GridMap(shape, affine, None, shape, shape, affine)
    grid = plan_reorient(shape, affine, geometry.orientation)
    if geometry.spacing is None:
        return grid
    return grid.then(plan_resample(grid.working_shape, grid.working_affine, geometry.spacing, geometry.axis,
                                   geometry.tolerance, source, bytes_per_voxel))


def plan_reorient(shape: Sequence[int], affine: np.ndarray, orientation: str, source: object = "volume") -> GridMap:
    """The :class:`GridMap` that permutes and flips the voxel axes to ``orientation`` (lossless; no resampling)."""
    shape = tuple(int(s) for s in shape[:3])
    affine = check_affine(affine, source)
    start = ornt.io_orientation(affine)
    target = ornt.axcodes2ornt(tuple(orientation))
    transform = ornt.ornt_transform(start, target)
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return GridMap(shape, affine, None, shape, shape, affine)
    reoriented_shape = tuple(int(shape[int(i)]) for i in np.argsort(transform[:, 0]))
    reoriented_affine = affine @ ornt.inv_ornt_aff(transform, shape)
    return GridMap(shape, affine, transform, reoriented_shape, reoriented_shape, reoriented_affine, orientation)


def plan_resample(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float], axis: int,
                  tolerance: float = SPACING_RTOL, source: object = "volume",
                  bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> GridMap:
    """The :class:`GridMap` that resamples the two in-plane axes (all but ``axis``) to ``spacing`` (mm).

    An axis within ``tolerance`` (relative) of its target keeps its voxels; the
    field of view (voxel edges) is kept, so the new spacing is exactly
    ``n_old / n_new * old``. No reorientation: ``spacing`` is per voxel axis of
    the grid as given.
    """
    shape = tuple(int(s) for s in shape[:3])
    affine = check_affine(affine, source)
    working_shape = list(shape)
    scale = np.eye(4)
    current = voxel_spacing(affine)
    for ax in range(3):
        if ax == axis:
            continue
        target_mm = float(spacing[ax])
        if abs(current[ax] - target_mm) <= tolerance * target_mm:
            continue
        exact = shape[ax] * current[ax] / target_mm
        if not exact < 2**40:  # round() of a huge float is exact but pointless: refused just below
            exact = 2**40
        size = max(1, int(round(exact)))
        working_shape[ax] = size
        # Voxel j of the new grid sits at old index (j + 0.5) * r - 0.5: the field
        # of view (voxel edges) is kept, so the spacing is exactly n_old / n_new * old.
        r = shape[ax] / size
        scale[ax, ax] = r
        scale[ax, 3] = 0.5 * (r - 1.0)
    if tuple(working_shape) != shape:
        check_allocation(product(working_shape) * int(bytes_per_voxel),
                         f"resampling {shape_text(shape)} voxels of "
                         f"{'x'.join(f'{v:.3g}' for v in current)} mm to the working "
                         f"spacing {'x'.join(f'{float(v):g}' for v in spacing)} mm gives "
                         f"{shape_text(working_shape)} voxels, which", source)
    return GridMap(shape, affine, None, shape, tuple(working_shape), affine @ scale)


# -- helpers --------------------------------------------------------------------------------


def _axis_of(code: str) -> int:
    return {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(code, -1)


def _check_trailing(data: np.ndarray, shape: Tuple[int, ...], what: str) -> None:
    if data.ndim < 3 or tuple(data.shape[-3:]) != tuple(shape):
        raise ValueError(f"expected an array [..., {', '.join(map(str, shape))}] on the {what} grid, "
                         f"got shape {data.shape}")


def _apply_orientation(data: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """nibabel's apply_orientation on the last three axes of ``data``."""
    lead = data.ndim - 3
    moved = np.moveaxis(data, range(lead), range(3, 3 + lead)) if lead else data
    out = ornt.apply_orientation(moved, transform)
    out = np.moveaxis(out, range(3, 3 + lead), range(lead)) if lead else out
    return np.ascontiguousarray(out)


def _source_positions(n_from: int, n_to: int) -> np.ndarray:
    """Index in a grid of ``n_from`` voxels of each voxel centre of a grid of ``n_to`` over the same extent."""
    r = n_from / n_to
    return np.clip((np.arange(n_to) + 0.5) * r - 0.5, 0.0, n_from - 1.0)


def _resample(data: np.ndarray, shape_from: Tuple[int, ...], shape_to: Tuple[int, ...], mode: str) -> np.ndarray:
    if mode == "label":
        return _resample_labels(data, shape_from, shape_to)
    if mode not in ("linear", "nearest"):
        raise ValueError(f"resampling mode must be linear, nearest or label, got {mode!r}")
    out = data if mode == "nearest" else data.astype(np.float32, copy=False)
    for ax in range(3):
        if shape_from[ax] == shape_to[ax]:
            continue
        out = _resample_axis(out, out.ndim - 3 + ax, shape_to[ax], mode)
    return out


def _resample_axis(data: np.ndarray, axis: int, size: int, mode: str) -> np.ndarray:
    x = _source_positions(data.shape[axis], size)
    if mode == "nearest":
        return np.take(data, np.floor(x + 0.5).astype(np.intp), axis=axis)
    low = np.floor(x).astype(np.intp)
    high = np.minimum(low + 1, data.shape[axis] - 1)
    weight = (x - low).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    a = np.take(data, low, axis=axis)
    b = np.take(data, high, axis=axis)
    # a + w * (b - a) keeps a constant background exactly constant.
    return a + weight * (b - a)


def _resample_labels(data: np.ndarray, shape_from: Tuple[int, ...], shape_to: Tuple[int, ...]) -> np.ndarray:
    """Integer labels through interpolated one-hot maps, one class at a time (bounded memory)."""
    values = np.unique(data)
    best = np.full(data.shape[:-3] + tuple(shape_to), -1.0, np.float32)
    out = np.zeros(best.shape, data.dtype)
    for value in values:
        share = _resample((data == value).astype(np.float32), shape_from, shape_to, "linear")
        better = share > best
        best[better] = share[better]
        out[better] = value
    return out


def describe(grid: GridMap) -> str:
    """A short human description: ``LAS 1x1x1 mm -> RAS 1x1x1 mm``."""
    native = "x".join(f"{s:g}" for s in np.round(voxel_spacing(grid.native_affine), 3))
    working = "x".join(f"{s:g}" for s in np.round(grid.working_spacing, 3))
    return f"{axcodes(grid.native_affine)} {native} mm -> {axcodes(grid.working_affine)} {working} mm"


__all__ = ["DEFAULT_ORIENTATION", "GRID_BYTES_PER_VOXEL", "NATIVE", "SPACING_RTOL", "Geometry", "GeometryWarning",
           "GridMap", "axcodes", "check_affine", "describe", "native_geometry", "plan_grid", "plan_reorient", "plan_resample",
           "recorded_geometry", "voxel_spacing"]

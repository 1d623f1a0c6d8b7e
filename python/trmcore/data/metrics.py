"""What a radiologist checks besides Dice: voxel counts, volumes, surface distances, lesion-wise detection.

Pure functions over NumPy label arrays and a voxel spacing in mm; torch-free
and scipy-free (scipy's C routines are used when installed, and the NumPy
versions here give the same numbers: tests/data/test_metrics.py).

Per foreground class ``c`` of one volume (:func:`class_metrics`), with
``P`` = predicted voxels of ``c``, ``T`` = reference voxels of ``c``
(voxels of the ``ignore`` label are left out of both):

- ``tp = |P ∩ T|``, ``fp = |P \\ T|``, ``fn = |T \\ P|`` voxel counts;
- ``volume_pred_ml``, ``volume_ref_ml``: ``|P|`` and ``|T|`` times the voxel volume, in millilitres;
- surfaces: the voxels of a mask with a face neighbour (6-connectivity)
  outside it, the volume's border counting as outside (as MONAI's
  ``get_mask_edges`` and nnU-Net v1 / medpy's ``hd95``); distances are
  Euclidean between voxel centres in mm (anisotropic spacing), exact;
- ``hd95_mm``: the 95th percentile (NumPy's linear interpolation) of the
  symmetric surface distances: the distances from every surface voxel of
  ``P`` to the surface of ``T`` together with those from ``T`` to ``P``
  (medpy ``hd95`` as nnU-Net v1 used it; MONAI's
  ``compute_hausdorff_distance(percentile=95)`` takes the larger of the two
  directed percentiles instead, which is >= this);
- ``msd_mm``: the mean of the same symmetric surface distances (ASSD);
- conventions: ``P`` and ``T`` both empty: NaN (no score, like Dice; left out
  of means); exactly one of them empty: ``inf`` (the distance to an empty
  surface is unbounded; a mean over cases that includes it is ``inf``, so a
  missed or hallucinated structure cannot be averaged away);
- lesion-wise detection: connected components (6-connectivity) of ``T`` and
  of ``P`` are lesions. A reference lesion is *detected* when at least one
  of its voxels is predicted ``c``; a predicted lesion is *true* when at
  least one of its voxels is ``c`` in the reference.
  ``lesion_sensitivity = detected / reference lesions``,
  ``lesion_precision = true predicted / predicted lesions``,
  ``lesion_f1 = 2 D / (2 D + M + F)`` with D detected, M missed reference
  lesions and F predicted lesions touching no reference lesion. NaN when the
  denominator is 0 (no lesion on that side / on either side).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

HD_PERCENTILE = 95.0
_BIG = 1e30  # stands for "no feature" in the squared-distance passes (finite, so the envelope arithmetic works)


@dataclass
class ClassMetrics:
    """Voxel counts, volumes, surface distances and lesion-wise detection of one class in one volume."""

    tp: int
    fp: int
    fn: int
    volume_pred_ml: float
    volume_ref_ml: float
    hd95_mm: float
    msd_mm: float
    lesions_ref: int
    lesions_pred: int
    lesions_detected: int
    lesions_true_pred: int
    lesion_sensitivity: float
    lesion_precision: float
    lesion_f1: float

    def to_dict(self) -> dict:
        return {k: json_number(v) for k, v in asdict(self).items()}


def json_number(value):
    """NaN -> None, inf -> "inf" (JSON has neither); other numbers unchanged."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


# ------------------------------------------------------------------ connected components
def label_components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """Connected components of a boolean mask with face connectivity: (int32 labels 1..n, 0 outside; n).

    Components are numbered in the order of their first voxel in C order
    (as ``scipy.ndimage.label``). Uses scipy when installed, else
    :func:`label_components_numpy`.
    """
    mask = np.asarray(mask, bool)
    try:
        from scipy import ndimage
    except ImportError:
        return label_components_numpy(mask)
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1))
    return labels.astype(np.int32, copy=False), int(count)


def label_components_numpy(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    """:func:`label_components` in NumPy: union-find over face-adjacent voxel pairs (hooking + pointer jumping)."""
    mask = np.asarray(mask, bool)
    flat = np.flatnonzero(mask)
    labels = np.zeros(mask.shape, np.int32)
    if flat.size == 0:
        return labels, 0
    node = np.full(mask.size, -1, np.int64)
    node[flat] = np.arange(flat.size)
    node = node.reshape(mask.shape)
    edges_u, edges_v = [], []
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = mask[tuple(lo)] & mask[tuple(hi)]
        edges_u.append(node[tuple(lo)][both])
        edges_v.append(node[tuple(hi)][both])
    u, v = np.concatenate(edges_u), np.concatenate(edges_v)
    root = np.arange(flat.size)
    while True:
        ru, rv = root[u], root[v]
        differ = ru != rv
        if not differ.any():
            break
        low = np.minimum(ru[differ], rv[differ])
        np.minimum.at(root, ru[differ], low)  # hook each root under the smaller root of a neighbour
        np.minimum.at(root, rv[differ], low)
        while True:  # pointer jumping: every node to its root
            jumped = root[root]
            if np.array_equal(jumped, root):
                break
            root = jumped
    # number components by their first voxel (flat is in C order, roots are the smallest node of a component)
    uniques, first = np.unique(root, return_index=True)
    order = np.argsort(first)
    number = np.empty(uniques.size, np.int32)
    number[order] = np.arange(1, uniques.size + 1, dtype=np.int32)
    labels.reshape(-1)[flat] = number[np.searchsorted(uniques, root)]
    return labels, int(uniques.size)


# ------------------------------------------------------------------ distances
def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the border of the array counts as outside)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = mask.copy()
    for axis in range(mask.ndim):
        for shift in (0, 2):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(shift, shift + mask.shape[axis])
            inner &= padded[tuple(index)]
    return mask & ~inner


def distance_to(features: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest ``True`` voxel of ``features`` (float64).

    Exact. Uses ``scipy.ndimage.distance_transform_edt`` when installed, else
    :func:`distance_to_numpy`. ``inf`` everywhere when ``features`` is empty.
    """
    features = np.asarray(features, bool)
    if not features.any():
        return np.full(features.shape, np.inf)
    try:
        from scipy import ndimage
    except ImportError:
        return distance_to_numpy(features, spacing)
    return ndimage.distance_transform_edt(~features, sampling=[float(s) for s in spacing])


def distance_to_numpy(features: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """:func:`distance_to` in NumPy: Felzenszwalb-Huttenlocher lower envelopes, one pass per axis.

    Each pass replaces every line of squared distances ``f`` along an axis by
    ``min_j f[j] + (s (i - j))^2``; the passes run on all lines of the array at
    once (the envelope's stack is kept per line).
    """
    features = np.asarray(features, bool)
    if not features.any():
        return np.full(features.shape, np.inf)
    squared = np.where(features, 0.0, _BIG)
    for axis, step in enumerate(spacing):
        moved = np.moveaxis(squared, axis, -1)
        lines = moved.reshape(-1, moved.shape[-1])
        squared = np.moveaxis(_envelope(lines, float(step)).reshape(moved.shape), -1, axis)
    return np.sqrt(squared)


def _envelope(f: np.ndarray, step: float) -> np.ndarray:
    """``out[l, i] = min_j f[l, j] + (step (i - j))^2`` for float64 ``f [L, n]`` (FH 2012, all lines together)."""
    count, n = f.shape
    if n == 1:
        return f.copy()
    rows = np.arange(count)
    w = step * step
    v = np.zeros((count, n), np.int64)  # parabola positions in the envelope
    z = np.empty((count, n + 1))  # boundaries between parabolas
    z[:, 0], z[:, 1] = -np.inf, np.inf
    k = np.zeros(count, np.int64)
    for q in range(1, n):
        fq = f[:, q] + w * q * q
        while True:
            vk = v[rows, k]
            s = (fq - (f[rows, vk] + w * vk * vk)) / (2.0 * w * (q - vk))
            pop = s <= z[rows, k]
            if not pop.any():
                break
            k[pop] -= 1
        k += 1
        v[rows, k] = q
        z[rows, k] = s
        z[rows, k + 1] = np.inf
    out = np.empty_like(f)
    k[:] = 0
    for q in range(n):
        while True:
            advance = z[rows, k + 1] < q
            if not advance.any():
                break
            k[advance] += 1
        vk = v[rows, k]
        out[:, q] = w * (q - vk) ** 2 + f[rows, vk]
    return out


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Symmetric surface distances in mm: prediction surface -> reference surface, then the reverse (float64).

    Both masks must be non-empty. Computed on the bounding box of both masks
    (all surfaces lie inside it, so the distances are the same as on the whole array).
    """
    both = np.asarray(prediction, bool) | np.asarray(reference, bool)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(both))
    pred_surface = surface(np.asarray(prediction, bool))[box]
    ref_surface = surface(np.asarray(reference, bool))[box]
    return np.concatenate([distance_to(ref_surface, spacing)[pred_surface],
                           distance_to(pred_surface, spacing)[ref_surface]])


def hd95_and_msd(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Tuple[float, float]:
    """(HD95, mean symmetric surface distance) in mm with the module's empty-mask conventions."""
    has_pred, has_ref = bool(np.any(prediction)), bool(np.any(reference))
    if not has_pred and not has_ref:
        return math.nan, math.nan
    if has_pred != has_ref:
        return math.inf, math.inf
    distances = surface_distances(prediction, reference, spacing)
    return float(np.percentile(distances, HD_PERCENTILE)), float(distances.mean())


# ------------------------------------------------------------------ per class
def lesion_detection(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Lesion counts and lesion-wise sensitivity, precision and F1 (module docstring) of two boolean masks."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    ref_labels, n_ref = label_components(reference)
    pred_labels, n_pred = label_components(prediction)
    detected = np.unique(ref_labels[prediction & reference]).size
    true_pred = np.unique(pred_labels[prediction & reference]).size
    missed, false = n_ref - detected, n_pred - true_pred
    return {"lesions_ref": n_ref, "lesions_pred": n_pred, "lesions_detected": int(detected),
            "lesions_true_pred": int(true_pred),
            "lesion_sensitivity": _ratio(detected, n_ref), "lesion_precision": _ratio(true_pred, n_pred),
            "lesion_f1": _ratio(2 * detected, 2 * detected + missed + false)}


def class_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                  lesions: bool = True) -> ClassMetrics:
    """:class:`ClassMetrics` of two boolean masks on one grid with voxel ``spacing`` (mm per axis)."""
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    if len(spacing) != prediction.ndim or not all(float(s) > 0 and math.isfinite(float(s)) for s in spacing):
        raise ValueError(f"spacing {tuple(spacing)} must give a positive size per axis of {prediction.shape}")
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    tp = int(np.count_nonzero(prediction & reference))
    n_pred, n_ref = int(np.count_nonzero(prediction)), int(np.count_nonzero(reference))
    hd95, msd = hd95_and_msd(prediction, reference, spacing)
    detection = lesion_detection(prediction, reference) if lesions else {
        "lesions_ref": 0, "lesions_pred": 0, "lesions_detected": 0, "lesions_true_pred": 0,
        "lesion_sensitivity": math.nan, "lesion_precision": math.nan, "lesion_f1": math.nan}
    return ClassMetrics(tp=tp, fp=n_pred - tp, fn=n_ref - tp, volume_pred_ml=n_pred * voxel_ml,
                        volume_ref_ml=n_ref * voxel_ml, hd95_mm=hd95, msd_mm=msd, **detection)


def volume_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                   class_names: Sequence[str], ignore: Optional[int] = None) -> Dict[str, ClassMetrics]:
    """Class name -> :class:`ClassMetrics` for class arrays (class ``i + 1`` is ``class_names[i]``).

    Voxels whose reference is ``ignore`` count for neither mask.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    annotated = None if ignore is None else reference != ignore
    out = {}
    for index, name in enumerate(class_names, start=1):
        p, t = prediction == index, reference == index
        if annotated is not None:
            p &= annotated
        out[name] = class_metrics(p, t, spacing)
    return out


def pooled(records: Sequence[ClassMetrics]) -> Dict[str, float]:
    """One class over several volumes: summed counts and volumes, mean HD95/MSD (NaN left out, inf kept),
    lesion-wise scores from the summed lesion counts."""
    if not records:
        return {}
    total = {k: sum(getattr(r, k) for r in records)
             for k in ("tp", "fp", "fn", "volume_pred_ml", "volume_ref_ml", "lesions_ref", "lesions_pred",
                       "lesions_detected", "lesions_true_pred")}
    for key in ("hd95_mm", "msd_mm"):
        values = np.asarray([getattr(r, key) for r in records], np.float64)
        values = values[~np.isnan(values)]
        total[key] = float(values.mean()) if values.size else math.nan
    missed = total["lesions_ref"] - total["lesions_detected"]
    false = total["lesions_pred"] - total["lesions_true_pred"]
    total["lesion_sensitivity"] = _ratio(total["lesions_detected"], total["lesions_ref"])
    total["lesion_precision"] = _ratio(total["lesions_true_pred"], total["lesions_pred"])
    total["lesion_f1"] = _ratio(2 * total["lesions_detected"], 2 * total["lesions_detected"] + missed + false)
    return total


def _ratio(numerator: float, denominator: float) -> float:
    return math.nan if denominator == 0 else float(numerator) / float(denominator)

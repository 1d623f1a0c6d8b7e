"""Per-volume measures behind the task distance of SPEC section 6 [SEQ].

Torch-free (NumPy only). Two measures compare a pair of volumes:

- image dissimilarity: the 1-D Wasserstein distance between the flattened PCA
  output of the two (resized) image volumes, :func:`image_signature` and
  :func:`wasserstein_1d`;
- label similarity: the global, single-window SSIM of the two (resized) label
  volumes, :func:`global_ssim`.

Both inputs of a pair are resized to a common cube first, so volumes of
different shapes are compared, never refused.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import numpy as np

#: SSIM stabilisers of SPEC section 6: C1 = C2 = (0.3 * L)^2 with dynamic range L = 1.
SSIM_C = (0.3 * 1.0) ** 2


def _linear_along(arr: np.ndarray, axis: int, out_len: int) -> np.ndarray:
    n = arr.shape[axis]
    if n == out_len:
        return arr
    # Half-pixel centres (as scipy.ndimage.zoom(grid_mode=True) / torch align_corners=False).
    pos = (np.arange(out_len, dtype=np.float64) + 0.5) * (n / out_len) - 0.5
    pos = np.clip(pos, 0.0, n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * arr.ndim
    shape[axis] = out_len
    weight = (pos - lo).astype(arr.dtype).reshape(shape)
    below = np.take(arr, lo, axis=axis)
    return below + (np.take(arr, hi, axis=axis) - below) * weight


def resize_image(volume: np.ndarray, size: int) -> np.ndarray:
    """Trilinear resize of an image volume to a cube.

    Args:
        volume: ``[X, Y, Z]`` real array (any shape, any float/int dtype).
        size: the edge of the output cube (128 in [SEQ]).

    Returns:
        float32 ``[size, size, size]``.

    Example:
        >>> resize_image(np.ones((4, 6, 8)), 2).shape
        (2, 2, 2)
    """
    _check_volume(volume, "volume")
    _check_size(size)
    out = np.asarray(volume, dtype=np.float32)
    for axis in range(3):
        out = _linear_along(out, axis, size)
    return np.ascontiguousarray(out)


def resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a label volume to a cube (class indices are kept).

    Args:
        labels: ``[X, Y, Z]`` integer class map.
        size: the edge of the output cube.

    Returns:
        ``[size, size, size]`` array of the input dtype.
    """
    _check_volume(labels, "labels")
    _check_size(size)
    index = [np.minimum(((np.arange(size) + 0.5) * (n / size)).astype(np.intp), n - 1) for n in labels.shape]
    return np.ascontiguousarray(labels[np.ix_(*index)])


def pca_components(volume: np.ndarray, variance: float = 0.75) -> np.ndarray:
    """Principal components of a cube volume seen as ``size*size`` samples of ``size`` features.

    The volume ``[S, S, S]`` is reshaped to ``(S*S, S)``, centred per feature, and
    the smallest number ``k`` of components whose cumulative explained variance
    exceeds ``variance`` is kept (as ``sklearn.decomposition.PCA(n_components=0.75)``).
    Each component's sign is fixed so that its largest-magnitude entry is
    positive (PCA signs are otherwise arbitrary, and the Wasserstein distance of
    the flattened values would depend on them).

    Args:
        volume: ``[S, S, S]`` real array (a resized image).
        variance: fraction of explained variance to keep, in (0, 1].

    Returns:
        float64 ``[k, S]`` unit-norm components, largest variance first. A
        constant volume has no variance: one all-zero component is returned.
    """
    if volume.ndim != 3 or len(set(volume.shape)) != 1:
        raise ValueError(f"pca_components: volume must be a cube [S, S, S], got shape {volume.shape}")
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"pca_components: variance must be in (0, 1], got {variance}")
    size = volume.shape[0]
    samples = volume.reshape(size * size, size).astype(np.float64)
    samples = samples - samples.mean(axis=0)
    cov = samples.T @ samples / max(1, samples.shape[0] - 1)
    eigval, eigvec = np.linalg.eigh(cov)
    eigval = np.clip(eigval[::-1], 0.0, None)
    eigvec = eigvec[:, ::-1]
    total = eigval.sum()
    if not np.isfinite(total):
        raise ValueError("pca_components: the volume holds NaN or infinite values")
    if total <= 0.0:
        return np.zeros((1, size))
    ratio = np.cumsum(eigval) / total
    k = min(size, int(np.searchsorted(ratio, variance, side="right")) + 1)
    components = eigvec[:, :k].T.copy()
    peak = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(k), peak])
    return components * signs[:, None]


PCA_OUTPUTS = ("scores", "components")


def pca_scores(volume: np.ndarray, variance: float = 0.75) -> np.ndarray:
    """The volume projected on its kept principal components: ``(S*S, k)`` float64.

    What ``sklearn.decomposition.PCA(n_components=variance).fit_transform`` of the
    ``(S*S, S)`` reshaped volume returns (up to the sign convention of
    :func:`pca_components`). These values carry the image's intensity scale,
    which is why the default alpha of d is small.
    """
    components = pca_components(volume, variance)
    size = volume.shape[0]
    samples = volume.reshape(size * size, size).astype(np.float64)
    return (samples - samples.mean(axis=0)) @ components.T


def image_signature(image: np.ndarray, size: int = 128, variance: float = 0.75, output: str = "scores") -> np.ndarray:
    """The sorted, flattened PCA output of an image volume: what W compares.

    Args:
        image: ``[X, Y, Z]`` or ``[Cin, X, Y, Z]`` (channels' values are
            concatenated, so a multi-channel task is compared on all its inputs).
        size: resize cube edge; variance: explained variance kept.
        output: ``"scores"`` (default; the projected data, as the [SEQ] authors'
            code flattens ``PCA.fit_transform``) or ``"components"`` (the unit
            principal axes, ``PCA.components_``).

    Returns:
        float64 1-D array, sorted ascending (the empirical distribution for
        :func:`wasserstein_1d`).
    """
    if output not in PCA_OUTPUTS:
        raise ValueError(f"image_signature: output must be one of {PCA_OUTPUTS}, got {output!r}")
    image = np.asarray(image)
    channels = image[None] if image.ndim == 3 else image
    if channels.ndim != 4:
        raise ValueError(f"image_signature: image must be [X, Y, Z] or [Cin, X, Y, Z], got shape {image.shape}")
    project = pca_scores if output == "scores" else pca_components
    parts = [project(resize_image(channel, size), variance).ravel() for channel in channels]
    return np.sort(np.concatenate(parts))


@functools.lru_cache(maxsize=4096)
def _merge_pattern(a: int, b: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile breakpoints of two step functions with a and b equal steps on [0, 1).

    Returns the step index of each (iu, iv) and the width of each merged interval.
    """
    points = np.union1d(np.arange(a, dtype=np.int64) * b, np.arange(b, dtype=np.int64) * a)
    ends = np.append(points[1:], a * b)
    return points // b, points // a, (ends - points) / float(a * b)


def wasserstein_1d(u_sorted: np.ndarray, v_sorted: np.ndarray) -> float:
    """1-Wasserstein distance between two empirical distributions of equal-weight values.

    Same value as ``scipy.stats.wasserstein_distance(u, v)``, computed as the
    integral over q in [0, 1] of ``|Q_u(q) - Q_v(q)|`` (quantile functions).
    With ``g = gcd(m, n)``, ``m = g a``, ``n = g b``, the breakpoints of both
    quantile functions repeat with period 1/g, so the integral is a sum over a
    ``(g, a) x (g, b)`` reshape with a small cached (a, b) merge pattern: O(m + n),
    no merge sort of the data (PCA outputs of cube volumes share g >= S*S).

    Args:
        u_sorted, v_sorted: 1-D float arrays sorted ascending, non-empty; lengths may differ.
    """
    m, n = u_sorted.size, v_sorted.size
    if m == 0 or n == 0:
        raise ValueError("wasserstein_1d: both distributions need at least one value")
    if m == n:
        return float(np.mean(np.abs(u_sorted - v_sorted)))
    g = math.gcd(m, n)
    iu, iv, width = _merge_pattern(m // g, n // g)
    u = u_sorted.reshape(g, m // g)[:, iu]
    v = v_sorted.reshape(g, n // g)[:, iv]
    return float(np.abs(u - v).sum(axis=0) @ width / g)


def label_intensity(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class map scaled to [0, 1] (class / (C - 1)), the dynamic range SSIM's C1, C2 assume.

    Args:
        labels: integer ``[...]`` class map with values in ``0..num_classes-1``.
        num_classes: C >= 2 (background included).

    Returns:
        float32 array of the same shape.
    """
    if num_classes < 2:
        raise ValueError(f"label_intensity: num_classes must be >= 2, got {num_classes}")
    return np.asarray(labels, dtype=np.float32) / np.float32(num_classes - 1)


def ssim_from_moments(mean_a: float, mean_b: float, var_a: float, var_b: float, cov_ab: float,
                      c1: float = SSIM_C, c2: float = SSIM_C) -> float:
    """``(2 m1 m2 + C1)(2 s12 + C2) / ((m1^2 + m2^2 + C1)(s1^2 + s2^2 + C2))``."""
    return float((2 * mean_a * mean_b + c1) * (2 * cov_ab + c2)
                 / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2)))


def global_ssim(a: np.ndarray, b: np.ndarray, c1: float = SSIM_C, c2: float = SSIM_C) -> float:
    """Global (single-window) SSIM of two equally shaped arrays, in float64.

    Population moments over all voxels. ``global_ssim(x, x) == 1`` for any x.

    Example:
        >>> x = np.array([0.0, 1.0, 1.0, 0.0])
        >>> round(global_ssim(x, x), 12)
        1.0
    """
    if a.shape != b.shape:
        raise ValueError(f"global_ssim: shapes differ, {a.shape} vs {b.shape}; resize them first")
    a64 = np.asarray(a, dtype=np.float64).ravel()
    b64 = np.asarray(b, dtype=np.float64).ravel()
    mean_a, mean_b = a64.mean(), b64.mean()
    cov = float(np.mean((a64 - mean_a) * (b64 - mean_b)))
    return ssim_from_moments(mean_a, mean_b, float(a64.var()), float(b64.var()), cov, c1, c2)


def _check_volume(volume: np.ndarray, name: str) -> None:
    if not isinstance(volume, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(volume).__name__}")
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"{name} must be a non-empty 3-D volume [X, Y, Z], got shape {volume.shape}")


def _check_size(size: int) -> None:
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size}")


__all__: Sequence[str] = [
    "SSIM_C", "PCA_OUTPUTS", "resize_image", "resize_labels", "pca_components", "pca_scores", "image_signature",
    "wasserstein_1d", "label_intensity", "ssim_from_moments", "global_ssim",
]

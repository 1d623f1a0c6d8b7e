"""Hypothesis strategies for the ops tests: odd sizes, ignored pixels, Z != C."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

IGNORE = -100


@dataclass
class OpsCase:
    logits: np.ndarray  # float32 [N, K, H, W] (any_rank_cases: [N, K, *spatial])
    labels: np.ndarray  # int64 [N, H, W] (any_rank_cases: [N, *spatial])
    num_classes: int


@st.composite
def ops_cases(draw, max_classes: int = 256, logit_classes: str = "source") -> OpsCase:
    """A random batch; ``logit_classes="target"`` gives logits with K = C (for the loss)."""
    n = draw(st.integers(1, 3))
    h = draw(st.integers(1, 19))
    w = draw(st.integers(1, 23))
    big = draw(st.booleans()) and max_classes > 16
    c = draw(st.integers(1, max_classes if big else 6))
    z = c if logit_classes == "target" else draw(st.integers(1, max_classes if big else 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    logits = (rng.normal(size=(n, z, h, w)) * scale).astype(np.float32)
    labels = rng.integers(0, c, size=(n, h, w))
    if draw(st.booleans()):  # some images without foreground
        labels[0] = 0
    ignore_fraction = draw(st.sampled_from([0.0, 0.1, 0.5]))
    labels[rng.random(size=labels.shape) < ignore_fraction] = IGNORE
    if (labels == IGNORE).all():  # keep at least one valid pixel; all-ignored is a bad-input test
        labels.flat[0] = 0
    return OpsCase(logits, labels.astype(np.int64), c)


@st.composite
def any_rank_cases(draw, spatial_rank: int, max_classes: int = 6, logit_classes: str = "source") -> OpsCase:
    """A random batch of ``spatial_rank`` spatial dims: logits ``[N, K, *spatial]``, labels ``[N, *spatial]``.

    Sizes stay small (at most a few hundred voxels per image) so that a 3-D case is as quick as a 2-D one.
    """
    n = draw(st.integers(1, 3))
    limits = {1: (1, 40), 2: (1, 13), 3: (1, 7)}[spatial_rank]
    spatial = tuple(draw(st.integers(*limits)) for _ in range(spatial_rank))
    c = draw(st.integers(1, max_classes))
    z = c if logit_classes == "target" else draw(st.integers(1, max_classes))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 8.0]))
    logits = (rng.normal(size=(n, z, *spatial)) * scale).astype(np.float32)
    labels = rng.integers(0, c, size=(n, *spatial))
    if draw(st.booleans()):  # an image without foreground
        labels[0] = 0
    labels[rng.random(size=labels.shape) < draw(st.sampled_from([0.0, 0.1, 0.5]))] = IGNORE
    if (labels == IGNORE).all():
        labels.flat[0] = 0
    return OpsCase(logits, labels.astype(np.int64), c)


# Memory layouts the NumPy entry points must accept with the same result as a C-contiguous native array.
LAYOUTS = ("c", "fortran", "strided", "reversed", "big-endian", "unaligned")
LABEL_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def with_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """``array``'s values (equal element by element) in another memory layout."""
    array = np.ascontiguousarray(array)
    if layout == "c":
        out = array.copy()
    elif layout == "fortran":
        out = np.asfortranarray(array)
    elif layout == "strided":  # every other element of a twice-as-large buffer along each axis
        big = np.zeros(tuple(2 * s for s in array.shape), array.dtype)
        big[tuple(slice(None, None, 2) for _ in array.shape)] = array
        out = big[tuple(slice(None, None, 2) for _ in array.shape)]
    elif layout == "reversed":  # negative strides
        big = np.ascontiguousarray(array[tuple(slice(None, None, -1) for _ in array.shape)])
        out = big[tuple(slice(None, None, -1) for _ in array.shape)]
    elif layout == "big-endian":
        out = array.astype(array.dtype.newbyteorder(">"))
    elif layout == "unaligned":
        if array.dtype.itemsize == 1:
            out = array.copy()
        else:
            raw = np.zeros(array.nbytes + 1, np.uint8)
            out = raw[1:].view(array.dtype).reshape(array.shape)
            out[...] = array
            assert not out.flags.aligned
    else:
        raise ValueError(layout)
    np.testing.assert_array_equal(out, array)
    return out

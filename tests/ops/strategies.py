"""Hypothesis strategies for the ops tests: odd sizes, ignored pixels, Z != C."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

IGNORE = -100


@dataclass
class OpsCase:
    logits: np.ndarray  # float32 [N, K, H, W]
    labels: np.ndarray  # int64 [N, H, W]
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

"""Synthetic tasks for the selection tests (small volumes, no files)."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest

from trmcore.selection.affinity import TaskVolumes
from trmcore.selection.tasks import SelectionTask


def blob_volume(rng: np.random.Generator, shape, radius: float, contrast: float, noise: float):
    """An ellipsoid 'organ' of given radius (fraction of the field) in a noisy background.

    Returns image float32 [X, Y, Z] and labels int64 [X, Y, Z] (1 inside).
    """
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    centre = rng.uniform(-0.1, 0.1, size=3)
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) < radius ** 2
    image = contrast * inside + noise * rng.standard_normal(shape) + 0.3 * grids[0]
    return image.astype(np.float32), inside.astype(np.int64)


def make_task(name_site: str, channel: str, label: str, radius: float, contrast: float, noise: float,
              n: int = 4, seed: int = 0, shape=(12, 14, 10)) -> TaskVolumes:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        image, lab = blob_volume(rng, shape, radius, contrast, noise)
        images.append(image)
        labels.append(lab)
    return TaskVolumes(SelectionTask(name_site, (channel,), (label,)), images, labels, n_cases=n + seed % 3)


@pytest.fixture
def synthetic_tasks() -> List[TaskVolumes]:
    """Four clearly different tasks; volume shapes differ across tasks (resized, not refused)."""
    return [
        make_task("A", "T1", "CSF", radius=0.3, contrast=2.0, noise=0.1, seed=1),
        make_task("A", "T2", "CSF", radius=0.35, contrast=-1.5, noise=0.3, seed=2, shape=(10, 10, 16)),
        make_task("B", "T1", "GM", radius=0.7, contrast=4.0, noise=0.05, seed=3),
        make_task("B", "T2", "WM", radius=0.55, contrast=0.5, noise=1.0, seed=4, shape=(16, 12, 12)),
    ]


"""Writers for tiny standard-layout datasets used by the data tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import nibabel as nib
import numpy as np


def save_nifti(path: Path, data: np.ndarray, affine: Optional[np.ndarray] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def brain_volume(shape=(12, 10, 6), seed=0) -> np.ndarray:
    """float32 image: positive inside a box 'brain', 0 outside (first/last z slice empty)."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    img[2:-2, 2:-2, 1:-1] = rng.uniform(50, 150, (shape[0] - 4, shape[1] - 4, shape[2] - 2))
    return img


def write_dataset(
    root: Path,
    cases: Dict[str, Dict[str, np.ndarray]],
    channels: Sequence[str] = ("T1", "T2"),
    labels: Optional[Dict[str, object]] = None,
    sites: Optional[Dict[str, str]] = None,
) -> Path:
    """Write a standard-layout dataset; cases[case] = {"T1": img, "T2": img, "label": lab}."""
    labels = labels or {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": labels,
        "file_ending": ".nii.gz",
    }
    if sites:
        meta["sites"] = sites
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    for case, arrays in cases.items():
        for i, name in enumerate(channels):
            if name in arrays:
                save_nifti(root / "imagesTr" / f"{case}_{i:04d}.nii.gz", arrays[name])
        if "label" in arrays:
            save_nifti(root / "labelsTr" / f"{case}.nii.gz", arrays["label"])
    return root


def simple_case(shape=(12, 10, 6), seed=0) -> Dict[str, np.ndarray]:
    """Two channels and a label with CSF/GM/WM voxels inside the brain box."""
    t1 = brain_volume(shape, seed)
    t2 = brain_volume(shape, seed + 100)
    label = np.zeros(shape, np.uint8)
    label[2:-2, 2:-2, 1:-1] = 3
    label[2:5, 2:-2, 1:-1] = 2
    label[2:3, 2:-2, 1:-1] = 1
    return {"T1": t1, "T2": t2, "label": label}

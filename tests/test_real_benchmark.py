"""scripts/real_benchmark.py: the derived dataset of one patient (no overlap, labels by value) and the summary."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "real_benchmark.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _patient(folder: Path) -> Path:
    """A 24 x 20 x 18 'brain' in LAS orientation with one lesion per hemisphere (RAS x: left < 12)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    shape = (24, 20, 18)
    brain = np.zeros(shape, bool)
    brain[2:22, 2:18, 1:17] = True
    lesion = np.zeros(shape, np.uint8)
    lesion[4:8, 6:10, 5:9] = 1     # stored x 4-8 in LAS = RAS right hemisphere
    lesion[16:20, 8:12, 9:13] = 1  # stored x 16-20 = RAS left
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS, as the MNI-registered open MS data
    for name, scale in (("FLAIR", 1.0), ("T1", 2.0), ("T2", 3.0)):
        image = np.where(brain, scale * (1 + rng.random(shape)) + 3 * lesion, 0).astype(np.float32)
        nib.save(nib.Nifti1Image(image, affine), folder / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(lesion, affine), folder / "label.nii.gz")
    return folder


def test_dataset_splits_hemispheres_and_slabs_without_overlap(bench, tmp_path):
    out = bench.prepare_scan_dataset(_patient(tmp_path / "scan"), tmp_path / "data", factor=2, slabs=2, rim=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["abnormal"] == [1, 2] and meta["labels"]["WM"] == [1, 2, 5]
    assert sorted(set(meta["sites"].values())) == ["source", "target"] and len(meta["sites"]) == 4
    lesion_total = 0
    seen = set()
    for case in meta["sites"]:
        label = nib.load(str(out / "labelsTr" / f"{case}.nii.gz"))
        values = np.asarray(label.dataobj)
        assert set(np.unique(values)) <= {0, 1, 2, 3, 4, 5}
        assert label.header.get_zooms()[:2] == (2.0, 2.0)  # in-plane reduced, slices kept at 1 mm
        lesion_total += int((values == 1).sum())
        # World coordinates of every voxel: no voxel belongs to two cases.
        ijk = np.argwhere(values >= 0)
        world = {tuple(np.round(nib.affines.apply_affine(label.affine, ijk), 3)[k]) for k in range(len(ijk))}
        assert not (world & seen)
        seen |= world
    # Two 4 x 4 x 4 mm lesions, block-aligned: 2 x 2 x 4 voxels each at 2 x 2 x 1 mm, all kept.
    assert lesion_total == 32
    # A different setting on the same folder is refused (exit code 2), the same one reused.
    assert bench.prepare_scan_dataset(tmp_path / "scan", tmp_path / "data", 2, 2, 1) == out
    with pytest.raises(SystemExit) as err:
        bench.prepare_scan_dataset(tmp_path / "scan", tmp_path / "data", 2, 3, 1)
    assert err.value.code == 2


def test_missing_file_is_one_line_and_exit_2(bench, tmp_path, capsys):
    folder = _patient(tmp_path / "scan")
    (folder / "T2.nii.gz").unlink()
    with pytest.raises(SystemExit) as err:
        bench.prepare_scan_dataset(folder, tmp_path / "data")
    assert err.value.code == 2 and "T2.nii.gz: missing" in capsys.readouterr().err


def test_summary_counts_collapses_and_means(bench):
    cells = [("s", "t", seed, column, f"{column}{seed}") for seed in (0, 1) for column in ("vanilla", "trm")]
    results = {"vanilla0": {"dice": 0.3}, "vanilla1": {"dice": 0.2}, "trm0": {"dice": 0.01, "risk_warnings": ["x"]},
               "trm1": {"dice": 0.4}}
    rows, table = bench.summarise(cells, results, ["vanilla", "trm"])
    assert [r["dice"] for r in rows] == [0.3, 0.01, 0.2, 0.4]
    assert "| s -> t | 0.250 (0.300 / 0.200) | 0.205 (0.010 / 0.400) |" in table
    assert "| collapses | 0 | 1 |" in table

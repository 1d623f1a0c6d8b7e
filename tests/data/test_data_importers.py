"""iSeg (Analyze) and BraTS/FeTS importers, and the `trm phantom` / `trm import` commands."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.data import import_brats, import_iseg, load_task_volumes, parse_task

from .helpers import brain_volume, save_nifti

SHAPE = (12, 10, 6)


def _iseg_label(seed: int) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:-2, 2:-2, 1:-1] = 250
    label[2:5, 2:-2, 1:-1] = 150
    label[2:3, 2:-2, 1:-1] = 10
    return np.roll(label, seed, axis=1)


def _save_analyze(path, data):
    # iSeg ships [X, Y, Z, 1] Analyze volumes.
    img = nib.AnalyzeImage(data[..., None], np.diag([1.0, 1.0, 1.0, 1.0]))
    nib.save(img, str(path))


def _write_iseg(src, subjects=(1, 2), unlabelled=(11,), label_override=None):
    src.mkdir(parents=True, exist_ok=True)
    for n in (*subjects, *unlabelled):
        _save_analyze(src / f"subject-{n}-T1.hdr", (brain_volume(SHAPE, n) * 10).astype(np.int16))
        _save_analyze(src / f"subject-{n}-T2.hdr", (brain_volume(SHAPE, n + 50) * 10).astype(np.int16))
        if n in subjects:
            label = _iseg_label(n) if label_override is None else label_override
            _save_analyze(src / f"subject-{n}-label.hdr", label)
    return src


def test_import_iseg_keeps_values_and_maps_tasks(tmp_path):
    src = _write_iseg(tmp_path / "iseg")
    dst = import_iseg(src, tmp_path / "out", progress=False)
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "CSF": 10, "GM": 150, "WM": 250}
    assert meta["channel_names"] == {"0": "T1", "1": "T2"} and meta["numTraining"] == 2
    assert sorted(p.name for p in (dst / "imagesTs").iterdir()) == ["subject-11_0000.nii.gz", "subject-11_0001.nii.gz"]
    vols, info = load_task_volumes(dst, parse_task("T2", "CSF"), progress=False)
    assert [v.case_id for v in vols] == ["subject-1", "subject-2"] and info.label_values == [0, 10]
    # Analyze files are LAS: the volumes are brought to RAS; on the stored grid the values are the file's
    np.testing.assert_array_equal(vols[1].label_on_native_grid(), (_iseg_label(2) == 10).astype(np.int64))
    assert vols[0].image.shape == (1, *SHAPE)
    vols, _ = load_task_volumes(dst, parse_task("T1,T2", "CSF,GM,WM"), progress=False)
    np.testing.assert_array_equal(vols[0].label_on_native_grid(), np.searchsorted([0, 10, 150, 250], _iseg_label(1)))


def test_import_iseg_bad_label_value(tmp_path):
    bad = _iseg_label(1)
    bad[5, 5, 3] = 99
    src = _write_iseg(tmp_path / "iseg", subjects=(3,), unlabelled=(), label_override=bad)
    with pytest.raises(ValueError, match=r"case subject-3: label file .*subject-3-label\.hdr holds values \[99\]"):
        import_iseg(src, tmp_path / "out", progress=False)


def test_import_iseg_missing_channel(tmp_path):
    src = _write_iseg(tmp_path / "iseg", subjects=(4,), unlabelled=())
    (src / "subject-4-T2.hdr").unlink()
    with pytest.raises(FileNotFoundError, match=r"case subject-4: channel file .*subject-4-T2\.hdr not found"):
        import_iseg(src, tmp_path / "out", progress=False)


def _write_brats(src, cases=("FeTS_001", "FeTS_002", "FeTS_003"), seg_dtype=np.float32, unlabelled=("FeTS_900",)):
    for i, case in enumerate((*cases, *unlabelled)):
        folder = src / case
        for j, suffix in enumerate(("t1", "t1ce", "t2", "flair")):
            save_nifti(folder / f"{case}_{suffix}.nii.gz", brain_volume(SHAPE, 10 * i + j))
        if case in cases:
            seg = np.zeros(SHAPE, seg_dtype)
            seg[3:9, 3:7, 1:5] = 2
            seg[4:8, 4:6, 2:4] = 4
            seg[5:7, 4:6, 2:3] = 1
            save_nifti(folder / f"{case}_seg.nii.gz", seg)
    return src


def test_import_brats_with_partitions(tmp_path):
    src = _write_brats(tmp_path / "fets")
    csv_path = tmp_path / "partitioning_1.csv"
    csv_path.write_text("Partition_ID,Subject_ID\n1,FeTS_001\n2,FeTS_002\n2,FeTS_003\n1,FeTS_900\n3,FeTS_999\n")
    dst = import_brats(src, tmp_path / "out", partitions=csv_path, progress=False)
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "NCR": 1, "ED": 2, "ET": 4}
    assert meta["channel_names"] == {"0": "T1", "1": "T1CE", "2": "T2", "3": "FLAIR"}
    assert meta["sites"]["FeTS_002"] == "2" and meta["numTraining"] == 3
    assert (dst / "imagesTs" / "FeTS_900_0003.nii.gz").is_file()
    vols, info = load_task_volumes(dst, parse_task("FLAIR", "NCR,ED,ET", site="2"), progress=False)
    assert [v.case_id for v in vols] == ["FeTS_002", "FeTS_003"] and info.num_classes == 4
    assert vols[0].label[5, 4, 2] == 1 and vols[0].label[4, 4, 3] == 3 and vols[0].label[3, 3, 1] == 2
    # The FLAIR channel file is a byte copy of the source.
    assert (dst / "imagesTr" / "FeTS_001_0003.nii.gz").read_bytes() == (src / "FeTS_001" / "FeTS_001_flair.nii.gz").read_bytes()


def test_import_brats_missing_channel_and_partition(tmp_path):
    src = _write_brats(tmp_path / "fets", cases=("B_1",), unlabelled=())
    (src / "B_1" / "B_1_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case B_1: channel FLAIR file .*B_1_flair\.nii\.gz not found"):
        import_brats(src, tmp_path / "out", progress=False)
    src2 = _write_brats(tmp_path / "fets2", cases=("B_2",), unlabelled=())
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("Partition_ID,Subject_ID\n1,B_9\n")
    with pytest.raises(ValueError, match=r"p\.csv has no partition for case\(s\) \['B_2'\]"):
        import_brats(src2, tmp_path / "out2", partitions=csv_path, progress=False)


def test_import_brats_bad_seg(tmp_path):
    src = _write_brats(tmp_path / "fets", cases=("B_3",), unlabelled=())
    seg = np.zeros(SHAPE, np.float32)
    seg[4, 4, 2] = 0.5
    save_nifti(src / "B_3" / "B_3_seg.nii.gz", seg)
    with pytest.raises(ValueError, match=r"case B_3: label file .*B_3_seg\.nii\.gz .*not whole numbers"):
        import_brats(src, tmp_path / "out", progress=False)


def test_cli_phantom_and_import(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", str(out), "--cases", "2", "--num-sites", "2", "--tumour", "--seed", "4"]) == 0
    assert "2 labelled case(s)" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["labels"]["ET"] == 6
    assert main(["phantom", str(out), "--cases", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["phantom", str(out), "--cases", "1", "--shape", "32", "32", "16", "--overwrite"]) == 0
    assert nib.load(str(out / "imagesTr" / "phantom_000_0000.nii.gz")).shape == (32, 32, 16)

    src = _write_iseg(tmp_path / "iseg", subjects=(1,), unlabelled=())
    assert main(["import", "iseg", str(src), str(tmp_path / "iseg_std")]) == 0
    assert (tmp_path / "iseg_std" / "labelsTr" / "subject-1.nii.gz").is_file()
    assert main(["import", "brats", str(tmp_path / "nowhere"), str(tmp_path / "b")]) == 2
    assert "nowhere" in capsys.readouterr().err

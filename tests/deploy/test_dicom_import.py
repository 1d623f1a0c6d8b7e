"""`trm import dicom`: DICOM studies with DICOM-SEG or NIfTI labels into the standard layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from trmcore.cli.main import main  # noqa: E402
from trmcore.data import make_phantom  # noqa: E402
from trmcore.data.dicom import find_series, load_series  # noqa: E402
from trmcore.infer.dicom_seg import build_dicom_seg, write_dicom_seg  # noqa: E402

from .dicom_helpers import PATIENT, oblique_affine, quantize, write_series  # noqa: E402


def test_import_dicom_with_seg_and_unlabelled_study(tmp_path):
    from pydicom.uid import generate_uid

    phantom = make_phantom(tmp_path / "phantom", n_cases=2, sites=1, size=(20, 24, 8), seed=1, progress=False)
    src = tmp_path / "pacs"
    affine = oblique_affine(spacing=(1.2, 1.0, 3.0))
    expected = {}
    for n, case in enumerate(["phantom_000", "phantom_001"]):
        study, frame = generate_uid(), generate_uid()
        uids = []
        for k, name in enumerate(["t1 axial", "t2 axial"]):
            data = nib.load(str(phantom / "imagesTr" / f"{case}_{k:04d}.nii.gz")).get_fdata()
            stored, values = quantize(data, slope=0.05, intercept=0.0)
            uid = generate_uid()
            write_series(src / case / name.split()[0], stored, affine, slope=0.05, intercept=0.0, series_uid=uid,
                         study_uid=study, frame_uid=frame, description=name, series_number=k + 1, seed=k)
            uids.append(uid)
            expected[(uids[0], k)] = values
        if n == 0:  # the first study comes with a DICOM-SEG of its labels; the second has none
            labels = np.asarray(nib.load(str(phantom / "labelsTr" / f"{case}.nii.gz")).dataobj)
            (series,) = [s for s in find_series(src / case) if s.series_uid == uids[0]]
            source = load_series(series)
            seg = build_dicom_seg(source.datasets, labels, ["CSF", "GM", "WM"], None, [("m.onnx", "0" * 64)])
            write_dicom_seg(src / case / "seg.dcm", seg, overwrite=False)
            labelled, expected_labels = uids[0], labels
        else:
            unlabelled = uids[0]
    dst = tmp_path / "dataset"
    assert main(["import", "dicom", str(src), str(dst), "--series", "T1=*t1*", "--series", "T2=*t2*", "-q"]) == 0
    meta = json.loads((dst / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"background": 0, "CSF": 1, "GM": 2, "WM": 3} and meta["numTraining"] == 1
    label = nib.load(str(dst / "labelsTr" / f"{labelled}.nii.gz"))
    np.testing.assert_array_equal(np.asarray(label.dataobj), expected_labels)
    np.testing.assert_allclose(label.affine, affine, atol=1e-4)
    for k in (0, 1):
        image = nib.load(str(dst / "imagesTr" / f"{labelled}_{k:04d}.nii.gz"))
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), expected[(labelled, k)])
        assert (dst / "imagesTs" / f"{unlabelled}_{k:04d}.nii.gz").is_file()
    cases = json.loads((dst / "cases.json").read_text())
    assert cases[labelled]["labels"] == "DICOM-SEG" and cases[unlabelled]["labels"] is None
    written = b"".join(p.read_bytes() for p in dst.rglob("*.json"))
    for value in PATIENT.values():  # no patient identifier leaves with the dataset records
        if len(value) > 2:
            assert value.encode() not in written, value
    # the imported dataset loads as a task
    from trmcore.data import load_task_volumes, parse_task

    volumes, info = load_task_volumes(dst, parse_task("T1,T2", "CSF,GM"), progress=False)
    assert [v.case_id for v in volumes] == [labelled]


def test_import_dicom_nifti_labels_need_names(tmp_path):
    stored, _ = quantize(np.random.default_rng(0).normal(50, 10, (8, 7, 4)))
    affine = oblique_affine()
    write_series(tmp_path / "src", stored, affine, series_uid="1.2.3.9")
    labels = tmp_path / "labels"
    labels.mkdir()
    data = np.zeros((8, 7, 4), np.uint8)
    data[2:5, 2:5, 1:3] = 4
    nib.save(nib.Nifti1Image(data, affine), str(labels / "1.2.3.9.nii.gz"))
    assert main(["import", "dicom", str(tmp_path / "src"), str(tmp_path / "a"), "--labels", str(labels), "-q"]) == 2
    assert main(["import", "dicom", str(tmp_path / "src"), str(tmp_path / "b"), "--labels", str(labels),
                 "--label-names", "lesion=4", "-q"]) == 0
    meta = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"} and meta["labels"] == {"background": 0, "lesion": 4}
    np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "b" / "labelsTr" / "1.2.3.9.nii.gz")).dataobj),
                                  data)

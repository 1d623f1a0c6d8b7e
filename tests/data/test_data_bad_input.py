"""Each kind of bad input gives an error that names the case and the file."""

from __future__ import annotations

import numpy as np
import pytest

from trmcore.data import load_task_volumes, parse_task

from .helpers import save_nifti, simple_case, write_dataset


def _load(root, channel="T1", labels="CSF", site=None):
    return load_task_volumes(root, parse_task(channel, labels, site), progress=False)


def test_missing_channel_file(tmp_path):
    case = simple_case()
    del case["T2"]
    root = write_dataset(tmp_path / "ds", {"good": simple_case(), "bad": case})
    _load(root, "T1")  # T1 alone is complete
    with pytest.raises(FileNotFoundError, match=r"case bad: channel T2 file .*bad_0001\.nii\.gz not found"):
        _load(root, "T1,T2")


def test_missing_label_file(tmp_path):
    case = simple_case()
    del case["label"]
    root = write_dataset(tmp_path / "ds", {"nolab": case})
    with pytest.raises(FileNotFoundError, match=r"case nolab: label file .*labelsTr/nolab\.nii\.gz not found"):
        _load(root)
    vols, _ = load_task_volumes(root, parse_task("T1", ""), progress=False)  # image-only task
    assert vols[0].label is None


def test_image_label_shape_mismatch(tmp_path):
    case = simple_case()
    case["label"] = case["label"][:-1]
    root = write_dataset(tmp_path / "ds", {"c7": case})
    with pytest.raises(ValueError, match=r"case c7: label file .*c7\.nii\.gz has shape \(11, 10, 6\) but .*c7_0000"):
        _load(root)


def test_channel_shape_mismatch(tmp_path):
    case = simple_case()
    case["T2"] = case["T2"][:, :-1]
    root = write_dataset(tmp_path / "ds", {"c8": case})
    with pytest.raises(ValueError, match=r"case c8: channel file .*c8_0001\.nii\.gz has shape"):
        _load(root, "T1,T2")


def test_affine_mismatch(tmp_path):
    case = simple_case()
    root = write_dataset(tmp_path / "ds", {"c9": case})
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    save_nifti(root / "labelsTr" / "c9.nii.gz", case["label"], shifted)
    with pytest.raises(ValueError, match=r"case c9: label file .*c9\.nii\.gz has a different affine"):
        _load(root)


def test_non_whole_labels(tmp_path):
    case = simple_case()
    case["label"] = case["label"].astype(np.float32)
    case["label"][3, 3, 3] = 1.5
    case["label"][3, 3, 4] = 1.002  # more than 1e-3 from a whole number
    root = write_dataset(tmp_path / "ds", {"frac": case})
    with pytest.raises(ValueError, match=r"case frac: label file .*frac\.nii\.gz .*not whole numbers.*e\.g\. \[1\.00"):
        _load(root)


def test_labels_within_1e3_of_whole_numbers_are_rounded(tmp_path):
    """Float labels saved with scaling read back as 1.00000006 or 0.9995: they are those labels."""
    case = simple_case()
    expected = (case["label"] == 1).astype(np.int64)
    noisy = case["label"].astype(np.float32)
    noisy[noisy == 1] = np.float32(1.00000006)
    noisy[0, 0, 0] = -0.0009
    noisy[2, 2, 1] = np.float32(0.9995)
    case["label"] = noisy
    root = write_dataset(tmp_path / "ds", {"scaled": case})
    vols, _ = _load(root)
    np.testing.assert_array_equal(vols[0].label, expected)


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    case = simple_case()
    expected = (case["label"] == 1).astype(np.int64)
    case["label"] = case["label"].astype(np.float64)
    root = write_dataset(tmp_path / "ds", {"flt": case})
    vols, _ = _load(root)
    np.testing.assert_array_equal(vols[0].label, expected)


def test_undeclared_label_value(tmp_path):
    case = simple_case()
    case["label"][4, 4, 2] = 7
    root = write_dataset(tmp_path / "ds", {"odd": case})
    with pytest.raises(ValueError, match=r"case odd: label file .*odd\.nii\.gz holds values \[7\] .*not declare"):
        _load(root)


def test_4d_image_file(tmp_path):
    case = simple_case()
    case["T1"] = np.stack([case["T1"], case["T1"]], axis=-1)
    root = write_dataset(tmp_path / "ds", {"four": case})
    with pytest.raises(ValueError, match=r"case four: channel T1 file .*four_0000\.nii\.gz has shape \(12, 10, 6, 2\).*4D"):
        _load(root)


def test_trailing_singleton_axis_is_one_volume(tmp_path):
    case = simple_case()
    case["T1"] = case["T1"][..., None]
    root = write_dataset(tmp_path / "ds", {"single": case})
    vols, _ = _load(root)
    assert vols[0].image.shape == (1, 12, 10, 6)


def test_nan_image(tmp_path):
    case = simple_case()
    case["T1"][5, 5, 3] = np.nan
    root = write_dataset(tmp_path / "ds", {"nanc": case})
    with pytest.raises(ValueError, match=r"case nanc: channel T1 file .*nanc_0000\.nii\.gz holds NaN"):
        _load(root)


def test_empty_task_site(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": simple_case()}, sites={"a": "north"})
    with pytest.raises(ValueError, match=r"no case has site 'south' \(sites present: north\)"):
        _load(root, site="south")
    root2 = write_dataset(tmp_path / "ds2", {"a": simple_case()})
    with pytest.raises(ValueError, match="declares no sites"):
        _load(root2, site="north")


def test_empty_task_label(tmp_path):
    case = simple_case()
    case["label"][case["label"] == 1] = 3
    root = write_dataset(tmp_path / "ds", {"nocsf": case})
    with pytest.raises(ValueError, match=r"label\(s\) \['CSF'\] have no voxel in any of the 1 case\(s\) \(nocsf\)"):
        _load(root)


def test_unknown_case_requested(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": simple_case()})
    with pytest.raises(FileNotFoundError, match="zzz"):
        load_task_volumes(root, parse_task("T1", "CSF"), cases=["zzz"], progress=False)

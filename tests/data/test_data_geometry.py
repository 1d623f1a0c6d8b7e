"""Real-scan conventions: orientation, spacing, constant backgrounds, scaled and ignore labels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as ornt

from trmcore.data import load_task_volumes, parse_task
from trmcore.data.geometry import Geometry, GeometryWarning, native_geometry, plan_grid, recorded_geometry
from trmcore.data.preprocess import background_value, foreground_mask, normalize, zscore_foreground
from trmcore.data.tasks import IGNORE_INDEX

from .helpers import save_nifti, simple_case, write_dataset


def _stored_as(data: np.ndarray, affine: np.ndarray, codes: str):
    """``data`` (RAS, ``affine``) stored with voxel axes ``codes``: same world content."""
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(codes)))
    return ornt.apply_orientation(data, transform), affine @ ornt.inv_ornt_aff(transform, data.shape)


# -- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codes", ["LAS", "PIR", "ASR", "LPI"])
def test_reorientation_is_exact_and_inverts(codes):
    rng = np.random.default_rng(0)
    data = rng.random((5, 6, 7)).astype(np.float32)
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-3.0, 4.0, 10.0]
    stored, stored_affine = _stored_as(data, affine, codes)
    grid = plan_grid(stored.shape, stored_affine, Geometry("RAS", (1.5, 1.0, 2.0)))
    assert grid.reoriented and not grid.resampled
    np.testing.assert_array_equal(grid.to_working(stored), data)
    np.testing.assert_allclose(grid.working_affine, affine, atol=1e-9)
    np.testing.assert_array_equal(grid.to_native(grid.to_working(stored)), stored)
    # channels in front are carried along
    two = np.stack([stored, 2 * stored])
    np.testing.assert_array_equal(grid.to_working(two)[1], 2 * data)


def test_inplane_resampling_keeps_field_of_view_and_never_touches_the_slice_axis():
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    grid = plan_grid((10, 8, 4), affine, Geometry("RAS", (1.0, 1.0, 1.0), axis=2))
    assert grid.working_shape == (20, 16, 4)  # z keeps 5 mm: a 2D model never resamples across slices
    np.testing.assert_allclose(grid.working_spacing, (1.0, 1.0, 5.0))
    # the first working voxel centre lies half a new voxel inside the old first voxel's edge
    np.testing.assert_allclose(grid.working_affine[:3, 3], [-0.5, -0.5, 0.0])
    # within tolerance (5 %): not resampled
    assert not plan_grid((10, 8, 4), np.diag([1.03, 0.97, 5.0, 1.0]), Geometry("RAS", (1.0, 1.0, 1.0))).resampled
    # a linear ramp is reproduced exactly inside (linear interpolation of a linear function)
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[:, None, None], (10, 8, 4))
    fine = grid.to_working(ramp)
    np.testing.assert_allclose(fine[2:-2, 0, 0], (np.arange(2, 18) + 0.5) / 2 - 0.5, atol=1e-6)
    # labels through one-hot shares: a coarse -> fine -> coarse round trip is exact
    labels = np.random.default_rng(1).integers(0, 4, (10, 8, 4))
    np.testing.assert_array_equal(grid.to_native(grid.to_working(labels, "label"), "label"), labels)


def test_constant_background_stays_constant_after_resampling():
    vol = np.full((9, 7, 3), -3.6, np.float32)
    vol[3:6, 2:5] = 1.0
    grid = plan_grid(vol.shape, np.diag([1.0, 1.0, 1.0, 1.0]), Geometry("RAS", (0.6, 0.6, 1.0)))
    fine = grid.to_working(vol)
    assert background_value(fine) == pytest.approx(-3.6)
    assert (fine[:2] == np.float32(-3.6)).all()


def test_geometry_validation_and_old_records_warn():
    with pytest.raises(ValueError, match="three axis codes"):
        Geometry("RAR")
    with pytest.raises(ValueError, match="spacing"):
        Geometry("RAS", (1.0, 0.0, 1.0))
    with pytest.warns(GeometryWarning, match="does not record the orientation"):
        assert recorded_geometry(None, None, 2, "run old").native
    assert recorded_geometry("RAS", [1, 1, 1], 2, "run", resample=False).native  # --no-resample: as stored


# -- intensities ------------------------------------------------------------------------------


def _brain(shape=(12, 10, 6), seed=0):
    rng = np.random.default_rng(seed)
    tissue = np.zeros(shape, bool)
    tissue[2:-2, 2:-2, 1:-1] = True
    values = rng.uniform(50, 150, shape).astype(np.float32)
    return tissue, values


@pytest.mark.parametrize("background", [0.0, -3.6, 17.0])
def test_foreground_mask_zero_or_constant_background(background):
    tissue, values = _brain()
    vol = np.where(tissue, values, background).astype(np.float32)
    np.testing.assert_array_equal(foreground_mask(vol), tissue)
    z = zscore_foreground(vol)
    assert (z[~tissue] == 0).all()
    assert abs(float(z[tissue].mean())) < 1e-5 and abs(float(z[tissue].std()) - 1) < 1e-4
    # the same tissue z-scores the same whatever the background
    np.testing.assert_allclose(z, zscore_foreground(np.where(tissue, values, 0)), atol=1e-5)


def test_foreground_mask_brats_style_prenormalised_volume():
    """BraTS "subtrMeanDivStd": tissue already z-scored (negative values too), background about -3.6."""
    tissue, values = _brain()
    z = (values - values[tissue].mean()) / values[tissue].std()
    vol = np.where(tissue, z, np.float32(-3.6)).astype(np.float32)
    np.testing.assert_array_equal(foreground_mask(vol), tissue)
    # and z-scored data with a zero background (negative tissue values) is not misread as min-background
    vol0 = np.where(tissue, z, 0).astype(np.float32)
    np.testing.assert_array_equal(foreground_mask(vol0), tissue)
    # with the old rule the -3.6 background would count as tissue and no slice would be empty
    assert (normalize(vol, "zscore-nonzero")[~tissue] != 0).all()
    assert (normalize(vol, "zscore-foreground")[:, :, 0] == 0).all()


def test_scl_inter_background_is_found_through_the_loader(tmp_path):
    """A file with scl_inter: stored 0 reads as the offset; the normalised volume still has empty slices."""
    case = simple_case()
    ds = write_dataset(tmp_path / "ds", {"plain": case})
    offset = tmp_path / "ds" / "imagesTr" / "plain_0000.nii.gz"
    image = nib.Nifti1Image(np.round(case["T1"]).astype(np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, -1000.0)
    nib.save(image, str(offset))
    assert float(np.asarray(nib.load(str(offset)).dataobj).min()) == -1000.0
    vols, _ = load_task_volumes(ds, parse_task("T1", "CSF"), progress=False)
    img = vols[0].image[0]
    tissue = case["T1"] != 0
    assert (img[~tissue] == 0).all() and (img[:, :, 0] == 0).all()
    assert abs(float(img[tissue].mean())) < 1e-5


# -- labels -------------------------------------------------------------------------------------


def test_ignore_label_maps_to_ignore_index_never_background(tmp_path):
    case = simple_case()
    case["label"][2:4, 2:4, 1:3] = 9
    ds = write_dataset(tmp_path / "ds", {"c": case},
                       labels={"background": 0, "CSF": 1, "GM": 2, "WM": 3, "ignore": 9})
    vols, info = load_task_volumes(ds, parse_task("T1", "CSF,GM"), progress=False)
    label = vols[0].label
    assert info.ignore_value == 9
    assert (label[2:4, 2:4, 1:3] == IGNORE_INDEX).all()
    assert (label[case["label"] == 3] == 0).all()  # WM, not in the task: background
    assert set(np.unique(label)) == {IGNORE_INDEX, 0, 1, 2}
    with pytest.raises(ValueError, match="unannotated"):
        load_task_volumes(ds, parse_task("T1", "ignore"), progress=False)


# -- the loader's geometry --------------------------------------------------------------------


def test_loader_brings_any_storage_to_the_same_working_volume(tmp_path):
    case = simple_case()
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    cases = {}
    for codes in ("RAS", "PIR", "LAS"):
        stored = {}
        for key, data in case.items():
            stored[key], stored_affine = _stored_as(data, affine, codes)
        cases[codes] = (stored, stored_affine)
    root = tmp_path / "ds"
    write_dataset(root, {codes: arrays for codes, (arrays, _) in cases.items()})
    for codes, (arrays, stored_affine) in cases.items():  # rewrite with the right affines
        for i, name in enumerate(("T1", "T2")):
            save_nifti(root / "imagesTr" / f"{codes}_{i:04d}.nii.gz", arrays[name], stored_affine)
        save_nifti(root / "labelsTr" / f"{codes}.nii.gz", arrays["label"], stored_affine)
    vols, info = load_task_volumes(root, parse_task("T1,T2", "CSF,GM"), progress=False)
    assert info.geometry.orientation == "RAS" and info.geometry.spacing == (1.0, 1.0, 2.0)
    by_case = {v.case_id: v for v in vols}
    for codes in ("PIR", "LAS"):
        np.testing.assert_array_equal(by_case[codes].image, by_case["RAS"].image)
        np.testing.assert_array_equal(by_case[codes].label, by_case["RAS"].label)
        np.testing.assert_array_equal(by_case[codes].label_on_native_grid(),
                                      parse_labels(cases[codes][0]["label"]))
    # as stored (--no-resample): today's behaviour
    native, _ = load_task_volumes(root, parse_task("T1", "CSF"), progress=False, geometry=native_geometry())
    assert {v.case_id: v.image.shape[1:] for v in native}["PIR"] == cases["PIR"][0]["T1"].shape


def parse_labels(raw):
    out = np.zeros(raw.shape, np.int64)
    out[raw == 1], out[raw == 2] = 1, 2
    return out


def test_loader_resamples_to_the_median_spacing_and_keeps_the_native_label(tmp_path):
    fine, coarse = simple_case((16, 12, 4)), simple_case((8, 6, 4), seed=3)
    root = write_dataset(tmp_path / "ds", {"a": fine, "b": fine, "c": coarse})
    for name, index in (("T1", 0), ("T2", 1)):
        save_nifti(root / "imagesTr" / f"c_{index:04d}.nii.gz", coarse[name], np.diag([2.0, 2.0, 1.0, 1.0]))
    save_nifti(root / "labelsTr" / "c.nii.gz", coarse["label"], np.diag([2.0, 2.0, 1.0, 1.0]))
    vols, info = load_task_volumes(root, parse_task("T1", "CSF,GM,WM"), progress=False)
    assert info.geometry.spacing == (1.0, 1.0, 1.0)  # median of 1, 1, 2 mm
    c = {v.case_id: v for v in vols}["c"]
    assert c.image.shape == (1, 16, 12, 4) and c.grid.resampled
    np.testing.assert_allclose(c.affine[:3, :3], np.eye(3))
    np.testing.assert_array_equal(c.label_on_native_grid(), coarse["label"].astype(np.int64))
    assert (c.image[0][:, :, 0] == 0).all()  # background slices stay empty after resampling

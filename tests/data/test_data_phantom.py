"""The phantom: deterministic, contrasts ordered like real sequences, sites that differ."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest

from trmcore.data import SITE_PROFILES, generate_case, load_task_volumes, make_phantom, parse_task, volumes_to_slices
from trmcore.data.preprocess import zscore_nonzero


def _interior(mask: np.ndarray) -> np.ndarray:
    """Voxels whose 6 neighbours share the mask (away from partial-volume edges)."""
    inner = mask.copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(mask, shift, axis=axis)
    return inner


def _core(mask: np.ndarray) -> np.ndarray:
    """The interior of a region, or the region itself when it is too thin to have one."""
    inner = _interior(mask)
    return inner if inner.sum() >= 5 else mask


def test_phantom_layout_and_sites(phantom_root):
    meta = json.loads((phantom_root / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert meta["labels"] == {"background": 0, "CSF": 1, "GM": 2, "WM": 3, "NCR": 4, "ED": 5, "ET": 6}
    assert meta["sites"] == {f"phantom_{i:03d}": f"site-{'ABC'[i % 3]}" for i in range(6)}
    img = nib.load(str(phantom_root / "imagesTr" / "phantom_000_0000.nii.gz"))
    assert img.shape == (48, 48, 24) and img.get_data_dtype() == np.float32
    lab = np.asanyarray(nib.load(str(phantom_root / "labelsTr" / "phantom_000.nii.gz")).dataobj)
    assert set(np.unique(lab)) <= set(range(7)) and {1, 2, 3} <= set(np.unique(lab))


def test_phantom_is_deterministic(tmp_path):
    a = make_phantom(tmp_path / "a", n_cases=2, sites=2, tumour=True, seed=11)
    b = make_phantom(tmp_path / "b", n_cases=2, sites=2, tumour=True, seed=11)
    c = make_phantom(tmp_path / "c", n_cases=2, sites=2, tumour=True, seed=12)
    for name in ["imagesTr/phantom_001_0002.nii.gz", "labelsTr/phantom_001.nii.gz"]:
        da, db, dc = (np.asanyarray(nib.load(str(r / name)).dataobj) for r in (a, b, c))
        np.testing.assert_array_equal(da, db)
        assert not np.array_equal(da, dc)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_phantom(a, n_cases=1)
    make_phantom(a, n_cases=1, overwrite=True)
    assert len(list((a / "labelsTr").iterdir())) == 1


@pytest.mark.parametrize("seed", [5, 6])
@pytest.mark.parametrize("site", SITE_PROFILES, ids=lambda p: p.name)
def test_contrasts_order_like_real_sequences(site, seed):
    # A strong bias field can make one region of a tissue brighter than another
    # tissue elsewhere (as on real scanners), so the tissue model is checked
    # with each site's noise, blur, contrast and gamma but without its bias.
    site = dataclasses.replace(site, bias=0.0, bias_gradient=0.0)
    case = generate_case((48, 48, 24), site, seed=seed, index=seed, tumour=True)
    assert np.all(case.images[:, case.label == 0] == 0) and np.all(case.images[:, case.label > 0] > 0)
    mean = {}
    for c, channel in enumerate(("T1", "T2", "FLAIR")):
        z = zscore_nonzero(case.images[c])
        mean[channel] = {k: z[_core(case.label == v)].mean() for k, v in
                         {"CSF": 1, "GM": 2, "WM": 3, "NCR": 4, "ED": 5, "ET": 6}.items()}
    t1, t2, flair = mean["T1"], mean["T2"], mean["FLAIR"]
    assert t1["WM"] > t1["GM"] > t1["CSF"]
    assert t2["CSF"] > t2["GM"] > t2["WM"]  # T2 inverts WM/CSF
    assert flair["GM"] > flair["WM"] > flair["CSF"]  # FLAIR nulls CSF
    assert flair["ED"] > flair["GM"] and flair["ET"] > flair["WM"]  # lesions bright on FLAIR
    assert t2["ED"] > t2["WM"] and t1["NCR"] < t1["WM"]


def test_tumour_is_nested_like_brats():
    for index in range(3):
        label = generate_case((48, 48, 24), SITE_PROFILES[0], seed=1, index=index, tumour=True).label
        ncr = label == 4
        assert ncr.any() and (label == 6).any() and (label == 5).any()
        touching = np.zeros_like(ncr)
        for axis in range(3):
            for shift in (1, -1):
                touching |= np.roll(ncr, shift, axis=axis)
        # The necrotic core is wrapped in tumour: no healthy tissue next to it.
        assert set(np.unique(label[touching & ~ncr])) <= {4, 5, 6}
        coords = np.argwhere(label >= 4)
        centre = coords.mean(axis=0)
        radius = {v: np.linalg.norm(np.argwhere(label == v) - centre, axis=1).mean() for v in (4, 6, 5)}
        assert radius[4] < radius[6] < radius[5]  # NCR core, ET rim, ED around


def test_sites_change_the_image_not_the_anatomy():
    a = generate_case((48, 48, 24), SITE_PROFILES[0], seed=2, index=0)
    b = generate_case((48, 48, 24), SITE_PROFILES[1], seed=2, index=0)
    np.testing.assert_array_equal(a.label, b.label)
    za, zb = zscore_nonzero(a.images[0]), zscore_nonzero(b.images[0])
    brain = a.label > 0
    assert np.corrcoef(za[brain], zb[brain])[0, 1] < 0.9
    # Within-tissue spread (bias + noise) is much larger at the strong-bias site.
    wm = _interior(a.label == 3)
    assert zb[wm].std() > 2 * za[wm].std()


def test_phantom_volumes_have_empty_slices_and_load_as_tasks(phantom_root):
    vols, info = load_task_volumes(phantom_root, parse_task("T2", "CSF", site="site-B"), progress=False)
    assert [v.case_id for v in vols] == ["phantom_001", "phantom_004"] and info.num_classes == 2
    full = volumes_to_slices(vols, axis=2, divisor=16)
    kept = volumes_to_slices(vols, axis=2, divisor=16, skip_empty=True)
    assert 0 < len(kept) < len(full) and full.images.shape[2:] == (48, 48)


def test_bad_phantom_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_phantom(tmp_path / "x", size=(48, 48))
    with pytest.raises(ValueError, match="unknown phantom site"):
        make_phantom(tmp_path / "x", sites=["site-Z"])
    with pytest.raises(ValueError, match="sites must be"):
        make_phantom(tmp_path / "x", sites=9)
    with pytest.raises(ValueError, match="tumour"):
        make_phantom(tmp_path / "x", tumour=2.0)

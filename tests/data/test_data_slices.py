"""Z-score, padding, slicing round trips, few-shot subsets and case splits."""

from __future__ import annotations

import numpy as np
import pytest

from trmcore.data import (
    Volume,
    few_shot,
    pad_to_multiple,
    slices_to_volume,
    split_cases,
    unpad,
    volumes_to_slices,
    zscore_nonzero,
)


def _volume(case, shape=(13, 10, 7), channels=2, seed=0, site=None):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(channels, *shape)).astype(np.float32)
    image[:, :, :, 0] = 0  # one empty slice along axis 2
    label = rng.integers(0, 3, size=shape).astype(np.int64)
    return Volume(case, site, image, label, np.eye(4))


def test_zscore_nonzero_keeps_background_zero():
    vol = np.zeros((6, 6, 4), np.float32)
    vol[1:5, 1:5, 1:3] = np.arange(32, dtype=np.float32).reshape(4, 4, 2) + 100
    z = zscore_nonzero(vol)
    mask = vol != 0
    assert z.dtype == np.float32
    assert np.all(z[~mask] == 0)
    assert abs(z[mask].mean()) < 1e-5 and abs(z[mask].std() - 1) < 1e-4
    assert np.all(zscore_nonzero(np.zeros((3, 3))) == 0)
    assert np.all(np.isfinite(zscore_nonzero(np.full((3, 3), 5.0))))
    with pytest.raises(ValueError, match="NaN"):
        zscore_nonzero(np.array([1.0, np.nan]))


@pytest.mark.parametrize("shape", [(3, 30, 17), (16, 16), (1, 2, 1, 33)])
@pytest.mark.parametrize("divisor", [1, 8, 16])
def test_pad_unpad_round_trip(shape, divisor):
    arr = np.random.default_rng(0).normal(size=shape)
    padded, pad = pad_to_multiple(arr, divisor)
    assert padded.shape[-2] % divisor == 0 and padded.shape[-1] % divisor == 0
    assert padded.shape[-2] - shape[-2] < divisor and padded.shape[-1] - shape[-1] < divisor
    np.testing.assert_array_equal(unpad(padded, pad), arr)
    assert padded.sum() == pytest.approx(arr.sum())
    with pytest.raises(ValueError, match="divisor"):
        pad_to_multiple(arr, 0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_round_trip_every_axis(axis):
    vols = [_volume("a", seed=1), _volume("b", seed=2)]
    s = volumes_to_slices(vols, axis=axis, divisor=8)
    assert s.images.dtype == np.float32 and s.labels.dtype == np.int64
    assert s.images.shape[2] % 8 == 0 and s.images.shape[3] % 8 == 0
    assert len(s) == 2 * vols[0].image.shape[axis + 1]
    for v, vol in enumerate(vols):
        rows = np.flatnonzero(s.volume_index == v)
        np.testing.assert_array_equal(s.slice_index[rows], np.arange(vol.image.shape[axis + 1]))
        back_label = slices_to_volume(s.labels[rows], s.pad, axis, vol.shape)
        np.testing.assert_array_equal(back_label, vol.label)
        back_image = slices_to_volume(s.images[rows], s.pad, axis, vol.shape)
        np.testing.assert_array_equal(back_image, vol.image)
    # Padding pixels are background / zero.
    (h0, h1), (w0, w1) = s.pad
    if h0:
        assert np.all(s.labels[:, :h0] == 0) and np.all(s.images[:, :, :h0] == 0)


def test_skip_empty_drops_all_zero_slices():
    vol = _volume("a")
    s = volumes_to_slices([vol], axis=2, divisor=4, skip_empty=True)
    assert 0 not in s.slice_index.tolist() and len(s) == vol.shape[2] - 1
    assert len(volumes_to_slices([vol], axis=2, divisor=4)) == vol.shape[2]


def test_different_inplane_shapes_get_per_volume_pads():
    a, b = _volume("a", shape=(13, 10, 5)), _volume("b", shape=(9, 12, 5))
    s = volumes_to_slices([a, b], axis=2, divisor=8)
    assert s.pad is None and s.images.shape[2:] == (16, 16)
    rows = np.flatnonzero(s.volume_index == 1)
    np.testing.assert_array_equal(slices_to_volume(s.labels[rows], s.pads[1], 2, b.shape), b.label)


def test_slices_to_volume_rejects_wrong_count():
    s = volumes_to_slices([_volume("a")], axis=2, divisor=8)
    with pytest.raises(ValueError, match="slices"):
        slices_to_volume(s.labels[:-1], s.pad, 2, (13, 10, 7))


def test_few_shot_is_seeded_nested_and_checked():
    s = volumes_to_slices([_volume(c, seed=i) for i, c in enumerate("abc")], axis=2, divisor=8)
    one, two = few_shot(s, 5, seed=4), few_shot(s, 5, seed=4)
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.volume_index, two.volume_index)
    other = few_shot(s, 5, seed=5)
    key = lambda x: set(zip(x.volume_index.tolist(), x.slice_index.tolist()))  # noqa: E731
    assert key(one) != key(other)
    assert key(one) <= key(few_shot(s, 10, seed=4))
    assert len(one) == 5 and one.labels.shape[0] == 5
    with pytest.raises(ValueError, match="only 21"):
        few_shot(s, 50)
    with pytest.raises(ValueError, match="positive"):
        few_shot(s, 0)


def test_split_by_case_has_no_overlap_and_is_deterministic():
    vols = [_volume(f"case{i}", shape=(4, 4, 2), seed=i) for i in range(10)]
    train, val = split_cases(vols, val_fraction=0.3, seed=1)
    train_ids, val_ids = {v.case_id for v in train}, {v.case_id for v in val}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 10 and len(val_ids) == 3
    again = split_cases(list(reversed(vols)), val_fraction=0.3, seed=1)[1]
    assert {v.case_id for v in again} == val_ids
    assert {v.case_id for v in split_cases(vols, 0.3, seed=2)[1]} != val_ids
    assert split_cases(vols[:2], val_fraction=0.01)[1] != []  # at least one validation case
    assert len(split_cases(vols[:1], val_fraction=0.5)[0]) == 1  # never an empty training set
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(vols, val_fraction=1.0)


def test_data_package_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import would now fail
        "import trmcore.data, trmcore.data.preprocess, trmcore.cli.data\n"
        "from trmcore.data import make_phantom, load_task_volumes, parse_task\n"
        "import tempfile, pathlib\n"
        "root = make_phantom(pathlib.Path(tempfile.mkdtemp()) / 'p', n_cases=1, sites=1, size=(16, 16, 8))\n"
        "load_task_volumes(root, parse_task('T1', 'WM'), progress=False)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""Counts, volumes, HD95, surface distance and lesion-wise detection (trmcore.data.metrics), by value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trmcore.data import metrics
from trmcore.data.metrics import (class_metrics, distance_to_numpy, hd95_and_msd, label_components_numpy,
                                  lesion_detection, pooled, surface, volume_metrics)


def _line(n, lo, hi):
    mask = np.zeros((1, 1, n), bool)
    mask[0, 0, lo:hi + 1] = True
    return mask


def test_hd95_and_msd_by_hand():
    # one row of voxels along z, spacing 2 mm: every voxel is a surface voxel (the border is outside)
    reference, prediction = _line(10, 0, 3), _line(10, 2, 7)
    # prediction -> reference: z=2,3: 0; z=4..7: 2, 4, 6, 8 mm. reference -> prediction: z=0: 4, z=1: 2, z=2,3: 0
    # all ten: 0 0 0 0 2 2 4 4 6 8 -> 95th percentile (linear) at 8.55: 6 + 0.55 * 2 = 7.1; mean 26 / 10
    hd95, msd = hd95_and_msd(prediction, reference, (1.0, 1.0, 2.0))
    assert hd95 == pytest.approx(7.1)
    assert msd == pytest.approx(2.6)


def test_empty_conventions():
    empty, some = np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)
    some[1, 1, 1] = True
    assert all(math.isnan(v) for v in hd95_and_msd(empty, empty, (1, 1, 1)))
    assert hd95_and_msd(some, empty, (1, 1, 1)) == (math.inf, math.inf)  # predicted, absent from the reference
    assert hd95_and_msd(empty, some, (1, 1, 1)) == (math.inf, math.inf)  # missed entirely
    assert hd95_and_msd(some, some, (1, 1, 1)) == (0.0, 0.0)
    record = class_metrics(empty, some, (1, 1, 1))
    assert (record.tp, record.fp, record.fn) == (0, 0, 1)
    assert record.lesion_sensitivity == 0.0 and math.isnan(record.lesion_precision) and record.lesion_f1 == 0.0


def test_surface_is_the_boundary_shell():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    shell = surface(mask)
    assert shell.sum() == 27 - 1 and not shell[2, 2, 2]
    full = np.ones((3, 3, 3), bool)
    assert surface(full).sum() == 26  # the array's border counts as outside


def test_lesion_detection_by_hand():
    reference = np.zeros((20, 20, 4), bool)
    reference[1:3, 1:3, 1] = True  # lesion A, found
    reference[10:12, 10:12, 2] = True  # lesion B, missed
    reference[15, 2, 0] = True  # lesion C, missed
    prediction = np.zeros_like(reference)
    prediction[2, 2, 1] = True  # touches A
    prediction[5:8, 15:18, 0:4] = True  # false positive 1
    prediction[18, 18, 3] = True  # false positive 2
    found = lesion_detection(prediction, reference)
    assert (found["lesions_ref"], found["lesions_pred"], found["lesions_detected"], found["lesions_true_pred"]) == \
        (3, 3, 1, 1)
    assert found["lesion_sensitivity"] == pytest.approx(1 / 3)
    assert found["lesion_precision"] == pytest.approx(1 / 3)
    assert found["lesion_f1"] == pytest.approx(2 / (2 + 2 + 2))
    # diagonal neighbours are separate lesions (face connectivity)
    diagonal = np.zeros((3, 3, 1), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 0] = True
    assert label_components_numpy(diagonal)[1] == 2


def test_counts_and_volumes_make_a_missed_target_obvious():
    # 37,000 predicted voxels, none on the 1,300 lesion voxels: Dice 0, FN 1300, lesion sensitivity 0
    reference = np.zeros((60, 60, 40), bool)
    reference[5:15, 5:15, 5:18] = True  # 1300 voxels
    prediction = np.zeros_like(reference)
    prediction[20:57, 20:60, 10:35] = True  # 37 x 40 x 25 = 37000
    record = class_metrics(prediction, reference, (0.5, 0.5, 2.0))
    assert (record.tp, record.fp, record.fn) == (0, 37000, 1300)
    assert record.volume_pred_ml == pytest.approx(37000 * 0.5 / 1000)
    assert record.volume_ref_ml == pytest.approx(1300 * 0.5 / 1000)
    assert record.lesions_ref == 1 and record.lesions_detected == 0 and record.lesion_sensitivity == 0.0
    assert record.lesion_f1 == 0.0 and record.hd95_mm > 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numpy_versions_equal_scipy(seed):
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(seed)
    mask = rng.random((17, 13, 9)) < 0.35
    ours, count = label_components_numpy(mask)
    theirs, expected = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 1))
    assert count == expected
    np.testing.assert_array_equal(ours, theirs)  # same numbering (first voxel in C order)
    features = rng.random((15, 11, 8)) < 0.03
    features[0, 0, 0] = True
    spacing = (0.7, 1.3, 2.9)
    np.testing.assert_allclose(distance_to_numpy(features, spacing),
                               ndimage.distance_transform_edt(~features, sampling=spacing), rtol=1e-12, atol=1e-9)
    one = np.zeros((6, 1, 5), bool)
    one[5, 0, 4] = True
    np.testing.assert_allclose(distance_to_numpy(one, (1, 1, 1)), ndimage.distance_transform_edt(~one), atol=1e-12)


def test_metrics_without_scipy_match(monkeypatch):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(5)
    reference = rng.random((14, 12, 7)) < 0.2
    prediction = reference ^ (rng.random(reference.shape) < 0.05)
    with_scipy = class_metrics(prediction, reference, (0.9, 0.9, 3.0))
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("blocked")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    without = class_metrics(prediction, reference, (0.9, 0.9, 3.0))
    assert without.to_dict() == pytest.approx(with_scipy.to_dict())


def test_volume_metrics_ignore_and_pooling():
    reference = np.zeros((4, 4, 4), np.int64)
    reference[0, 0, 0] = 1
    reference[3, 3, 3] = 255  # ignored: a prediction there counts for nothing
    prediction = np.zeros_like(reference)
    prediction[0, 0, 0] = 1
    prediction[3, 3, 3] = 1
    records = volume_metrics(prediction, reference, (1, 1, 1), ["A", "B"], ignore=255)
    assert (records["A"].tp, records["A"].fp, records["A"].fn) == (1, 0, 0)
    assert math.isnan(records["B"].hd95_mm) and math.isnan(records["B"].lesion_f1)
    total = pooled([records["A"], class_metrics(np.zeros((2, 2, 2)), np.ones((2, 2, 2)), (1, 1, 1))])
    assert total["fn"] == 8 and total["hd95_mm"] == math.inf  # one missed case shows as inf, never averaged away
    assert total["lesion_sensitivity"] == pytest.approx(0.5)
    assert metrics.json_number(math.inf) == "inf" and metrics.json_number(math.nan) is None

"""NumPy entry points on any memory layout and every integer label dtype give the C-contiguous result.

Fuzzed with hypothesis: Fortran order, strided and reversed views, big-endian
and unaligned buffers, labels of every integer dtype (issue 10).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trmcore import ops

from .strategies import IGNORE, LABEL_DTYPES, LAYOUTS, ops_cases, with_layout

UNSIGNED_IGNORE = 255  # an ignore value every unsigned dtype holds


def _labels(case, dtype: str):
    """(labels in ``dtype``, ignore_index) with the case's ignored pixels."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        labels = np.where(case.labels == IGNORE, UNSIGNED_IGNORE, case.labels)
        return labels.astype(dtype), UNSIGNED_IGNORE
    return case.labels.astype(dtype), IGNORE


@settings(max_examples=60, deadline=None)
@given(case=ops_cases(max_classes=8), logits_layout=st.sampled_from(LAYOUTS),
       labels_layout=st.sampled_from(LAYOUTS), label_dtype=st.sampled_from(LABEL_DTYPES),
       logits_dtype=st.sampled_from(["float32", "float64", "float16"]))
def test_leep_ops_any_layout(case, logits_layout, labels_layout, label_dtype, logits_dtype):
    logits = case.logits.astype(logits_dtype)
    labels, ignore = _labels(case, label_dtype)
    base_joint = ops.leep_joint(logits, labels.astype(np.int64), case.num_classes, ignore_index=ignore)
    odd_logits, odd_labels = with_layout(logits, logits_layout), with_layout(labels, labels_layout)
    joint = ops.leep_joint(odd_logits, odd_labels, case.num_classes, ignore_index=ignore)
    assert joint.count == base_joint.count
    np.testing.assert_array_equal(joint.sums, base_joint.sums)
    leep_map = ops.pixel_leep(odd_logits, odd_labels, joint)
    np.testing.assert_array_equal(leep_map, ops.pixel_leep(logits, labels.astype(np.int64), base_joint))
    risk = ops.risk_map(with_layout(leep_map, logits_layout), odd_labels, base=10.0, ignore_index=ignore)
    np.testing.assert_array_equal(risk, ops.risk_map(leep_map, labels.astype(np.int64), base=10.0,
                                                     ignore_index=ignore))


@settings(max_examples=40, deadline=None)
@given(case=ops_cases(max_classes=8, logit_classes="target"), layout=st.sampled_from(LAYOUTS),
       label_dtype=st.sampled_from(LABEL_DTYPES), normalize=st.sampled_from(["batch", "image", "valid"]))
def test_loss_any_layout(case, layout, label_dtype, normalize):
    labels, ignore = _labels(case, label_dtype)
    weights = np.random.default_rng(0).random(labels.shape).astype(np.float32)
    expected = ops.risk_weighted_ce(case.logits, labels.astype(np.int64), weights, ignore_index=ignore,
                                    normalize=normalize)
    got = ops.risk_weighted_ce(with_layout(case.logits, layout), with_layout(labels, layout),
                               with_layout(weights, layout), ignore_index=ignore, normalize=normalize)
    assert got == expected


def test_uint64_labels_beyond_int64_are_refused_not_wrapped():
    # 2**64 - 100 wraps to -100 (the default ignore_index) in int64: it must not silently vanish.
    logits = np.zeros((1, 2, 2, 2), np.float32)
    labels = np.zeros((1, 2, 2), np.uint64)
    labels[0, 0, 0] = 2**64 - 100
    with pytest.raises(ValueError, match="labels"):
        ops.leep_joint(logits, labels, 2)
    with pytest.raises(ValueError, match="labels"):
        ops.risk_weighted_ce(logits, labels, np.ones((1, 2, 2), np.float32))


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70])
def test_ignore_index_beyond_int64(value):
    logits, labels = np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2), np.int64)
    with pytest.raises(ValueError, match="ignore_index"):
        ops.leep_joint(logits, labels, 2, ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index"):
        ops.risk_map(np.zeros((1, 2, 2), np.float32), labels, ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index"):
        ops.risk_weighted_ce(logits, labels, np.ones((1, 2, 2), np.float32), ignore_index=value)
    with pytest.raises(ValueError, match="ignore_index"):
        ops.LeepAccumulator(2, ignore_index=value)


@pytest.mark.parametrize("scalar", [np.int8(3), np.int64(3), np.uint16(3), np.intp(3)])
def test_numpy_integer_scalars_are_accepted(scalar):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(1, 3, 3))
    expected = ops.leep_joint(logits, labels, 3)
    joint = ops.leep_joint(logits, labels, scalar, ignore_index=np.int32(-100))
    np.testing.assert_array_equal(joint.sums, expected.sums)
    assert isinstance(ops.LeepAccumulator(scalar).num_classes, int)


@pytest.mark.parametrize("bad", [np.bool_(True), True, 3.0, "3", np.float64(3.0)])
def test_num_classes_non_integers_refused(bad):
    with pytest.raises(TypeError, match="num_classes"):
        ops.leep_joint(np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2), np.int64), bad)


@pytest.mark.parametrize("base", [1e39, float("inf"), np.float64(1e300)])
def test_base_beyond_float32_refused(base):
    with pytest.raises(ValueError, match="base"):
        ops.risk_map(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.int64), base=base)


def test_base_numpy_scalars_accepted():
    leep_map = -np.random.default_rng(2).random((1, 3, 3)).astype(np.float32)
    labels = np.zeros((1, 3, 3), np.int64)
    expected = ops.risk_map(leep_map, labels, base=10.0)
    for base in (np.float32(10.0), np.int64(10), np.float64(10.0)):
        np.testing.assert_array_equal(ops.risk_map(leep_map, labels, base=base), expected)
    for bad in ("10", 10j, np.bool_(True)):
        with pytest.raises(TypeError, match="base"):
            ops.risk_map(leep_map, labels, base=bad)


def _batch():
    rng = np.random.default_rng(3)
    return rng.normal(size=(1, 2, 3, 3)).astype(np.float32), rng.integers(0, 2, size=(1, 3, 3))


@pytest.mark.parametrize("sums, match", [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "NaN"),
    (np.array([[1.0, np.inf], [2.0, 3.0]]), "NaN"),
    (np.array([[1.0, -1.0], [2.0, 3.0]]), "negative"),
    (np.ones((2, 2, 1)), "joint.sums must have shape"),
    (np.ones(4), "joint.sums must have shape"),
    (np.ones((2, 3)), "source classes"),
])
def test_hand_made_joint_refused(sums, match):
    logits, labels = _batch()
    with pytest.raises(ValueError, match=match):
        ops.pixel_leep(logits, labels, ops.LeepJoint(sums, 9))


@pytest.mark.parametrize("count, error", [(-1, ValueError), (2.5, TypeError), ("9", TypeError)])
def test_hand_made_joint_bad_count(count, error):
    logits, labels = _batch()
    with pytest.raises(error, match="joint.count"):
        ops.pixel_leep(logits, labels, ops.LeepJoint(np.ones((2, 2)), count))


def test_hand_made_joint_of_lists_refused():
    logits, labels = _batch()
    with pytest.raises(TypeError, match="joint.sums"):
        ops.pixel_leep(logits, labels, ops.LeepJoint([[1.0, 1.0], [1.0, 1.0]], 4))


def test_hand_made_torch_joint_refused_in_eager_mode():
    torch = pytest.importorskip("torch")
    logits, labels = _batch()
    sums = torch.tensor([[1.0, float("nan")], [2.0, 3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="NaN"):
        ops.pixel_leep(torch.from_numpy(logits), torch.from_numpy(labels), ops.LeepJoint(sums, 9))

"""The fast ops agree with the float64 reference (SPEC sections 2-4) on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trmcore import ops
from trmcore.ops import reference as ref

from .strategies import IGNORE, ops_cases

BACKENDS = ["numpy", "torch"]


def as_backend(array: np.ndarray, backend: str):
    return torch.from_numpy(array) if backend == "torch" else array


def to_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def reference_joint(case) -> ref.ReferenceJoint:
    return ref.leep_joint(torch.from_numpy(case.logits), torch.from_numpy(case.labels), case.num_classes, IGNORE)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=ops_cases())
def test_leep_joint_matches_reference(backend, case):
    joint = ops.leep_joint(as_backend(case.logits, backend), as_backend(case.labels, backend),
                           case.num_classes, ignore_index=IGNORE)
    expected = reference_joint(case)
    assert joint.count == expected.count
    np.testing.assert_allclose(to_numpy(joint.sums), expected.sums.numpy(), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(joint.conditional()), expected.conditional().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=ops_cases())
def test_pixel_leep_and_leep_match_reference(backend, case):
    logits, labels = as_backend(case.logits, backend), as_backend(case.labels, backend)
    joint = ops.leep_joint(logits, labels, case.num_classes, ignore_index=IGNORE)
    leep_map = ops.pixel_leep(logits, labels, joint)
    expected = ref.pixel_leep(torch.from_numpy(case.logits), torch.from_numpy(case.labels), reference_joint(case))
    assert to_numpy(leep_map).dtype == np.float32 and to_numpy(leep_map).shape == case.labels.shape
    np.testing.assert_allclose(to_numpy(leep_map), expected.numpy(), rtol=1e-4, atol=2e-4)
    assert (to_numpy(leep_map)[case.labels == IGNORE] == 0).all()
    score = ops.leep(logits, labels, case.num_classes, ignore_index=IGNORE)
    assert score <= 1e-6
    assert score == pytest.approx(ref.leep(torch.from_numpy(case.logits), torch.from_numpy(case.labels),
                                           case.num_classes, IGNORE), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=ops_cases(max_classes=8), scope=st.sampled_from(["image", "batch"]),
       base=st.sampled_from([10.0, 2.0, 1.0]))
def test_risk_map_matches_reference(backend, case, scope, base):
    labels_t = torch.from_numpy(case.labels)
    leep_map = ref.pixel_leep(torch.from_numpy(case.logits), labels_t, reference_joint(case)).float()
    risk = ops.risk_map(as_backend(leep_map.numpy(), backend), as_backend(case.labels, backend),
                        base=base, scope=scope, ignore_index=IGNORE)
    expected = ref.risk_map(leep_map, labels_t, base=base, scope=scope, ignore_index=IGNORE)
    np.testing.assert_allclose(to_numpy(risk), expected.numpy(), rtol=1e-4, atol=1e-5)
    valid = case.labels != IGNORE
    assert (to_numpy(risk)[~valid] == 0).all()
    assert (to_numpy(risk)[valid] >= 1 - 1e-6).all() and (to_numpy(risk)[valid] <= base * (1 + 1e-6)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=ops_cases(logit_classes="target"), normalize=st.sampled_from(["batch", "image", "valid"]),
       min_foreground=st.sampled_from([1.0, 7.5, 1e4]))
def test_loss_matches_reference(backend, case, normalize, min_foreground):
    rng = np.random.default_rng(case.labels.size)
    weights = rng.uniform(1, 10, size=case.labels.shape).astype(np.float32)
    loss = ops.risk_weighted_ce(as_backend(case.logits, backend), as_backend(case.labels, backend),
                                as_backend(weights, backend), ignore_index=IGNORE, normalize=normalize,
                                min_foreground=min_foreground)
    expected = ref.risk_weighted_ce(torch.from_numpy(case.logits), torch.from_numpy(case.labels),
                                    torch.from_numpy(weights), IGNORE, normalize, min_foreground)
    assert float(loss) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


@given(case=ops_cases(logit_classes="target"), normalize=st.sampled_from(["batch", "image", "valid"]),
       min_foreground=st.sampled_from([1.0, 7.5, 1e4]))
def test_loss_gradient_matches_reference_autograd(case, normalize, min_foreground):
    rng = np.random.default_rng(case.labels.size + 1)
    weights = torch.from_numpy(rng.uniform(1, 10, size=case.labels.shape).astype(np.float32))
    labels = torch.from_numpy(case.labels)
    logits = torch.from_numpy(case.logits).requires_grad_(True)
    (ops.risk_weighted_ce(logits, labels, weights, ignore_index=IGNORE, normalize=normalize,
                          min_foreground=min_foreground) * 3.0).backward()
    logits64 = torch.from_numpy(case.logits).double().requires_grad_(True)
    (ref.risk_weighted_ce(logits64, labels, weights, IGNORE, normalize, min_foreground) * 3.0).backward()
    assert logits.grad.dtype == torch.float32
    np.testing.assert_allclose(logits.grad.numpy(), logits64.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_min_foreground_floors_the_denominator_by_hand():
    """Eq. 7 with 3 foreground pixels: / 3 as published, / 12 with a floor of 12, / 3 again with a floor of 2."""
    logits = torch.zeros(1, 2, 2, 3)
    labels = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    weights = torch.full((1, 2, 3), 2.0)
    total = 6 * 2.0 * float(np.log(2.0))  # every pixel: CE = log 2, weight 2
    for floor, denominator in ((1.0, 3.0), (12.0, 12.0), (2.0, 3.0)):
        for normalize in ("batch", "image"):
            loss = ops.risk_weighted_ce(logits, labels, weights, normalize=normalize, min_foreground=floor)
            assert float(loss) == pytest.approx(total / denominator, rel=1e-6)
    # "valid" ignores the floor: the weighted mean over the 6 pixels.
    assert float(ops.risk_weighted_ce(logits, labels, weights, normalize="valid", min_foreground=12.0)) == \
        pytest.approx(total / 6, rel=1e-6)
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="min_foreground"):
            ops.risk_weighted_ce(logits, labels, weights, min_foreground=bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@given(case=ops_cases(max_classes=8, logit_classes="target"))
def test_half_precision_logits(dtype, case):
    """fp16/bf16 logits are read as such; the maths matches the reference on the rounded values."""
    logits = torch.from_numpy(case.logits).to(dtype)
    labels = torch.from_numpy(case.labels)
    rounded = logits.double()
    joint = ops.leep_joint(logits, labels, case.num_classes, ignore_index=IGNORE)
    expected = ref.leep_joint(rounded, labels, case.num_classes, IGNORE)
    np.testing.assert_allclose(joint.sums.numpy(), expected.sums.numpy(), rtol=2e-5, atol=1e-5)
    leep_map = ops.pixel_leep(logits, labels, joint)
    np.testing.assert_allclose(leep_map.numpy(), ref.pixel_leep(rounded, labels, expected).numpy(),
                               rtol=1e-4, atol=2e-4)
    weights = torch.ones(labels.shape)
    logits.requires_grad_(True)
    ops.risk_weighted_ce(logits, labels, weights, ignore_index=IGNORE).backward()
    rounded.requires_grad_(True)
    ref.risk_weighted_ce(rounded, labels, weights, IGNORE, "batch").backward()
    assert logits.grad.dtype == dtype
    tolerance = 1e-2 if dtype == torch.bfloat16 else 2e-3
    np.testing.assert_allclose(logits.grad.double().numpy(), rounded.grad.numpy(), rtol=tolerance,
                               atol=tolerance * float(rounded.grad.abs().max()))


def test_leep_equals_classic_leep_on_flattened_pixels():
    """SPEC 2: dataset LEEP is Nguyen et al.'s LEEP with every valid pixel an instance."""
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(2, 5, 4))
    theta = np.exp(logits.astype(np.float64))
    theta /= theta.sum(axis=1, keepdims=True)
    theta_pixels = theta.transpose(0, 2, 3, 1).reshape(-1, 3)  # instances x dummy labels
    y = labels.reshape(-1)
    n = len(y)
    joint = np.zeros((2, 3))
    for i in range(n):  # the paper's empirical joint, instance by instance
        joint[y[i]] += theta_pixels[i] / n
    conditional = joint / joint.sum(axis=0, keepdims=True)
    classic = np.mean([np.log(conditional[y[i]] @ theta_pixels[i]) for i in range(n)])
    assert ops.leep(logits, labels, 2) == pytest.approx(classic, rel=1e-5)


def test_non_contiguous_inputs_just_work():
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(2, 9, 6, 3)).astype(np.float32)).permute(0, 3, 1, 2)  # [2, 3, 9, 6]
    labels = torch.from_numpy(rng.integers(0, 3, size=(2, 6, 9))).transpose(1, 2)  # [2, 9, 6]
    assert not logits.is_contiguous() and not labels.is_contiguous()
    joint = ops.leep_joint(logits, labels, 3)
    expected = ref.leep_joint(logits, labels, 3)
    np.testing.assert_allclose(joint.sums.numpy(), expected.sums.numpy(), rtol=1e-5)
    weights = torch.rand(2, 6, 9).transpose(1, 2)
    loss = ops.risk_weighted_ce(logits, labels, weights)
    assert float(loss) == pytest.approx(float(ref.risk_weighted_ce(logits, labels, weights)), rel=1e-5)


def test_labels_of_any_integer_dtype():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(1, 2, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(1, 4, 4))
    expected = ops.leep_joint(logits, labels.astype(np.int64), 2, ignore_index=255).sums
    for dtype in (np.uint8, np.int16, np.int32):
        np.testing.assert_array_equal(ops.leep_joint(logits, labels.astype(dtype), 2, ignore_index=255).sums,
                                      expected)


def test_joint_is_additive_across_batches():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(4, 3, 7, 5)).astype(np.float32)
    labels = rng.integers(0, 2, size=(4, 7, 5))
    whole = ops.leep_joint(logits, labels, 2)
    parts = ops.leep_joint(logits[:1], labels[:1], 2) + ops.leep_joint(logits[1:], labels[1:], 2)
    assert parts.count == whole.count
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-12)
    acc = ops.LeepAccumulator(2)
    for i in range(4):
        acc.update(logits[i:i + 1], labels[i:i + 1])
    np.testing.assert_allclose(acc.conditional(), whole.conditional(), rtol=1e-12)

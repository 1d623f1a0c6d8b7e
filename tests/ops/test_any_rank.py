"""The ops on logits of 1 to 3 spatial dims (issue 21): ``[N, K, W]``, ``[N, K, H, W]``, ``[N, K, D, H, W]``.

Checked three ways: against the float64 reference (which reduces over the
spatial dims itself, without the ops' flat view), against the 2-D op on the
same data reshaped to ``[N, K, S, 1]`` (bit for bit: the same kernels), and on
non-contiguous inputs (the contiguous result, bit for bit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trmcore import ops
from trmcore.ops import _torch
from trmcore.ops import reference as ref

from .strategies import IGNORE, LAYOUTS, any_rank_cases, with_layout

BACKENDS = ["numpy", "torch"]
RANKS = [1, 2, 3]


def as_backend(array: np.ndarray, backend: str):
    return torch.from_numpy(np.ascontiguousarray(array)) if backend == "torch" else array


def to_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def weights_for(labels: np.ndarray) -> np.ndarray:
    return np.random.default_rng(labels.size).uniform(1, 10, size=labels.shape).astype(np.float32)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_leep_ops_match_reference(backend, rank, data):
    case = data.draw(any_rank_cases(rank))
    scope = data.draw(st.sampled_from(["image", "batch"]))
    logits, labels = as_backend(case.logits, backend), as_backend(case.labels, backend)
    logits_t, labels_t = torch.from_numpy(case.logits), torch.from_numpy(case.labels)
    joint = ops.leep_joint(logits, labels, case.num_classes, ignore_index=IGNORE)
    expected = ref.leep_joint(logits_t, labels_t, case.num_classes, IGNORE)
    assert joint.count == expected.count == int((case.labels != IGNORE).sum())
    np.testing.assert_allclose(to_numpy(joint.sums), expected.sums.numpy(), rtol=2e-5, atol=1e-5)
    leep_map = ops.pixel_leep(logits, labels, joint)
    expected_map = ref.pixel_leep(logits_t, labels_t, expected)
    assert to_numpy(leep_map).shape == case.labels.shape and to_numpy(leep_map).dtype == np.float32
    np.testing.assert_allclose(to_numpy(leep_map), expected_map.numpy(), rtol=1e-4, atol=2e-4)
    assert ops.leep(logits, labels, case.num_classes, ignore_index=IGNORE) == pytest.approx(
        ref.leep(logits_t, labels_t, case.num_classes, IGNORE), rel=1e-4, abs=1e-4)
    # The risk map of the reference's own T, so the comparison tests risk_map alone.
    t = expected_map.float()
    risk = ops.risk_map(as_backend(t.numpy(), backend), labels, scope=scope, ignore_index=IGNORE)
    np.testing.assert_allclose(to_numpy(risk), ref.risk_map(t, labels_t, scope=scope, ignore_index=IGNORE).numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rank", RANKS)
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_loss_matches_reference(backend, rank, data):
    case = data.draw(any_rank_cases(rank, logit_classes="target"))
    normalize = data.draw(st.sampled_from(["batch", "image", "valid"]))
    min_foreground = data.draw(st.sampled_from([1.0, 7.5]))
    weights = weights_for(case.labels)
    loss = ops.risk_weighted_ce(as_backend(case.logits, backend), as_backend(case.labels, backend),
                                as_backend(weights, backend), ignore_index=IGNORE, normalize=normalize,
                                min_foreground=min_foreground)
    expected = ref.risk_weighted_ce(torch.from_numpy(case.logits), torch.from_numpy(case.labels),
                                    torch.from_numpy(weights), IGNORE, normalize, min_foreground)
    assert float(loss) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("rank", RANKS)
@given(data=st.data())
def test_loss_gradient_matches_reference_autograd(rank, data):
    case = data.draw(any_rank_cases(rank, logit_classes="target"))
    normalize = data.draw(st.sampled_from(["batch", "image", "valid"]))
    labels, weights = torch.from_numpy(case.labels), torch.from_numpy(weights_for(case.labels))
    logits = torch.from_numpy(case.logits).requires_grad_(True)
    (ops.risk_weighted_ce(logits, labels, weights, ignore_index=IGNORE, normalize=normalize) * 3.0).backward()
    logits64 = torch.from_numpy(case.logits).double().requires_grad_(True)
    (ref.risk_weighted_ce(logits64, labels, weights, IGNORE, normalize) * 3.0).backward()
    assert logits.grad.shape == logits.shape and logits.grad.dtype == torch.float32
    np.testing.assert_allclose(logits.grad.numpy(), logits64.grad.numpy(), rtol=1e-4, atol=1e-6)


def _flat(array: np.ndarray, keep: int) -> np.ndarray:
    """``array`` with its spatial dims (after the first ``keep``) as one, then a trailing 1: the 2-D view."""
    return array.reshape(*array.shape[:keep], -1, 1)


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_equals_the_2d_op_on_the_reshaped_tensors(backend, rank, data):
    case = data.draw(any_rank_cases(rank, max_classes=4, logit_classes="target"))
    weights = weights_for(case.labels)
    nd = [as_backend(a, backend) for a in (case.logits, case.labels, weights)]
    flat = [as_backend(_flat(a, k), backend) for a, k in ((case.logits, 2), (case.labels, 1), (weights, 1))]
    results = []
    for logits, labels, w in (nd, flat):
        joint = ops.leep_joint(logits, labels, case.num_classes, ignore_index=IGNORE)
        leep_map = ops.pixel_leep(logits, labels, joint)
        risk = ops.risk_map(leep_map, labels, ignore_index=IGNORE)
        loss = ops.risk_weighted_ce(logits, labels, w, ignore_index=IGNORE, normalize="image")
        results.append([to_numpy(joint.sums), to_numpy(leep_map).reshape(-1), to_numpy(risk).reshape(-1),
                        float(loss)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def _volume(seed: int = 0, n: int = 2, k: int = 3, shape=(5, 6, 7)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, *shape, generator=gen) * 3
    labels = torch.randint(0, k, (n, *shape), generator=gen)
    labels[0, 0, :2] = IGNORE
    weights = torch.rand(n, *shape, generator=gen) * 9 + 1
    return logits, labels, weights


def _all_results(logits, labels, weights):
    """Joint, T, R, loss and d loss / d logits of one 3-D batch (torch)."""
    x = logits.detach().clone().requires_grad_(True) if logits.is_contiguous() else logits.detach().requires_grad_(True)
    joint = ops.leep_joint(x, labels, 3, ignore_index=IGNORE)
    leep_map = ops.pixel_leep(x, labels, joint)
    risk = ops.risk_map(leep_map, labels, ignore_index=IGNORE)
    loss = ops.risk_weighted_ce(x, labels, weights, ignore_index=IGNORE)
    loss.backward()
    return [joint.sums, leep_map, risk, loss.detach(), x.grad]


def _non_contiguous(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """``tensor``'s values in another memory layout (never contiguous)."""
    if layout == "channels_last_3d":
        out = tensor.contiguous(memory_format=torch.channels_last_3d) if tensor.dim() == 5 else \
            tensor.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":  # every other element of a buffer twice as large along each dim
        big = torch.zeros(tuple(2 * s for s in tensor.shape), dtype=tensor.dtype)
        view = big[tuple(slice(None, None, 2) for _ in tensor.shape)]
        view.copy_(tensor)
        out = view
    elif layout == "transposed":  # D and W swapped in memory
        out = tensor.transpose(-1, -3).contiguous().transpose(-1, -3)
    else:
        raise ValueError(layout)
    assert torch.equal(out, tensor) and not out.is_contiguous()
    return out


@pytest.mark.parametrize("layout", ["channels_last_3d", "strided", "transposed"])
def test_non_contiguous_volumes_give_the_contiguous_result(layout):
    logits, labels, weights = _volume()
    expected = _all_results(logits, labels, weights)
    odd = [_non_contiguous(t, layout) for t in (logits, labels, weights)]
    got = _all_results(*odd)
    for a, b in zip(expected, got):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def test_broadcast_weights_are_read_per_voxel():
    """Weights expanded from one volume (stride 0 along N) equal the materialised copy."""
    logits, labels, _ = _volume(1)
    one = torch.rand(1, *labels.shape[1:]) + 0.5
    expanded = one.expand(labels.shape)
    assert expanded.stride(0) == 0
    assert torch.equal(ops.risk_weighted_ce(logits, labels, expanded),
                       ops.risk_weighted_ce(logits, labels, expanded.contiguous()))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_numpy_volumes_in_any_layout(layout):
    logits, labels, weights = (t.numpy() for t in _volume(2))
    joint = ops.leep_joint(logits, labels, 3, ignore_index=IGNORE)
    odd_logits, odd_labels, odd_weights = (with_layout(a, layout) for a in (logits, labels, weights))
    odd_joint = ops.leep_joint(odd_logits, odd_labels, 3, ignore_index=IGNORE)
    np.testing.assert_array_equal(odd_joint.sums, joint.sums)
    np.testing.assert_array_equal(ops.pixel_leep(odd_logits, odd_labels, odd_joint),
                                  ops.pixel_leep(logits, labels, joint))
    assert ops.risk_weighted_ce(odd_logits, odd_labels, odd_weights, ignore_index=IGNORE) == \
        ops.risk_weighted_ce(logits, labels, weights, ignore_index=IGNORE)


def test_contiguous_volumes_are_used_in_place():
    """No copy of a contiguous [N, K, D, H, W] volume on the way to the kernels (torch and NumPy)."""
    from trmcore.ops import _numpy

    logits, labels, _ = _volume(3)
    assert _torch._logits_tensor(logits).data_ptr() == logits.data_ptr()
    assert _torch._labels_tensor(labels, logits).data_ptr() == labels.data_ptr()
    array = logits.numpy()
    assert _numpy._logits_array(array).ctypes.data == array.ctypes.data


def test_accumulator_over_volumes_equals_one_call():
    logits, labels, _ = _volume(4, n=4)
    acc = ops.LeepAccumulator(3, ignore_index=IGNORE)
    for i in range(4):
        acc.update(logits[i:i + 1], labels[i:i + 1])
    whole = ops.leep_joint(logits, labels, 3, ignore_index=IGNORE)
    assert acc.joint.count == whole.count
    torch.testing.assert_close(acc.joint.sums, whole.sums, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(11,), (4, 5, 3)])
def test_opcheck_any_rank(shape):
    """The fake (meta) kernels give the shapes of the real ones at every rank."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, *shape, generator=gen)
    labels = torch.randint(0, 3, (2, *shape), generator=gen)
    weights = torch.rand(2, *shape, generator=gen) + 1
    joint = ops.leep_joint(logits, labels, 3)
    leep_map = ops.pixel_leep(logits, labels, joint)
    checks = [
        (torch.ops.trmcore.leep_joint.default, (logits, labels, 3, -100)),
        (torch.ops.trmcore.pixel_leep.default, (logits, labels, joint.conditional(), -100)),
        (torch.ops.trmcore.risk_map.default, (leep_map, labels, 10.0, True, -100)),
        (torch.ops.trmcore.rwce_forward.default, (logits.clone().requires_grad_(True), labels, weights, -100,
                                                  "batch", 1.0)),
        (torch.ops.trmcore.rwce_backward.default, (logits, labels, weights, torch.rand(2), -100)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_outside_1_to_3_spatial_dims_are_refused(backend):
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(2, 3)).astype(np.float32)
    four_d = rng.normal(size=(1, 2, 2, 2, 2, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"logits must have shape \[N, K, \*spatial\] with 1 to 3 spatial dims"):
        ops.leep_joint(as_backend(flat, backend), as_backend(np.zeros(2, np.int64), backend), 3)
    with pytest.raises(ValueError, match=r"logits must have shape \[N, K, \*spatial\]"):
        ops.leep_joint(as_backend(four_d, backend), as_backend(np.zeros((1, 2, 2, 2, 2), np.int64), backend), 2)
    volume = rng.normal(size=(2, 3, 4, 5, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"labels must have shape \[N, \*spatial\] \(4 dims"):
        ops.leep_joint(as_backend(volume, backend), as_backend(np.zeros((2, 20, 6), np.int64), backend), 3)
    with pytest.raises(ValueError, match="leep_map must have shape"):
        ops.risk_map(as_backend(np.zeros((2, 1, 2, 2, 2), np.float32), backend),
                     as_backend(np.zeros((2, 1, 2, 2, 2), np.int64), backend))

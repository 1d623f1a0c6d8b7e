"""Bad input gives a clear ValueError/TypeError naming the problem, for both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.ops import _native

BACKENDS = ["numpy", "torch"]


def make(backend, array):
    return torch.from_numpy(np.ascontiguousarray(array)) if backend == "torch" else array


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 5, 6))
    return logits, labels


def all_entry_points(logits, labels):
    """Call every op once with these inputs (the loss with C = logits' classes)."""
    weights = (labels * 0 + 1).astype(np.float32) if isinstance(labels, np.ndarray) else torch.ones(labels.shape)
    yield lambda: ops.leep_joint(logits, labels, 3)
    yield lambda: ops.leep(logits, labels, 3)
    yield lambda: ops.risk_weighted_ce(logits, labels, weights)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_rank(backend, batch):
    logits, labels = batch
    with pytest.raises(ValueError, match=r"logits must have shape \[N, K, \*spatial\]"):
        ops.leep_joint(make(backend, logits[0, 0]), make(backend, labels[0, 0]), 3)
    with pytest.raises(ValueError, match=r"labels must have shape \[N, \*spatial\] \(3 dims"):
        ops.leep_joint(make(backend, logits), make(backend, labels[:, None]), 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("which", ["N", "H", "W"])
def test_shape_mismatch(backend, batch, which):
    logits, labels = batch
    cut = {"N": labels[:1], "H": labels[:, :4], "W": labels[:, :, :5]}[which]
    for call in all_entry_points(make(backend, logits), make(backend, cut)):
        with pytest.raises(ValueError, match="labels shape .* does not match logits shape"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_out_of_range(backend, batch):
    logits, labels = batch
    labels = labels.copy()
    labels[1, 2, 3] = 3
    labels[0, 0, 0] = -1
    for call in all_entry_points(make(backend, logits), make(backend, labels)):
        with pytest.raises(ValueError, match=r"labels: 2 pixels have a label outside \[0, 3\)"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_labels(backend, batch):
    logits, labels = batch
    for call in all_entry_points(make(backend, logits), make(backend, labels.astype(np.float32))):
        with pytest.raises(TypeError, match="labels must be an integer"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits(backend, batch, bad):
    logits, labels = batch
    logits = logits.copy()
    logits[1, 2, 4, 5] = bad
    for call in all_entry_points(make(backend, logits), make(backend, labels)):
        with pytest.raises(ValueError, match="logits contain 1 non-finite"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, batch):
    logits, labels = batch
    for call in all_entry_points(make(backend, logits[:0]), make(backend, labels[:0])):
        with pytest.raises(ValueError, match="empty batch"):
            call()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_pixels_ignored(backend, batch):
    logits, labels = batch
    ignored = np.full_like(labels, -100)
    for call in all_entry_points(make(backend, logits), make(backend, ignored)):
        with pytest.raises(ValueError, match="every pixel is ignore_index"):
            call()
    with pytest.raises(ValueError, match="every pixel is ignore_index"):
        ops.risk_map(make(backend, np.zeros(labels.shape, np.float32)), make(backend, ignored))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_options(backend, batch):
    logits, labels = batch
    leep_map = np.zeros(labels.shape, np.float32)
    with pytest.raises(ValueError, match="scope must be one of"):
        ops.risk_map(make(backend, leep_map), make(backend, labels), scope="volume")
    with pytest.raises(ValueError, match="base must be a finite number >= 1"):
        ops.risk_map(make(backend, leep_map), make(backend, labels), base=0.5)
    with pytest.raises(ValueError, match="normalize must be one of"):
        ops.risk_weighted_ce(make(backend, logits), make(backend, labels), make(backend, leep_map + 1),
                             normalize="mean")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        ops.leep_joint(make(backend, logits), make(backend, labels), 0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        ops.leep_joint(make(backend, logits), make(backend, labels), 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_weights(backend, batch):
    logits, labels = batch
    weights = np.ones(labels.shape, np.float32)
    weights[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="weights contain non-finite|weights contains non-finite"):
        ops.risk_weighted_ce(make(backend, logits), make(backend, labels), make(backend, weights))
    weights[0, 0, 0] = -1
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ops.risk_weighted_ce(make(backend, logits), make(backend, labels), make(backend, weights))
    with pytest.raises(ValueError, match="labels shape .* does not match weights shape"):
        ops.risk_weighted_ce(make(backend, logits), make(backend, labels), make(backend, weights[:1]))


def test_mixed_numpy_and_torch(batch):
    logits, labels = batch
    with pytest.raises(TypeError, match="pass all inputs as torch tensors or all as NumPy arrays"):
        ops.leep_joint(torch.from_numpy(logits), labels, 3)
    with pytest.raises(TypeError, match="must be a torch tensor or a NumPy array"):
        ops.leep_joint(logits.tolist(), labels, 3)


def test_joint_from_other_source_model(batch):
    logits, labels = batch
    joint = ops.leep_joint(logits, labels, 3)
    with pytest.raises(ValueError, match="logits have 4 source classes but the joint was built with 3"):
        ops.pixel_leep(np.zeros((2, 4, 5, 6), np.float32), labels, joint)


@pytest.mark.skipif(_native.built_with_cuda(), reason="checks the CPU-only build")
def test_cuda_tensor_on_cpu_only_build(batch):
    fake = pytest.importorskip("torch._subclasses.fake_tensor")
    logits, labels = batch
    with fake.FakeTensorMode():
        cuda_logits = torch.empty(2, 3, 5, 6, device="cuda")
        cuda_labels = torch.zeros(2, 5, 6, dtype=torch.int64, device="cuda")
        with pytest.raises(ValueError, match="this trmcore build has no CUDA kernels"):
            ops.leep_joint(cuda_logits, cuda_labels, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_mix(batch):
    logits, labels = batch
    with pytest.raises(ValueError, match="put them on one device"):
        ops.leep_joint(torch.from_numpy(logits).cuda(), torch.from_numpy(labels), 3)


def test_device_mix_without_gpu(batch):
    logits, labels = batch
    with pytest.raises(ValueError, match="labels are on meta but the other inputs on cpu"):
        ops.leep_joint(torch.from_numpy(logits), torch.zeros(2, 5, 6, dtype=torch.int64, device="meta"), 3)
    with pytest.raises(ValueError, match="trmcore runs on CPU and CUDA tensors"):
        ops.leep_joint(torch.empty(2, 3, 5, 6, device="meta"), torch.from_numpy(labels), 3)

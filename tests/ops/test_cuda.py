"""CUDA kernels agree with the CPU kernels (skipped without a GPU and a CUDA build)."""

from __future__ import annotations

import pytest
import torch

from trmcore import ops
from trmcore.ops import _native
from trmcore.ops import reference as ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and _native.built_with_cuda()),
                       reason="needs a CUDA device and a CUDA build of trmcore"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("c,z", [(4, 4), (2, 7), (1, 1), (256, 3), (3, 256), (130, 140)])
def test_cuda_matches_cpu(dtype, c, z):
    gen = torch.Generator().manual_seed(c * 1000 + z)
    n, h, w = 3, 37, 29
    logits = (torch.randn(n, z, h, w, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, c, (n, h, w), generator=gen)
    labels[1, 3:9] = -100
    joint_cpu = ops.leep_joint(logits, labels, c)
    joint_gpu = ops.leep_joint(logits.cuda(), labels.cuda(), c)
    assert joint_gpu.sums.is_cuda and joint_gpu.count == joint_cpu.count
    torch.testing.assert_close(joint_gpu.sums.cpu(), joint_cpu.sums, rtol=1e-5, atol=1e-6)
    map_cpu = ops.pixel_leep(logits, labels, joint_cpu)
    map_gpu = ops.pixel_leep(logits.cuda(), labels.cuda(), joint_gpu)
    torch.testing.assert_close(map_gpu.cpu(), map_cpu, rtol=1e-4, atol=1e-4)
    for scope in ("image", "batch"):
        torch.testing.assert_close(ops.risk_map(map_gpu, labels.cuda(), scope=scope).cpu(),
                                   ops.risk_map(map_cpu, labels, scope=scope), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("normalize", ["batch", "image", "valid"])
def test_cuda_loss_and_gradient(dtype, normalize):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 5, 33, 47, generator=gen) * 2).to(dtype)
    labels = torch.randint(0, 5, (4, 33, 47), generator=gen)
    labels[0, :5] = -100
    weights = torch.rand(4, 33, 47, generator=gen) * 9 + 1
    x = logits.cuda().requires_grad_(True)
    loss = ops.risk_weighted_ce(x, labels.cuda(), weights.cuda(), normalize=normalize)
    loss.backward()
    x64 = logits.double().requires_grad_(True)
    expected = ref.risk_weighted_ce(x64, labels, weights, normalize=normalize)
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, rtol=tolerance,
                               atol=tolerance * float(x64.grad.abs().max()))


def test_cuda_deterministic_and_on_current_stream():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(16, 4, 120, 120, generator=gen).cuda()
    labels = torch.randint(0, 4, (16, 120, 120), generator=gen).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        first = ops.leep_joint(logits, labels, 4).sums
        second = ops.leep_joint(logits, labels, 4).sums
    stream.synchronize()
    assert torch.equal(first, second)


def test_cuda_bad_labels_and_nan():
    logits = torch.randn(1, 3, 8, 8, device="cuda")
    labels = torch.zeros(1, 8, 8, dtype=torch.int64, device="cuda")
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match="outside"):
        ops.leep_joint(logits, labels, 3)
    labels[0, 0, 0] = 0
    logits[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ops.risk_weighted_ce(logits, labels, torch.ones(1, 8, 8, device="cuda"))

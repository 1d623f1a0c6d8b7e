"""torch.library registration: opcheck, torch.compile, determinism, thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.ops import _torch  # noqa: F401  (registers torch.ops.trmcore.*)


def sample(n=2, c=3, h=9, w=7, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=gen).to(dtype)
    labels = torch.randint(0, c, (n, h, w), generator=gen)
    labels[0, 0, :3] = -100
    weights = torch.rand(n, h, w, generator=gen) * 9 + 1
    return logits, labels, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_opcheck(dtype):
    logits, labels, weights = sample(dtype=dtype)
    joint = ops.leep_joint(logits, labels, 3)
    cond = joint.conditional()
    leep_map = ops.pixel_leep(logits, labels, joint)
    checks = [
        (torch.ops.trmcore.leep_joint.default, (logits, labels, 3, -100)),
        (torch.ops.trmcore.pixel_leep.default, (logits, labels, cond, -100)),
        (torch.ops.trmcore.risk_map.default, (leep_map, labels, 10.0, True, -100)),
        (torch.ops.trmcore.rwce_forward.default, (logits.clone().requires_grad_(True), labels, weights, -100, "batch", 1.0)),
        (torch.ops.trmcore.rwce_backward.default, (logits, labels, weights, torch.rand(2), -100)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args)


def test_loss_under_torch_compile():
    logits, labels, weights = sample()

    def step(x):
        return ops.risk_weighted_ce(x * 2.0, labels, weights) + x.square().mean()

    eager_x = logits.clone().requires_grad_(True)
    step(eager_x).backward()
    compiled_x = logits.clone().requires_grad_(True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(compiled_x)
    loss.backward()
    assert float(loss) == pytest.approx(float(step(logits)), rel=1e-6)
    torch.testing.assert_close(compiled_x.grad, eager_x.grad)


def test_risk_map_under_torch_compile():
    logits, labels, _ = sample()
    joint = ops.leep_joint(logits, labels, 3)

    def maps(x):
        return ops.risk_map(ops.pixel_leep(x, labels, joint), labels)

    compiled = torch.compile(maps, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(logits), maps(logits))


def test_results_are_deterministic_and_thread_count_independent():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, 67, 61, generator=gen) * 4
    labels = torch.randint(0, 5, (8, 67, 61), generator=gen)
    weights = torch.rand(8, 67, 61, generator=gen)
    saved = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            joint = ops.leep_joint(logits, labels, 5)
            leep_map = ops.pixel_leep(logits, labels, joint)
            x = logits.clone().requires_grad_(True)
            loss = ops.risk_weighted_ce(x, labels, weights, normalize="image")
            loss.backward()
            results.append((joint.sums.clone(), leep_map.clone(), ops.risk_map(leep_map, labels), loss.detach(),
                            x.grad.clone()))
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_numpy_and_torch_backends_agree_exactly():
    logits, labels, weights = sample(h=31, w=29)
    joint_t = ops.leep_joint(logits, labels, 3)
    joint_n = ops.leep_joint(logits.numpy(), labels.numpy(), 3)
    np.testing.assert_array_equal(joint_t.sums.numpy(), joint_n.sums)
    np.testing.assert_array_equal(ops.pixel_leep(logits, labels, joint_t).numpy(),
                                  ops.pixel_leep(logits.numpy(), labels.numpy(), joint_n))
    assert float(ops.risk_weighted_ce(logits, labels, weights)) == pytest.approx(
        float(ops.risk_weighted_ce(logits.numpy(), labels.numpy(), weights.numpy())), rel=1e-7)


def test_float64_logits_are_accepted():
    logits, labels, weights = sample()
    x = logits.double().requires_grad_(True)
    ops.risk_weighted_ce(x, labels, weights).backward()
    assert x.grad.dtype == torch.float64
    assert ops.leep(logits.double(), labels, 3) == pytest.approx(ops.leep(logits, labels, 3))

"""The torch ops check their data without a host sync per call: lazily, raised by a later call or check_pending."""

from __future__ import annotations

import pytest
import torch

from trmcore import ops


@pytest.fixture
def deferred():
    ops.set_check_mode("deferred")  # what CUDA calls do by default, here on the CPU
    try:
        yield
    finally:
        try:
            ops.check_pending()
        except ValueError:
            pass
        ops.set_check_mode("auto")


def _inputs():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    return logits, labels, torch.ones(2, 4, 4)


def test_auto_mode_on_cpu_raises_at_the_call():
    logits, labels, weights = _inputs()
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"labels: 1 pixels have a label outside \[0, 3\)"):
        ops.risk_weighted_ce(logits, labels, weights)


def test_deferred_error_surfaces_in_check_pending(deferred):
    logits, labels, weights = _inputs()
    bad = labels.clone()
    bad[0, 0, 0] = 7
    loss = ops.risk_weighted_ce(logits, bad, weights, normalize="valid")  # no raise, no sync
    assert loss.shape == ()
    with pytest.raises(ValueError, match=r"label outside \[0, 3\).*earlier risk_weighted_ce call"):
        ops.check_pending()
    ops.check_pending()  # the queue is empty after a failure
    good = ops.risk_weighted_ce(logits, labels, weights, normalize="valid")
    ops.check_pending()
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(good, expected, atol=1e-6)


def test_deferred_error_surfaces_in_the_next_call(deferred):
    logits, labels, _ = _inputs()
    leep_map = torch.full((2, 4, 4), -0.5)
    leep_map[1, 2, 2] = float("nan")
    ops.risk_map(leep_map, labels)
    with pytest.raises(ValueError, match="leep_map contains non-finite values.*earlier risk_map call"):
        ops.risk_map(torch.full((2, 4, 4), -0.5), labels)


def test_eager_mode_and_bad_mode():
    ops.set_check_mode("eager")
    try:
        logits, labels, weights = _inputs()
        with pytest.raises(ValueError, match="weights must be >= 0"):
            ops.risk_weighted_ce(logits, labels, -weights)
    finally:
        ops.set_check_mode("auto")
    with pytest.raises(ValueError, match="check mode must be one of"):
        ops.set_check_mode("sometimes")

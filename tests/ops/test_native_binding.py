"""The pybind11 binding trmcore._C: what a direct caller gets for bad arguments.

The launchers check every field before touching memory, so a wrong call is a
ValueError naming the launcher and the argument, never a crash.
"""

from __future__ import annotations

import numpy as np
import pytest

from trmcore.ops._native import native


@pytest.fixture
def joint_args():
    logits = np.zeros((1, 2, 4), np.float32)
    labels = np.zeros((1, 4), np.int64)
    joint = np.zeros((2, 2), np.float64)
    status = np.zeros(5, np.int64)
    args = dict(logits=logits.ctypes.data, dtype=0, labels=labels.ctypes.data, n=1, z=2, hw=4, c=2,
                joint=joint.ctypes.data, status=status.ctypes.data)
    # the arrays must outlive the call
    return args, (logits, labels, joint, status)


def test_valid_call_fills_the_outputs(joint_args):
    args, (_, _, joint, status) = joint_args
    native().leep_joint(**args)
    np.testing.assert_allclose(joint, [[2.0, 2.0], [0.0, 0.0]])
    assert status.tolist() == [4, 0, 0, 0, 0]


@pytest.mark.parametrize("field, value, message", [
    ("logits", 0, "`logits` is a null pointer"),
    ("labels", 0, "`labels` is a null pointer"),
    ("joint", 0, "`joint` is a null pointer"),
    ("status", 0, "`status` is a null pointer"),
    ("n", 0, "`n` must be positive"),
    ("hw", -3, "`hw` must be positive"),
    ("z", 0, "`z` must be positive"),
    ("c", 1 << 25, "`c` = 33554432 is too large"),
    ("dtype", 7, "`dtype` must be 0 \\(float32\\), 1 \\(float16\\) or 2"),
    ("num_threads", -1, "`num_threads` must be >= 0"),
])
def test_bad_arguments_raise_value_error(joint_args, field, value, message):
    args, _keep = joint_args
    args[field] = value
    with pytest.raises(ValueError, match=f"leep_joint_cpu: {message}"):
        native().leep_joint(**args)


def test_cuda_call_on_a_cpu_only_build(joint_args):
    if native().built_with_cuda():
        pytest.skip("this build has CUDA kernels")
    args, _keep = joint_args
    with pytest.raises(ValueError, match="built without CUDA"):
        native().leep_joint(**args, cuda=True)


def test_rwce_backward_checks_its_own_pointers():
    logits = np.zeros((1, 2, 4), np.float32)
    labels = np.zeros((1, 4), np.int64)
    weights = np.ones((1, 4), np.float32)
    grad = np.empty_like(logits)
    with pytest.raises(ValueError, match="rwce_backward_cpu: `scale` is a null pointer"):
        native().rwce_backward(logits=logits.ctypes.data, labels=labels.ctypes.data, weights=weights.ctypes.data,
                               scale=0, n=1, c=2, hw=4, grad=grad.ctypes.data)

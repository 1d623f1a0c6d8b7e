"""The NumPy path runs in a process where importing torch fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import trmcore

SCRIPT = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    from trmcore import ops

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 6, 5))
    joint = ops.leep_joint(logits, labels, 3)
    leep_map = ops.pixel_leep(logits, labels, joint)
    risk = ops.risk_map(leep_map, labels)
    loss = ops.risk_weighted_ce(logits[:, :3], labels, risk)
    acc = ops.LeepAccumulator(3)
    acc.update(logits, labels)
    assert isinstance(leep_map, np.ndarray) and isinstance(risk, np.ndarray)
    assert np.allclose(acc.conditional(), joint.conditional())
    assert "torch" not in sys.modules
    print("score", ops.leep(logits, labels, 3), "loss", float(loss))
""")


def test_numpy_ops_without_torch():
    package_root = str(Path(trmcore.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=package_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("score -")

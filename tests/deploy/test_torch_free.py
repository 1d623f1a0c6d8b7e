"""The inference path must run where torch cannot be imported.

The subprocess also blocks the other packages of the ``train`` extra
(networkx, scipy, matplotlib, onnx, onnxscript, safetensors): ``pip install
trmcore[cpu]`` installs none of them, so ``trm predict`` must not need them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import trmcore

# The trmcore these tests import (the source tree or an installed copy), put after the blocker.
TRMCORE_PARENT = Path(trmcore.__file__).resolve().parents[1]


TORCH_ONLY = ("torch",)
TRAIN_EXTRA = ("torch", "networkx", "scipy", "matplotlib", "onnx", "onnxscript", "safetensors")


def _run_without_torch(tmp_path: Path, code: str, blocked=TORCH_ONLY) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where the ``blocked`` modules are absent.

    ``sys.modules[name] = None`` makes both ``import name`` and
    ``importlib.util.find_spec(name)`` report the module missing, as on an
    install without it (a stub package would still be found by find_spec,
    which is what `trm` checks extras with). tests/deploy/test_extras_venvs.py
    runs the same commands in venvs where these packages are really absent.
    """
    env = dict(os.environ, PYTHONPATH=str(TRMCORE_PARENT))
    prelude = (f"import sys, importlib.util\nfor name in {tuple(blocked)!r}:\n    sys.modules[name] = None\n"
               "assert importlib.util.find_spec('torch') is None\n"
               "try:\n    import torch\nexcept ImportError:\n    pass\nelse:\n    sys.exit('blocker failed')\n")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("blocked", [TORCH_ONLY, TRAIN_EXTRA], ids=["no-torch", "no-train-extra"])
def test_predict_and_segmenter_without_torch(phantom, onnx_model, tmp_path, blocked):
    out = tmp_path / "pred"
    result = _run_without_torch(tmp_path, f"""
        import sys
        import nibabel as nib
        from trmcore.cli.main import main
        from trmcore.infer import Segmenter
        code = main(["predict", "-m", {str(onnx_model)!r}, "-i", {str(phantom / "imagesTr")!r},
                     "-o", {str(out)!r}, "-q"])
        seg = Segmenter({str(onnx_model)!r}, providers="auto")
        files = [{str(phantom / "imagesTr" / "phantom_001_0000.nii.gz")!r},
                 {str(phantom / "imagesTr" / "phantom_001_0001.nii.gz")!r}]
        labels = seg.predict_volume([nib.load(f) for f in files])
        print("PROVIDER", seg.provider, "SHAPE", labels.shape)
        assert not {{n for n, m in sys.modules.items() if m is not None}} & {set(blocked)!r}
        sys.exit(code)
    """, blocked)
    assert result.returncode == 0, result.stderr
    assert "PROVIDER CPUExecutionProvider" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"phantom_00{i}.nii.gz" for i in range(3)] + ["predict.json"]
    with_torch = nib.load(str(out / "phantom_001.nii.gz"))
    assert with_torch.get_data_dtype() == np.uint8


def test_transferability_without_torch(phantom, onnx_model, tmp_path):
    report = tmp_path / "report.json"
    result = _run_without_torch(tmp_path, f"""
        import sys
        from trmcore.cli.main import main
        code = main(["transferability", "-m", {str(onnx_model)!r}, {str(phantom)!r}, "--channel", "T1,T2",
                     "--labels", "CSF", "-o", {str(report)!r}, "-q"])
        assert not {{n for n, m in sys.modules.items() if m is not None}} & {set(TRAIN_EXTRA)!r}
        sys.exit(code)
    """, TRAIN_EXTRA)
    assert result.returncode == 0, result.stderr
    assert "dataset LEEP" in result.stdout
    data = json.loads(report.read_text())
    assert data["leep"] <= 0 and len(data["cases"]) == 3


def test_evaluate_model_and_folder_without_torch(phantom, onnx_model, tmp_path):
    """`trm evaluate -m model.onnx` and `--predictions` run on an inference-only install."""
    result = _run_without_torch(tmp_path, f"""
        import sys
        from trmcore.cli.main import main
        a = main(["evaluate", {str(phantom)!r}, "-m", {str(onnx_model)!r}, "-q"])
        b = main(["evaluate", {str(phantom)!r}, "--labels", "CSF,GM", "--predictions", {str(phantom / "labelsTr")!r},
                  "-q"])
        assert not {{n for n, m in sys.modules.items() if m is not None}} & {set(TRAIN_EXTRA)!r}
        sys.exit(a or b)
    """, TRAIN_EXTRA)
    assert result.returncode == 0, result.stderr
    # the reference scored against itself: Dice 1 for every class
    assert result.stdout.count("Dice per volume") == 2 and "  1.0000    1.0000    1.0000" in result.stdout

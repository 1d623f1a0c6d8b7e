"""Packaging: `pip wheel .` builds trmcore with its compiled extension, and the wheel plus
onnxruntime, installed into a fresh virtual environment without torch, runs `trm predict`.

Dependencies come from a local wheelhouse when there is one (``TRM_WHEELHOUSE``,
default ``/opt/pypi/files``: installed with ``--no-index``, fully offline),
else from pip's configured indexes.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import LABEL_VALUES, case_files

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(os.environ.get("TRM_WHEELHOUSE", "/opt/pypi/files"))

pytestmark = pytest.mark.slow


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_installs_and_predicts_without_torch(phantom, onnx_model, tmp_path):
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("no source tree to build a wheel from")
    wheels = tmp_path / "wheels"
    # Reuse this environment's build backend when it has one (no index needed), else let pip fetch it.
    have_backend = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "pybind11"))
    isolation = ["--no-build-isolation"] if have_backend else []
    _run([sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", *isolation, "-q", "-w", wheels], timeout=900)
    (wheel,) = wheels.glob("trmcore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("trmcore/_C") and n.endswith((".so", ".pyd")) for n in names), \
        "the wheel has no compiled extension trmcore/_C"
    assert "trmcore/infer/segmenter.py" in names

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    python = venv / "bin" / "python"
    source = ["--no-index", "--find-links", WHEELHOUSE] if WHEELHOUSE.is_dir() else []
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--find-links", wheels, *source,
          f"{wheel}[cpu]"], timeout=900)
    probe = _run([python, "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"])
    assert probe.stdout.strip() == "True", "torch is importable in the inference-only environment"

    out = tmp_path / "seg.nii.gz"
    inputs = case_files(phantom, "phantom_001")
    result = _run([venv / "bin" / "trm", "predict", "-m", onnx_model, "-i", inputs[0], "-o", out, "--no-progress"],
                  cwd=tmp_path, timeout=300)
    assert "CPUExecutionProvider" in result.stderr
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, nib.load(str(inputs[0])).affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= set(LABEL_VALUES)

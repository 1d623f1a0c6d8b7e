"""Packaging: the built wheel installs and runs where there is no compiler.

The wheel tested is, in this order:
- ``TRM_WHEEL_DIR``: the manylinux wheels of scripts/build_wheels.sh, one per
  Python of ``TRM_WHEEL_PYTHONS`` (e.g. ``"3.9 3.10 3.11 3.12 3.13"``; default:
  the Python running the tests); scripts/test_wheels.sh builds and tests them
  (not CI: it builds zig's C++ runtime and five extensions);
- ``TRM_TEST_WHEEL``: the wheel scripts/test.sh built and installed (CI);
- else a CPU-only wheel of this source tree built here with ``pip wheel``.

Each wheel then
- (manylinux wheels) passes scripts/check_wheel.py (auditwheel's tag
  manylinux_2_28 or older, no library outside the manylinux policy, no glibc
  symbol newer than 2.28);
- installs with its `[cpu]` extra into a fresh venv of its Python whose PATH
  has no gcc/cc/c++/nvcc and whose CC/CXX/CUDACXX point nowhere, binary
  packages only; torch is not importable there;
- passes `trm doctor` there (CUDA kernels present in a CUDA build but
  `cuda_available()` false on this GPU-less machine, CPU kernels used);
- runs `trm predict` on a phantom, agreeing with torch's prediction;
- runs the NumPy ops (both CPU kernel variants, bitwise equal) and agrees with
  the float64 torch reference, which runs here in the test environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import case_files, torch_labels

REPO = Path(__file__).resolve().parents[2]
BUILD_CACHE = Path(os.environ.get("TRM_BUILD_CACHE", Path.home() / ".cache" / "trmcore-build"))
MANYLINUX = bool(os.environ.get("TRM_WHEEL_DIR"))  # wheels of scripts/build_wheels.sh: check their policy too
PYTHONS = (os.environ.get("TRM_WHEEL_PYTHONS", "").split() if MANYLINUX else []) or [sys.executable]

pytestmark = pytest.mark.slow

# Run in the fresh venv: the NumPy ops on saved inputs, with both CPU kernel variants.
OPS_SCRIPT = """
import sys, numpy as np
from trmcore import ops
from trmcore.ops._native import native
assert "torch" not in sys.modules
data = np.load(sys.argv[1])
logits, labels, weights = data["logits"], data["labels"], data["weights"]
results = {}
for isa in ["baseline", "auto"]:
    native().set_cpu_isa(isa)
    joint = ops.leep_joint(logits, labels, num_classes=3)
    leep_map = ops.pixel_leep(logits, labels, joint)
    results[isa] = dict(joint=joint.sums, leep_map=leep_map, risk=ops.risk_map(leep_map, labels),
                        loss=np.float64(ops.risk_weighted_ce(logits[:, :3], labels, weights)))
for name in results["auto"]:
    assert np.array_equal(results["auto"][name], results["baseline"][name]), name
assert "torch" not in sys.modules
np.savez(sys.argv[2], **results["auto"])
native().set_cpu_isa("auto")
print("isa", native().cpu_isa(), "cuda", native().built_with_cuda(), native().cuda_available())
"""


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _interpreter(version: str) -> str:
    """An interpreter path for VERSION (a path, or X.Y looked up in pyenv as build_wheels.sh does)."""
    if "/" in version:
        return version
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob(f"{version}.*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    found = [p / "bin" / f"python{version}" for p in found if re.fullmatch(rf"{re.escape(version)}\.\d+", p.name)]
    if found and found[-1].exists():
        return str(found[-1])
    return shutil.which(f"python{version}") or pytest.skip(f"no CPython {version} here")


def _tag(python: str) -> str:
    return _run([python, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"]).stdout.strip()


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    if MANYLINUX:
        return Path(os.environ["TRM_WHEEL_DIR"])
    if os.environ.get("TRM_TEST_WHEEL"):
        wheel = Path(os.environ["TRM_TEST_WHEEL"])
        assert wheel.is_file(), f"TRM_TEST_WHEEL={wheel} is not a file"
        out = tmp_path_factory.mktemp("wheels")
        shutil.copy2(wheel, out / wheel.name)
        return out
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("no source tree to build a wheel from")
    out = tmp_path_factory.mktemp("wheels")
    env = dict(os.environ, TRMCORE_CUDA="OFF", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO], env=env, timeout=1800)
    return out


def _compiler_free_env(venv: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(venv / "bin")  # nothing else: no gcc, cc, c++, nvcc, ld
    for name in ("CC", "CXX", "CUDACXX"):
        env[name] = f"/nonexistent/{name.lower()}"
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "CMAKE_ARGS"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize("version", PYTHONS)
def test_wheel_installs_without_compiler(version, wheel_dir, phantom, run_dir, onnx_model, tmp_path):
    python = _interpreter(version)
    tag = _tag(python)
    kind = "manylinux" if MANYLINUX else ""
    wheels = sorted(wheel_dir.glob(f"trmcore-*-{tag}-{tag}-{kind}*.whl"))
    assert len(wheels) == 1, f"expected one {tag} {kind} wheel in {wheel_dir}, found {wheels}"
    wheel = wheels[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.match(r"trmcore/_C\..*\.so$", n) for n in names), "the wheel has no compiled extension"
    assert any(re.match(r"trmcore-[^/]+\.dist-info/licenses/LICENSE$", n) for n in names), "no LICENSE in the wheel"
    tools_python = BUILD_CACHE / "tools" / "bin" / "python"
    if MANYLINUX:  # auditwheel lives in build_wheels.sh's tools venv
        assert tools_python.exists(), f"no {tools_python}: scripts/build_wheels.sh makes it"
        _run([tools_python, REPO / "scripts" / "check_wheel.py", wheel])

    venv = tmp_path / "venv"
    _run([python, "-m", "venv", venv], timeout=300)
    env = _compiler_free_env(venv)
    py = venv / "bin" / "python"
    probe = "import shutil; print([c for c in ('gcc', 'cc', 'c++', 'g++', 'clang', 'nvcc') if shutil.which(c)])"
    assert _run([py, "-c", probe], env=env).stdout.strip() == "[]"
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary=:all:",
          f"{wheel}[cpu]"], env=env, cwd=tmp_path, timeout=1800)
    probe = "import importlib.util as u; print(u.find_spec('torch') is None)"
    assert _run([py, "-c", probe], env=env).stdout.strip() == "True", "torch is importable in the inference venv"

    doctor = _run([venv / "bin" / "trm", "doctor"], env=env, cwd=tmp_path)
    assert re.search(r"self-test\s+OK", doctor.stdout) and doctor.stdout.rstrip().endswith("OK"), doctor.stdout
    # the wheel's CPU detection picks AVX2 wherever the CPU has it (x86-64 Linux)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "avx2" if re.search(r"^flags\s*:.*\bavx2\b", flags, re.M) else "baseline"
    assert re.search(rf"CPU kernels\s+{isa} variant", doctor.stdout), doctor.stdout
    assert "CPUExecutionProvider" in doctor.stdout

    # predict: agrees with torch wherever the prediction is not a near tie
    out = tmp_path / "seg.nii.gz"
    inputs = case_files(phantom, "phantom_001")
    result = _run([venv / "bin" / "trm", "predict", "-m", onnx_model, "-i", inputs[0], "-o", out, "-q"],
                  env=env, cwd=tmp_path, timeout=600)
    assert "CPUExecutionProvider" in result.stderr
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, nib.load(str(inputs[0])).affine)
    expected, margin, _ = torch_labels(run_dir, phantom, "phantom_001")
    clear = margin > 1e-3
    assert np.array_equal(np.asarray(written.dataobj)[clear], expected[clear])

    # NumPy ops against the float64 torch reference
    import torch

    from trmcore.ops import reference

    rng = np.random.default_rng(5)
    logits = (3 * rng.normal(size=(3, 4, 37, 45))).astype(np.float32)
    labels = rng.integers(0, 3, size=(3, 37, 45))
    labels[1, :5] = -100
    weights = rng.uniform(1, 10, size=labels.shape).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", logits=logits, labels=labels, weights=weights)
    ops_run = _run([py, "-c", OPS_SCRIPT, tmp_path / "inputs.npz", tmp_path / "outputs.npz"], env=env, cwd=tmp_path)
    built_with_cuda = "cuda True" in ops_run.stdout
    if built_with_cuda:  # CUDA kernels in the wheel, no GPU here: CPU fallback, no import error
        assert ops_run.stdout.strip().endswith("cuda True False"), ops_run.stdout
    got = np.load(tmp_path / "outputs.npz")
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
    joint = reference.leep_joint(t_logits, t_labels, 3)
    leep_map = reference.pixel_leep(t_logits, t_labels, joint)
    np.testing.assert_allclose(got["joint"], joint.sums.numpy(), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(got["leep_map"], leep_map.numpy(), rtol=1e-4, atol=2e-4)
    risk = reference.risk_map(torch.from_numpy(got["leep_map"]).double(), t_labels)
    np.testing.assert_allclose(got["risk"], risk.numpy(), rtol=1e-4, atol=1e-5)
    loss = reference.risk_weighted_ce(t_logits[:, :3], t_labels, torch.from_numpy(weights))
    assert float(got["loss"]) == pytest.approx(float(loss), rel=1e-5)
    (tmp_path / "report.json").write_text(json.dumps({"wheel": wheel.name, "doctor": doctor.stdout}))

"""scripts/gpu_check.sh: the GPU path's commands (dry run), the no-GPU path, and the summary's figures.

The GPU path itself needs a GPU; these tests check what can be checked without
one, quickly: the commands the script would run, its exit codes, and that the
summary computes its figures (iterations/s, % of copy, test counts) correctly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
# What the device tool brings back: at most 8 files.
OUT_FILES = {"summary.md", "summary.json", "env.log", "build.log", "tests.log", "bench.log", "train.log"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils")


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(args, tmp_path, **env):
    environment = {**os.environ, "PYTHON": sys.executable, "TRM_GPU_WORK": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environment,
                          timeout=120)


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh", "build_inplace.sh"])
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dry_run_prints_the_gpu_path(tmp_path):
    out = tmp_path / "out"
    result = _run(["--dry-run", str(out)], tmp_path, TRM_CUDA_ARCH="90", TRM_WHEELS=str(tmp_path / "wheels"))
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    # the wheels of scripts/gpu_wheels.txt, from the wheels folder, never from an index
    assert f"--no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --find-links {tmp_path / 'wheels'}" in text
    assert "nibabel==" in text
    # one architecture, in place, with CUDA
    assert "CUDAARCHS=90 BUILD_DIR=build/gpu-sm90" in text and "scripts/build_inplace.sh --cuda" in text
    assert "-m cuda ." in text
    assert "benchmarks/bench_ops.py --device cuda --no-numpy --json" in text
    assert "phantom" in text and "train " in text
    for method in ("vanilla", "class-weight", "trs-map", "trm"):
        line = next(line for line in text.splitlines() if f">> finetune-{method} " in line)
        assert f"--method {method} " in line and "--device cuda --iterations 200 " in line
    assert "-m not\\ cuda\\ and\\ not\\ slow ." in text  # the rest of the suite last
    names = [line.split(">> ")[1].split(" (limit")[0] for line in text.splitlines() if ">> " in line]
    assert names == ["wheels", "imports", "build-cuda", "extension", "tests_cuda", "bench_ops", "phantom",
                     "train-source", "finetune-vanilla", "finetune-class-weight", "finetune-trs-map",
                     "finetune-trm", "tests_all"]
    assert {p.name for p in out.iterdir()} <= OUT_FILES
    summary = (out / "summary.md").read_text()
    assert "dry run: nothing was run" in summary and "Failed steps: none" in summary
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert [s["status"] for s in steps if s["name"] != "env"] == ["dry-run"] * len(names)


def test_bad_usage_exits_2(tmp_path):
    assert _run([], tmp_path).returncode == 2
    assert _run(["--frobnicate", str(tmp_path / "out")], tmp_path).returncode == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    result = _run([str(busy)], tmp_path)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (busy / "mine.txt").read_text() == "keep me"


def test_no_gpu_path_exits_0(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU path does not apply")
    out = tmp_path / "out"
    result = _run(["--no-build", str(out)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no GPU: skipped" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == []
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses["tests_cuda"] == statuses["bench_ops"] == statuses["training"] == "skipped (no GPU)"
    assert {p.name for p in out.iterdir()} <= OUT_FILES


def test_overwrite_replaces_only_the_checks_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "summary.md").write_text("stale")
    assert _run(["--dry-run", str(out)], tmp_path).returncode == 2  # an earlier check's folder needs --overwrite
    assert _run(["--dry-run", "--overwrite", str(out)], tmp_path).returncode == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert "dry run" in (out / "summary.md").read_text()


def _junit(path: Path, tests: int, failures: int, errors: int, skipped: int) -> None:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="{errors}" skipped="{skipped}"></testsuite></testsuites>')


def test_summary_figures(tmp_path):
    gpu_summary = _summary_module()
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    (work / "steps.tsv").write_text(
        "build-cuda\tok\t41\tsm_90\n"
        "tests_cuda\tFAILED (exit 1)\t12\t\n"
        "bench_ops\tok\t20\t\n"
        "finetune-trm\tok\t30\t\n"
        "finetune-vanilla\tTIMEOUT after 90s\t90\t\n"
        "tests_all\tskipped (time budget)\t0\t\n")
    (work / "meta.tsv").write_text("gpu\tNVIDIA H200\nmode\tGPU\n")
    _junit(work / "junit-tests_cuda.xml", tests=65, failures=2, errors=1, skipped=4)
    copy = {"ms": 0.5}
    (work / "bench.json").write_text(json.dumps({"device": "cuda", "gpu": "NVIDIA H200", "repeats": 7, "cases": [{
        "case": "N=1024 Z=C=4 240x240", "copy_ms": copy["ms"], "copy_gbps": 3800.0, "ops": {
            "leep_map": {"ms": 0.9, "gbps": 2736.0, "of_copy": 0.72, "eager_ms": 9.0, "vs_eager": 10.0},
            "loss_fwd_bwd": {"ms": 2.0, "gbps": 1900.0, "of_copy": 0.5, "eager_ms": 5.0, "vs_eager": 2.5}}}]}))
    run = work / "runs" / "trm"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"iterations_done": 200, "val_dice": 0.8123, "method": "trm"}))
    (run / "metrics.csv").write_text("iteration,loss,val_dice,val_dice_CSF,elapsed_s\n"
                                     "50,0.9,,,10.0\n100,0.5,,,20.0\n150,0.4,,,30.0\n200,0.35,0.8123,0.8123,45.0\n")
    summary = gpu_summary.write(work, out)

    assert summary["failed"] == ["tests_cuda", "finetune-vanilla"]
    assert summary["tests"]["tests_cuda"] == {"tests": 65, "failed": 2, "errors": 1, "skipped": 4, "passed": 58}
    trm = summary["runs"]["finetune-trm"]
    assert trm["it_per_s"] == pytest.approx(100 / 20.0)  # iterations 50-150: start-up and validation left out
    assert trm["final_loss"] == 0.35 and trm["val_dice"] == 0.8123 and trm["wall_s"] == 30.0
    assert "finetune-vanilla" not in summary["runs"]  # no run folder: nothing to report
    text = (out / "summary.md").read_text()
    assert "Failed steps: tests_cuda, finetune-vanilla" in text
    assert "- build time: build-cuda 41 s (sm_90)" in text
    assert "| tests_cuda | 58 | 2 | 1 | 4 |" in text
    assert "| N=1024 Z=C=4 240x240 | leep_map | 0.900 | 2736 | 72% | met | 9.000 | 10.0x |" in text
    assert "| N=1024 Z=C=4 240x240 | loss_fwd_bwd | 2.000 | 1900 | 50% | NOT met | 5.000 | 2.5x |" in text
    assert "| finetune-trm | 200 | 0.3500 | 0.8123 | 5.0 | 30 |" in text


def test_summary_rate_without_the_logged_window(tmp_path):
    gpu_summary = _summary_module()
    rows = [{"iteration": 20.0, "loss": 1.0, "elapsed_s": 8.0}]
    assert gpu_summary.steady_rate(rows) == pytest.approx(2.5)  # short runs: the whole run's rate
    assert gpu_summary.steady_rate([]) is None
    assert gpu_summary.junit_counts(tmp_path / "absent.xml") is None


def test_plain_cpu_machine_says_what_it_could_not_prepare_and_exits_0(tmp_path):
    """A system Python without torch, numpy or pybind11 and no wheels folder: no step fails, each is said."""
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(plain)], check=True, timeout=120)
    probe = subprocess.run([str(plain / "bin" / "python"), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("torch leaks into a bare venv here")
    out = tmp_path / "out"
    result = _run([str(out)], tmp_path, PYTHON=str(plain / "bin" / "python"), TRM_WHEELS=str(tmp_path / "none"))
    if "mode: no GPU" not in result.stdout:
        pytest.skip("this machine has a GPU: the no-GPU path does not apply")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no GPU: skipped" in result.stdout
    text = result.stdout
    assert "could not prepare: wheels: no wheels folder" in text
    assert "could not prepare: imports: not importable: numpy, torch" in text
    assert f"could not prepare: build-cpu: no pybind11 for {plain / 'bin' / 'python'}" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == []
    statuses = {s["name"]: s["status"] for s in summary["steps"]}
    assert statuses["wheels"] == statuses["build-cpu"] == "not prepared"
    assert statuses["imports"].startswith("not prepared")
    assert "could not prepare 4 step(s)" in (out / "summary.md").read_text() or not shutil.which("nvcc")

"""`trm` in real virtual environments: the base install, `[cpu]` only and `[train]` only.

Each venv is a plain ``python -m venv`` (no system site-packages, so nothing
of the test environment leaks in) holding the dependencies pyproject.toml
declares for the base install and one extra, pinned to the versions of the
test environment so that they come from the local wheels and caches. The
trmcore under test (this tree, with its compiled ``_C``) is copied alone into a
folder put on ``PYTHONPATH``; before any command, the venv is checked to
provide exactly the modules of its extras (``torch`` really cannot be found in
the base and `[cpu]` venvs, ``onnxruntime`` not in the `[train]` one).

In each venv: ``trm --help``, ``trm doctor``, and one invocation of every
command (three for ``evaluate``, two for ``export``). A command whose extras
are installed either works (checked on the deploy phantom and model) or
refuses bad input in one line with exit code 2; a command whose extra is
missing says which one to install, in one line, exit code 2. No traceback
anywhere.

Cost (2 cores): creating the venvs is most of it and cannot be avoided for a
real install: about 10 s each for the base and `[cpu]`, 60-90 s for `[train]`
(torch alone is ~900 MB unpacked). They are kept between sessions in
``$TRM_TEST_VENVS`` (default: ``<tmp>/trmcore-test-venvs``), keyed on the
Python version and the pinned requirements, and built under a lock, so that
parallel workers and later runs reuse them. The commands then take about
20 s per venv.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

import trmcore

from .conftest import case_files

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = REPO / "pyproject.toml"

# The modules each extra provides (independent of trmcore.extras, which is under test).
EXTRA_MODULES = {"train": ("torch", "safetensors", "onnx", "onnxscript"), "cpu": ("onnxruntime",),
                 "select": ("scipy", "networkx", "matplotlib")}
# venv -> the pyproject extras installed, and the extras whose modules that makes importable
# (`[train]` lists scipy, networkx and matplotlib too, so it provides `select`).
VENVS = {"core": ((), set()), "cpu": (("cpu",), {"cpu"}), "train": (("train",), {"train", "select"})}


def _requirements(extras: Sequence[str]) -> List[str]:
    """pyproject's base dependencies and those of ``extras``, pinned to this environment's versions."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    if not PYPROJECT.is_file():
        pytest.skip("no pyproject.toml: not a source tree")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pinned = []
    for requirement in requirements:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        try:  # the version tested here; it is on this machine, and an unpinned torch would pull CUDA
            # without a local label (2.13.0, not 2.13.0+cpu): `==2.13.0` still takes a local +cpu build first
            pinned.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(requirement)
    return sorted(pinned)


def _venv_root() -> Path:
    return Path(os.environ.get("TRM_TEST_VENVS") or Path(tempfile.gettempdir()) / "trmcore-test-venvs")


def _make_venv(requirements: List[str]) -> Path:
    """A plain venv with ``requirements``, built once per Python and requirement list (under a lock)."""
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:16]
    root = _venv_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / f"py{sys.version_info[0]}{sys.version_info[1]}-{key}"
    marker = venv / "trmcore-test-requirements.txt"
    with open(root / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and subprocess.run([str(venv / "bin" / "python"), "-c", "pass"]).returncode == 0:
            return venv
        shutil.rmtree(venv, ignore_errors=True)  # an interrupted build
        building = root / f"{venv.name}.building"
        shutil.rmtree(building, ignore_errors=True)
        # the base interpreter, not this venv's: `python -m venv` from a venv makes a plain venv of its base
        _check([sys.executable, "-m", "venv", building], timeout=300)
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        _check([building / "bin" / "python", "-m", "pip", "install", "-q", *requirements], env=env, timeout=1800)
        building.rename(venv)  # venv scripts use absolute paths: call bin/python, never bin/pip, after this
        marker.write_text("\n".join(requirements) + "\n")
    return venv


def _check(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="session")
def staged_trmcore(tmp_path_factory) -> Path:
    """A folder holding only the trmcore package under test (with its compiled _C)."""
    stage = tmp_path_factory.mktemp("staged-trmcore")
    shutil.copytree(Path(trmcore.__file__).parent, stage / "trmcore",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return stage


@dataclass
class Call:
    """One `trm` invocation: its arguments, the extras it needs, and what it must print when it works."""

    args: List[str]
    extras: Tuple[str, ...] = ()
    works: Optional[str] = None  # a text of stdout when it runs; None: it must refuse bad input (exit 2)


def _calls(tmp: Path, phantom: Path, onnx_model: Path, run_dir: Path) -> List[Call]:
    nope = str(tmp / "no-such-folder")
    afile = tmp / "a-file"
    afile.write_text("")
    image = str(case_files(phantom, "phantom_001")[0])
    data, model, run = str(phantom), str(onnx_model), str(run_dir)
    return [
        Call(["--help"], works="COMMAND"),
        Call(["doctor"], works="self-test"),
        Call(["phantom", str(tmp / "ph"), "--cases", "1", "--shape", "16", "16", "8", "-q"], works="labelled case"),
        Call(["import", "iseg", nope, str(tmp / "imported")]),
        Call(["import", "brats", nope, str(tmp / "imported")]),
        # the label files scored against themselves: Dice 1
        Call(["evaluate", data, "--labels", "CSF,GM", "--predictions", str(phantom / "labelsTr"), "-q"],
             works="  1.0000    1.0000    1.0000"),
        Call(["evaluate", data, "-m", model, "-q"], ("cpu",), works="Dice per volume"),
        Call(["evaluate", data, "-m", run, "--all", "-q"], ("train",), works="Dice per volume"),
        Call(["predict", "-m", model, "-i", image, "-o", str(tmp / "seg.nii.gz"), "-q"], ("cpu",), works=""),
        Call(["transferability", "-m", model, data, "--channel", "T1,T2", "--labels", "CSF,GM", "--cases",
              "phantom_000", "-q"], ("cpu",), works="LEEP"),
        Call(["export", run, "-o", str(tmp / "model.onnx")], ("train",), works="wrote"),
        Call(["export", run, "-o", str(tmp / "model-int8.onnx"), "--precision", "int8"], ("train", "cpu"),
             works="int8"),
        Call(["train", nope, "--channel", "T1", "--labels", "CSF", "-o", str(tmp / "run")], ("train",)),
        Call(["finetune", nope, "--channel", "T1", "--labels", "CSF", "--source", nope, "-o", str(tmp / "ft")],
             ("train",)),
        Call(["riskmap", nope, "--source", nope, "-o", str(tmp / "maps")], ("train",)),
        Call(["demo", "-o", str(afile)], ("train",)),
        Call(["rank", nope, "--channel", "T1", "--labels", "CSF", "--sources", nope], ("train", "select")),
        Call(["transfer-path", nope, "--source", nope, "--path", "a/T1/CSF,b/T1/CSF", "-o", str(tmp / "tp")],
             ("train",)),
        Call(["reproduce", "--data", nope, "-o", str(tmp / "study")], ("train", "select")),
        Call(["affinity", nope, "--tasks", "all", "-o", str(tmp / "affinity")], ("select",)),
        Call(["path", nope, "--target", "a/T1/CSF"], ("select",)),
    ]


def _env(stage: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=str(stage), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    return env


def _trm(venv: Path, stage: Path, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """`trm ARGS` as the console script pyproject declares (``trmcore.cli.main:main``) runs it."""
    launcher = "import sys; from trmcore.cli.main import main; sys.exit(main())"
    return subprocess.run([str(venv / "bin" / "python"), "-c", launcher, *args], capture_output=True, text=True,
                          env=_env(stage), cwd=cwd, timeout=600)


# Runs `trm` several times in one process (stdout and stderr captured per call, a traceback kept as text):
# the refusals each cost an interpreter start and, with [train], a torch import of seconds.
BATCH = """
import contextlib, io, json, sys, traceback
from trmcore.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


def _trm_batch(venv: Path, stage: Path, argvs: List[List[str]], cwd: Path) -> List[subprocess.CompletedProcess]:
    import json

    result = _check([venv / "bin" / "python", "-c", BATCH, json.dumps(argvs)], env=_env(stage), cwd=cwd,
                    timeout=600)
    return [subprocess.CompletedProcess(argv, code, out, err)
            for argv, (code, out, err) in zip(argvs, json.loads(result.stdout.splitlines()[-1]))]


def _problem(call: Call, installed: set, result: subprocess.CompletedProcess) -> Optional[str]:
    """What is wrong with one invocation's result (None: as it should be)."""
    name = call.args[0]
    missing = [extra for extra in call.extras if extra not in installed]
    err_lines = result.stderr.strip().splitlines()
    if "Traceback" in result.stderr:
        return f"traceback: {result.stderr[-1500:]}"
    if missing:
        hint = f"pip install 'trmcore[{missing[0]}]'"
        if result.returncode != 2 or len(err_lines) != 1 or not err_lines[0].startswith(f"trm {name}: error: needs ") \
                or hint not in err_lines[0]:
            return f"expected one line naming {hint}, exit 2; got {result.returncode}: {result.stderr[-500:]}"
        return None
    if call.works is None:
        errors = [line for line in err_lines if "error:" in line]
        if result.returncode != 2 or len(errors) != 1 or "not installed" in errors[0]:
            return f"expected one line refusing the bad input, exit 2; got {result.returncode}: {result.stderr[-500:]}"
        return None
    if result.returncode != 0 or call.works not in result.stdout:
        return f"expected it to work ({call.works!r}); got {result.returncode}: {result.stdout[-800:]} {result.stderr[-800:]}"
    return None


@pytest.mark.parametrize("name", [pytest.param(name, marks=[pytest.mark.slow] if name == "train" else [])
                                  for name in VENVS])
def test_every_command_works_or_names_its_extra(name, staged_trmcore, phantom, onnx_model, run_dir, tmp_path):
    extras, installed = VENVS[name]
    venv = _make_venv(_requirements(extras))
    # the venv is what it claims: exactly the modules of its extras are importable
    probe = (f"import importlib.util as u; mods = {sorted(m for ms in EXTRA_MODULES.values() for m in ms)!r}; "
             "print(sorted(m for m in mods if u.find_spec(m)))")
    found = _check([venv / "bin" / "python", "-c", probe], env={"PATH": "/usr/bin:/bin"}).stdout.strip()
    assert found == str(sorted(m for e in installed for m in EXTRA_MODULES[e])), f"{name} venv has {found}"

    calls = _calls(tmp_path, phantom, onnx_model, run_dir)
    # what must work, and `trm --help` / `trm doctor`, each in a process of its own as a user runs them;
    # the refusals (bad input, a missing extra) together in one
    alone = [c for c in calls if c.works is not None and set(c.extras) <= installed]
    together = [c for c in calls if c not in alone]
    results = {id(c): _trm(venv, staged_trmcore, c.args, tmp_path) for c in alone}
    results.update(zip(map(id, together), _trm_batch(venv, staged_trmcore, [c.args for c in together], tmp_path)))
    problems = {}
    outputs: Dict[str, subprocess.CompletedProcess] = {}
    for call in calls:
        result = results[id(call)]
        outputs.setdefault(" ".join(call.args[:2]), result)  # the first call of each
        problem = _problem(call, installed, result)
        if problem:
            problems[" ".join(call.args)] = problem
    assert not problems, f"{name} venv, {len(problems)} of {len(calls)} commands wrong:\n" + "\n".join(
        f"trm {k}\n    {v}" for k, v in problems.items())
    # every command of the parser was tried
    listed = set(re.findall(r"^    (\S+)", outputs["--help"].stdout, re.M))
    assert listed and listed <= {call.args[0] for call in calls}, listed
    doctor = outputs["doctor"].stdout
    assert doctor.rstrip().endswith("OK"), doctor
    for extra in ("train", "cpu", "select"):
        assert (f"missing" in next(line for line in doctor.splitlines() if line.startswith(f"extra [{extra}]"))) \
            == (extra not in installed), doctor
    if name == "train":  # [train] alone exports, unverified, and says so in one line
        assert "not verified against torch: onnxruntime is not installed" in outputs[f"export {run_dir}"].stdout
        assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "model-int8.onnx").exists()
    if name == "cpu":
        assert (tmp_path / "seg.nii.gz").is_file()


def test_dicom_in_and_seg_out_with_cpu_dicom_only(staged_trmcore, phantom, onnx_model, tmp_path):
    # `pip install "trmcore[cpu,dicom]"` is all a hospital needs for DICOM in and DICOM-SEG out: a real venv
    # with exactly those extras' dependencies (no torch), predicting a two-series oblique study.
    pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    from .test_dicom import PHANTOM_SPACING, _twins
    from .dicom_helpers import oblique_affine

    venv = _make_venv(_requirements(("cpu", "dicom")))
    probe = "import importlib.util as u; print([m for m in ('torch', 'pydicom', 'highdicom') if u.find_spec(m)])"
    found = _check([venv / "bin" / "python", "-c", probe], env={"PATH": "/usr/bin:/bin"}).stdout.strip()
    assert found == "['pydicom', 'highdicom']", found
    dicom, _, uids = _twins(tmp_path, phantom, oblique_affine(PHANTOM_SPACING))
    out = tmp_path / "out"
    result = _trm(venv, staged_trmcore, ["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(out), "-q",
                                         "--series", "T1=*t1*", "--series", "T2=*t2*", "--output-format", "both"],
                  tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (out / f"{uids[0]}.seg.dcm").is_file() and (out / f"{uids[0]}.nii.gz").is_file()

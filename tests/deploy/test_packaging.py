"""Packaging messages: missing optional dependencies, the onnxruntime conflict, `trm doctor`.

A missing module is simulated with ``sys.modules[name] = None``, which makes
both ``import name`` and ``importlib.util.find_spec(name)`` report it absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trmcore import extras
from trmcore.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def _without(monkeypatch, *modules):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def test_affinity_without_select_extra_fails_before_any_work(monkeypatch, capsys, tmp_path):
    _without(monkeypatch, "networkx", "matplotlib")
    out = tmp_path / "affinity"
    code = main(["affinity", str(tmp_path / "no-such-dataset"), "--tasks", "all", "-o", str(out)])
    assert code == 2
    line = _one_line_error(capsys)
    assert line == ("trm affinity: error: needs networkx, matplotlib, not installed: "
                    "pip install 'trmcore[select]'")
    assert not out.exists()  # checked before reading the data, so before computing any pair


def test_path_without_scipy_names_select_extra(monkeypatch, capsys, tmp_path):
    _without(monkeypatch, "scipy")
    assert main(["path", str(tmp_path), "--target", "a/T1/CSF"]) == 2
    assert _one_line_error(capsys).endswith("needs scipy, not installed: pip install 'trmcore[select]'")


def test_predict_without_onnxruntime_names_cpu_and_gpu_extras(monkeypatch, capsys, tmp_path):
    _without(monkeypatch, "onnxruntime")
    assert main(["predict", "-m", str(tmp_path / "m.onnx"), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    line = _one_line_error(capsys)
    assert line.startswith("trm predict: error: needs onnxruntime, not installed: pip install 'trmcore[cpu]'")
    assert "'trmcore[gpu]'" in line


@pytest.mark.parametrize("command", [["train", "DATA", "--channel", "T1", "--labels", "CSF", "-o", "RUN"],
                                     ["export", "RUN", "-o", "model.onnx"]])
def test_training_commands_without_torch_name_train_extra(command, monkeypatch, capsys, tmp_path):
    _without(monkeypatch, "torch")
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    assert _one_line_error(capsys) == f"trm {command[0]}: error: needs torch, not installed: pip install 'trmcore[train]'"
    assert list(tmp_path.iterdir()) == []


def test_module_missing_inside_a_command_is_reported_with_its_extra(monkeypatch, capsys):
    # A lazy import that the up-front check does not cover still ends in one line.
    def handler(args):
        import networkx  # noqa: F401  (absent)

    from trmcore.cli import main as cli_main

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["phantom"].set_defaults(func=handler)
    _without(monkeypatch, "networkx")
    assert main(["phantom", "out"]) == 2
    assert _one_line_error(capsys) == "trm phantom: error: needs networkx, not installed: pip install 'trmcore[select]'"


def test_extra_for_module():
    assert extras.extra_for_module("scipy.stats") == "select"
    assert extras.extra_for_module("torch") == "train"
    assert extras.extra_for_module("onnxruntime") == "cpu"
    assert extras.extra_for_module("yaml") is None
    assert extras.extra_for_module(None) is None


def test_pyproject_extras_match_the_table():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"] if (REPO / "pyproject.toml").exists() \
        else pytest.skip("no source tree")
    optional = project["optional-dependencies"]
    names = {extra: {req.split(">")[0].split("=")[0].split("[")[0].strip().replace("-", "_") for req in reqs}
             for extra, reqs in optional.items()}
    assert names["select"] == {"scipy", "networkx", "matplotlib"}  # torch-free
    assert set(extras.EXTRA_MODULES["train"]) <= names["train"]
    assert names["cpu"] == {"onnxruntime"} and names["gpu"] == {"onnxruntime_gpu"}
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()


def test_both_onnxruntime_builds_give_a_warning_and_fail_doctor(monkeypatch, capsys, tmp_path):
    versions = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.1"}
    monkeypatch.setattr(extras, "installed_version", lambda name: versions.get(name))
    assert main(["predict", "-m", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.nii.gz"),
                 "-o", str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("trm: warning: onnxruntime 1.20.0 and onnxruntime-gpu 1.20.1 are both installed")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "onnxruntime-gpu 1.20.1 are both installed" in out and out.rstrip().endswith("PROBLEMS FOUND (see above)")


def test_no_warning_with_one_onnxruntime(monkeypatch):
    monkeypatch.setattr(extras, "installed_version", lambda name: "1.20.0" if name == "onnxruntime" else None)
    assert extras.onnxruntime_conflict() is None


def test_doctor_reports_the_installation(monkeypatch, capsys):
    from trmcore.ops._native import native

    _without(monkeypatch, "torch")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    import trmcore

    assert out.startswith(f"trmcore         {trmcore.__version__} at ")
    assert f"CPU kernels     {native().cpu_isa()} variant" in out
    assert f"{native().default_num_threads()} threads" in out
    expected_cuda = "built in and usable" if native().built_with_cuda() and native().cuda_available() else (
        "built in, not usable here" if native().built_with_cuda() else "not built in")
    assert expected_cuda in out
    assert "self-test" in out and "OK: kernels agree with float64 NumPy" in out
    assert "extra [train]   missing torch (pip install 'trmcore[train]')" in out
    assert out.rstrip().endswith("OK")


def test_doctor_shows_the_forced_baseline_variant():
    env = dict(os.environ, TRMCORE_CPU_ISA="baseline", OMP_NUM_THREADS="3")
    result = subprocess.run([sys.executable, "-m", "trmcore.cli.main", "doctor"], capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "baseline variant" in result.stdout and "3 threads by default" in result.stdout


@pytest.mark.parametrize("argv, needed", [
    (["evaluate", "DATA", "--labels", "CSF", "--predictions", "pred"], ()),  # NumPy + nibabel only
    (["evaluate", "DATA", "-m", "model.onnx"], ("cpu",)),
    (["evaluate", "DATA", "-m", "MODEL.ONNX"], ("cpu",)),
    (["evaluate", "DATA", "-m", "runs/trm"], ("train",)),
    (["export", "RUN", "-o", "m.onnx"], ("train",)),  # written unverified without onnxruntime
    (["export", "RUN", "-o", "m.onnx", "--precision", "int8"], ("train", "cpu")),
    (["export", "RUN", "-o", "m.onnx", "--fp16"], ("train", "cpu")),
    (["predict", "-m", "m.onnx", "-i", "x", "-o", "y"], ("cpu",)),
    (["phantom", "out"], ()),
])
def test_extras_follow_the_arguments(argv, needed):
    from trmcore.cli.main import build_parser

    assert extras.command_extras(argv[0], build_parser().parse_args(argv)) == needed


def test_an_onnx_folder_is_a_run(tmp_path):
    (tmp_path / "odd.onnx").mkdir()
    assert extras.evaluate_source(tmp_path / "odd.onnx", None) == "run"
    assert extras.evaluate_source(tmp_path / "model.onnx", None) == "onnx"
    assert extras.evaluate_source(tmp_path / "model.onnx", tmp_path) == "predictions"


def test_parser_and_infer_import_no_optional_dependency():
    # `trm` builds its parser on the base install: nothing of torch, onnxruntime, scipy, networkx, matplotlib.
    code = ("import sys; import trmcore.infer; from trmcore.cli.main import build_parser; build_parser(); "
            "import trmcore.infer.evaluate_files; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'onnx', 'networkx', "
            "'matplotlib', 'safetensors'}))")
    env = dict(os.environ, PYTHONPATH=str(Path(extras.__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_infer_names_load_lazily_and_stay_functions():
    # The package attribute predict_files stays the function once its submodule of the same name is imported.
    code = ("import sys, inspect, trmcore.infer as infer; assert 'onnxruntime' not in sys.modules; "
            "import trmcore.infer.predict_files; from trmcore.infer import predict_files, Segmenter; "
            "assert inspect.isfunction(predict_files) and inspect.isfunction(infer.predict_files); "
            "assert inspect.isclass(Segmenter) and 'onnxruntime' in sys.modules; print(sorted(dir(infer))[:3])")
    env = dict(os.environ, PYTHONPATH=str(Path(extras.__file__).resolve().parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr

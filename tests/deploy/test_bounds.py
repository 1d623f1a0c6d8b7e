"""Issue 19: resource bounds and non-finite results on the deployment side.

Each hostile input is small on disk and declares something huge, endless or meaningless: a 4.7 MB
.nii.gz of 1024^3 voxels, a model that records 1e-6 mm voxels, ONNX graphs that build a 40000x40000
tensor (as a constant, or from the input's shape at run time), loop 10^15 times, run for minutes, carry
NaN weights or output NaN, and run.json files declaring a U-Net of depth 64, width 100000 or a divisor of
100000. Each must end with exit code 2 and one line naming the file (and the figure, for sizes); the
memory-heavy ones run in a subprocess under an address-space limit (RLIMIT_AS) so that a regression fails
instead of eating the machine, and under a timeout so that a hang fails instead of blocking the suite.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trmcore.cli.main import main
from trmcore.infer import ModelMetadata, Segmenter
from trmcore.infer.graph_check import check_model_file
from trmcore.limits import ResourceLimitError

from .conftest import CHANNELS, LABEL_NAMES, LABEL_VALUES, case_files

PYTHON_DIR = str(Path(__import__("trmcore").__file__).resolve().parents[1])
ADDRESS_SPACE = 3 * 2**30  # the subprocess's RLIMIT_AS: the budget follows it (75 %: 2.25 GiB)

# Every hostile input this module tries (the acceptance counts the bad-input cases).
BAD_INPUTS = [
    "nifti-1024^3-declared-in-4.7MB", "model-records-1e-6-mm-spacing", "onnx-constantofshape-40000x40000",
    "onnx-shape-from-input-16000x19200", "onnx-loop-10^15", "onnx-if-branch", "onnx-slow-graph-time-limit",
    "onnx-nan-output-predict", "onnx-nan-output-evaluate", "onnx-nan-weight", "run-nan-weights-evaluate",
    "run-nan-weights-export", "run.json-depth-64", "run.json-width-100000", "run.json-divisor-100000",
    "run.json-depth-12-width-4096-beyond-budget", "metadata-divisor-100000", "memory-limit-option-garbage",
    "time-limit-option-garbage", "nibabel-image-declares-beyond-budget",
]


# ------------------------------------------------------------------------------------------- helpers
def run_limited(*args, timeout: float = 120, address_space: int = ADDRESS_SPACE):
    """``trm ARGS`` in a subprocess limited to ``address_space`` bytes: (exit code, stderr lines)."""
    code = ("import resource, sys\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))\n"
            "from trmcore.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR, OMP_NUM_THREADS="1")
    env.pop("TRM_MEMORY_LIMIT", None)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, error_lines(proc.stderr)


def error_lines(stderr: str):
    """stderr without the model summary line ``trm predict`` prints before working."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("model ")]


def assert_one_line(code, lines, *words):
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "error:" in lines[0] and "Traceback" not in lines[0], lines
    for word in words:
        assert str(word) in lines[0], (word, lines[0])


def run_cli(capsys, *args):
    code = main([*map(str, args)])
    return code, error_lines(capsys.readouterr().err)


def metadata_props(**changes) -> dict:
    meta = ModelMetadata(channels=list(CHANNELS), label_names=list(LABEL_NAMES), label_values=list(LABEL_VALUES),
                         divisor=8, orientation="native", **changes)
    return meta.to_props()


def save_graph(path: Path, nodes, initializers=(), props=None) -> Path:
    """A [N, 2, H, W] -> [N, 3, H, W] graph with trmcore metadata (the one of the deploy fixtures)."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, "H", "W"])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph(list(nodes), "hostile", [image], [logits], initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    for key, value in (metadata_props() if props is None else props).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def three_channels():
    """image [N, 2, H, W] -> c3 [N, 3, H, W] with finite weights (a 1x1 convolution)."""
    weight = np.array([[[[1.0]], [[0.5]]], [[[0.2]], [[1.0]]], [[[-1.0]], [[0.3]]]], np.float32)
    return [helper.make_node("Conv", ["image", "w"], ["c3"])], [numpy_helper.from_array(weight, "w")]


def plus_scalar(scalar: str):
    """Nodes c3 + scalar -> logits, so that the scalar's computation must run."""
    return [helper.make_node("Add", ["c3", scalar], ["logits"])]


@pytest.fixture(scope="module")
def case_folder(phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bounds") / "in"
    folder.mkdir()
    for k, src in enumerate(case_files(phantom, "phantom_000")):
        shutil.copy(src, folder / f"phantom_000_{k:04d}.nii.gz")
    return folder


# ---------------------------------------------------------------------------------------- NIfTI size
def test_nifti_declaring_1024_cubed_is_refused_before_reading(onnx_model, tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 352
    first = tmp_path / "in" / "big_0000.nii.gz"
    first.parent.mkdir()
    with gzip.open(first, "wb", compresslevel=1) as handle:  # 1 GiB of zeros: 4.7 MB on disk
        handle.write(header.binaryblock + bytes(4))
        block = bytes(1 << 24)
        for _ in range(64):
            handle.write(block)
    assert first.stat().st_size < 6e6
    shutil.copy(first, first.with_name("big_0001.nii.gz"))
    start = time.monotonic()
    code, lines = run_limited("predict", "-q", "-m", onnx_model, "-i", first.parent, "-o", tmp_path / "out")
    assert_one_line(code, lines, first, "1024x1024x1024 voxels", "memory limit", "GiB")
    assert time.monotonic() - start < 60  # refused from the header, not after reading a gigabyte
    assert not (tmp_path / "out" / "big.nii.gz").exists()


def test_nibabel_image_beyond_budget_is_refused_before_get_fdata(onnx_model, tmp_path):
    from trmcore import limits

    header = nib.Nifti1Header()
    header.set_data_shape((256, 256, 256))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    path = tmp_path / "x.nii"
    path.write_bytes(header.binaryblock + bytes(4))  # header only: get_fdata would fail after allocating
    segmenter = Segmenter(onnx_model, providers="cpu")
    limits.set_memory_limit("32M")
    try:
        with pytest.raises(ResourceLimitError, match=r"x.nii: 256x256x256 voxels as float32 \(x2\) need 128.0 MiB"):
            segmenter.predict_volume([nib.load(str(path))] * 2)
    finally:
        limits.set_memory_limit(None)


def test_model_recording_microscopic_spacing_is_refused(onnx_model, case_folder, tmp_path):
    model = onnx.load(str(onnx_model))
    for entry in model.metadata_props:
        if entry.key == "trmcore":
            record = json.loads(entry.value)
            record["spacing"] = [1e-6, 1e-6, record["spacing"][2]]
            for step in record["preprocessing"]:  # the recorded pipeline says the same (else: "altered")
                if step["step"] == "resample":
                    step["spacing"] = record["spacing"]
            entry.value = json.dumps(record)
    hostile = tmp_path / "tiny-spacing.onnx"
    onnx.save(model, str(hostile))
    code, lines = run_limited("predict", "-q", "-m", hostile, "-i", case_folder, "-o", tmp_path / "out")
    assert_one_line(code, lines, case_folder / "phantom_000_0000.nii.gz", "resampling", "memory limit")


# ---------------------------------------------------------------------------------------- ONNX graphs
def test_constant_of_shape_40000_squared_is_refused(case_folder, tmp_path):
    conv, weights = three_channels()
    nodes = conv + [
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
    ] + plus_scalar("total")
    model = save_graph(tmp_path / "big.onnx", nodes, weights + [const("shape", [40000, 40000])])
    code, lines = run_limited("--memory-limit", "2G", "predict", "-q", "-m", model, "-i", case_folder,
                              "-o", tmp_path / "out")
    assert_one_line(code, lines, model, "ConstantOfShape", "40000x40000", "6.0 GiB", "2.0 GiB memory limit")


def test_tensor_sized_from_the_input_hits_the_arena_cap(case_folder, tmp_path):
    # The shape comes from the input at run time (H x 400, W x 400: 16000 x 19200 float32, 1.1 GiB): no static
    # check can see it; the arena capped at the budget (256 MiB) refuses it, although the address space
    # (3 GiB) would allow it.
    conv, weights = three_channels()
    nodes = conv + [
        helper.make_node("Shape", ["image"], ["dims"], start=2),
        helper.make_node("Mul", ["dims", "factor"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
    ] + plus_scalar("total")
    model = save_graph(tmp_path / "grows.onnx", nodes, weights + [const("factor", [400, 400])])
    code, lines = run_limited("--memory-limit", "256M", "predict", "-q", "-m", model, "-i", case_folder,
                              "-o", tmp_path / "out")
    assert_one_line(code, lines, model, "more memory than the 256.0 MiB memory limit")
    assert not (tmp_path / "out" / "phantom_000.nii.gz").exists()


def _loop_model(path: Path) -> Path:
    conv, weights = three_channels()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Abs", ["acc"], ["acc_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    nodes = conv + [helper.make_node("Loop", ["trip", "keep_going", "c3"], ["logits"], body=body)]
    return save_graph(path, nodes, weights + [const("trip", 10**15), const("keep_going", True, np.bool_)])


def test_endless_loop_is_refused(case_folder, tmp_path):
    model = _loop_model(tmp_path / "loop.onnx")
    start = time.monotonic()
    code, lines = run_limited("predict", "-q", "-m", model, "-i", case_folder, "-o", tmp_path / "out",
                              timeout=60)
    assert_one_line(code, lines, model, "control flow", "Loop")
    assert time.monotonic() - start < 60


def test_branches_are_refused(tmp_path):
    conv, weights = three_channels()
    branch = helper.make_graph([helper.make_node("Identity", ["c3"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    nodes = conv + [helper.make_node("If", ["flag"], ["logits"], then_branch=branch, else_branch=branch)]
    model = save_graph(tmp_path / "if.onnx", nodes, weights + [const("flag", True, np.bool_)])
    with pytest.raises(ValueError, match=r"if.onnx: the graph has control flow \(If\)"):
        Segmenter(model, providers="cpu")


def test_slow_graph_is_stopped_at_the_time_limit(case_folder, tmp_path, capsys):
    # 40 chained 2048x2048 matrix products built from the input (so onnxruntime cannot fold them at load):
    # minutes of work for one batch on one thread (1024x1024 took about 1 s on AVX-512 and could finish
    # inside the limit); --time-limit 1 stops it within seconds.
    conv, weights = three_channels()
    nodes = conv + [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0),
                    helper.make_node("Mul", ["mean", "zero"], ["nothing"]),  # zeros: the products stay finite
                    helper.make_node("Expand", ["nothing", "square"], ["m0"])]
    for k in range(40):
        nodes.append(helper.make_node("MatMul", [f"m{k}", f"m{k}"], [f"m{k + 1}"]))
    nodes += [helper.make_node("ReduceSum", ["m40"], ["total"], keepdims=0)] + plus_scalar("total")
    model = save_graph(tmp_path / "slow.onnx", nodes,
                       weights + [const("square", [2048, 2048]), const("zero", 0.0, np.float32)])
    start = time.monotonic()
    code, lines = run_cli(capsys, "predict", "-q", "--threads", "1", "--time-limit", "1", "-m", model,
                          "-i", case_folder, "-o", tmp_path / "out")
    elapsed = time.monotonic() - start
    assert_one_line(code, lines, model, "time limit", "1 s")
    assert elapsed >= 1
    assert elapsed < 30, elapsed
    assert not (tmp_path / "out" / "phantom_000.nii.gz").exists()
    from trmcore.cli.main import build_parser

    parser = build_parser()  # the other commands that run a model take the option too
    assert parser.parse_args(["transferability", "data", "-m", "m.onnx", "--channel", "T1", "--labels", "CSF",
                              "--time-limit", "30"]).time_limit == 30
    assert parser.parse_args(["evaluate", "data", "-m", "m.onnx", "--time-limit", "2.5"]).time_limit == 2.5
    with pytest.raises(SystemExit) as info:  # argparse's usage error
        main(["predict", "-q", "--time-limit", "soon", "-m", str(model), "-i", str(case_folder),
              "-o", str(tmp_path / "out")])
    assert info.value.code == 2 and "time limit must be a number of seconds" in capsys.readouterr().err


def _nan_output_model(path: Path) -> Path:
    conv, weights = three_channels()
    nodes = conv + [helper.make_node("Sub", ["c3", "c3"], ["zero"]),
                    helper.make_node("Div", ["c3", "zero"], ["logits"])]  # x / 0: inf, 0 / 0: NaN
    return save_graph(path, nodes, weights)


def test_nan_logits_fail_predict_and_evaluate(phantom, case_folder, tmp_path, capsys):
    model = _nan_output_model(tmp_path / "nan.onnx")
    code, lines = run_cli(capsys, "predict", "-q", "-m", model, "-i", case_folder, "-o", tmp_path / "out")
    assert_one_line(code, lines, model, "NaN or infinite")
    assert not (tmp_path / "out" / "phantom_000.nii.gz").exists()
    code, lines = run_cli(capsys, "evaluate", phantom, "-m", model, "-q", "--all", "-o", tmp_path / "dice.json")
    assert_one_line(code, lines, model, "NaN or infinite")
    assert not (tmp_path / "dice.json").exists()


def test_nan_weights_in_an_onnx_file_are_refused(tmp_path):
    weight = np.ones((3, 2, 1, 1), np.float32)
    weight[1, 0, 0, 0] = np.nan
    model = save_graph(tmp_path / "nanw.onnx", [helper.make_node("Conv", ["image", "w"], ["logits"])],
                       [numpy_helper.from_array(weight, "w")])
    with pytest.raises(ValueError, match=r"nanw.onnx: weight tensor w holds NaN"):
        Segmenter(model, providers="cpu")


def test_exported_models_pass_the_graph_check(onnx_model):
    check_model_file(onnx_model)  # no control flow, finite weights, sizes within any budget
    segmenter = Segmenter(onnx_model, providers="cpu")
    assert segmenter.time_limit == 600.0


# -------------------------------------------------------------------------------------------- runs
def _nan_run(run_with_data: Path, tmp_path: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    run = tmp_path / "nan-run"
    shutil.copytree(run_with_data, run)
    state = load_file(str(run / "model.safetensors"))
    name = sorted(k for k in state if state[k].dtype.kind == "f")[0]
    state[name] = state[name].copy()
    state[name].flat[0] = np.nan
    save_file(state, str(run / "model.safetensors"))
    return run


def test_nan_weights_in_a_run_fail_evaluate_and_export(phantom, run_with_data, tmp_path, capsys):
    run = _nan_run(run_with_data, tmp_path)
    weights = run / "model.safetensors"
    code, lines = run_cli(capsys, "evaluate", phantom, "-m", run, "-q", "--all", "-o", tmp_path / "dice.json")
    assert_one_line(code, lines, weights, "NaN or infinite")
    code, lines = run_cli(capsys, "export", run, "-o", tmp_path / "m.onnx")
    assert_one_line(code, lines, weights, "NaN or infinite")
    assert not (tmp_path / "dice.json").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("field, value, words", [
    ("depth", 64, "UNetConfig.depth must be an integer from 1 to 12, got 64"),
    ("width", 100000, "UNetConfig.width must be an integer from 1 to 4096, got 100000"),
    ("divisor", 100000, "divisor must be between 1 and 4096"),
    ("depth+width", (12, 4096), "a U-Net of depth 12 and width 4096"),
])
def test_run_json_declaring_a_huge_network_is_refused(run_dir, tmp_path, capsys, field, value, words):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = json.loads((run / "run.json").read_text())
    if field == "divisor":
        record["divisor"] = value
    elif field == "depth+width":
        record["model"]["depth"], record["model"]["width"] = value
    else:
        record["model"][field] = value
    (run / "run.json").write_text(json.dumps(record))
    if field == "depth":  # once under RLIMIT_AS, so that a regression fails instead of allocating
        code, lines = run_limited("export", run, "-o", tmp_path / "m.onnx", timeout=120)
    else:
        code, lines = run_cli(capsys, "export", run, "-o", tmp_path / "m.onnx")
    assert_one_line(code, lines, run / "run.json", words)
    assert not (tmp_path / "m.onnx").exists()


def test_metadata_divisor_is_bounded(tmp_path):
    props = metadata_props()
    record = json.loads(props["trmcore"])
    record["divisor"] = 100000
    props["trmcore"] = json.dumps(record)
    conv, weights = three_channels()
    model = save_graph(tmp_path / "div.onnx", conv + [helper.make_node("Identity", ["c3"], ["logits"])], weights,
                       props=props)
    with pytest.raises(ValueError, match=r"div.onnx: invalid trmcore metadata: metadata size divisor must be "
                                         r"between 1 and 4096"):
        Segmenter(model, providers="cpu")


def test_memory_limit_option(capsys, case_folder, tmp_path, onnx_model):
    code, lines = run_cli(capsys, "--memory-limit", "lots", "doctor")
    assert_one_line(code, lines, "memory limit must be a size")
    # A tiny budget refuses the model file itself (its weights), naming the file and the option.
    code, lines = run_cli(capsys, "--memory-limit", "64K", "predict", "-q", "-m", onnx_model, "-i", case_folder,
                          "-o", tmp_path / "out")
    assert_one_line(code, lines, onnx_model, "64.0 KiB memory limit", "--memory-limit")
    # Between what the file costs to read (20 bytes a voxel) and what segmenting it costs (60): refused by the
    # segmenter's estimate, still naming the file.
    conv, weights = three_channels()
    small = save_graph(tmp_path / "small.onnx", conv + [helper.make_node("Identity", ["c3"], ["logits"])], weights)
    code, lines = run_cli(capsys, "--memory-limit", "512K", "predict", "-q", "-m", small, "-i", case_folder,
                          "-o", tmp_path / "out")
    assert_one_line(code, lines, case_folder / "phantom_000_0000.nii.gz", "36x44x10 voxels", "(x15)",
                    "512.0 KiB memory limit")
    assert main(["--memory-limit", "16G", "predict", "-q", "-m", str(onnx_model), "-i", str(case_folder),
                 "-o", str(tmp_path / "out")]) == 0

"""Malformed JSON files given to the real ``trm`` commands (issue 19, "Malformed JSON and headers").

Every crafted file goes through the command that reads it (in-process ``trmcore.cli.main.main``) and
must give exit code 2, exactly one line on stderr naming the file and the field, and no traceback
(``main`` returning at all means no exception escaped). The cases are module-level lists the suite
counts: :data:`BAD_JSON_CASES` (JSON files), :data:`FILE_IN_THE_WAY_CASES` and
:data:`PERMISSION_CASES` (error causes). Permission cases need a process that file modes stop: root
runs them through ``setpriv`` with the capabilities that bypass file modes dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pytest

from trmcore.cli.main import main

DEEP = "[" * 100_000 + "]" * 100_000  # json.loads alone: RecursionError


@dataclass(frozen=True)
class Case:
    """One crafted file: ``change`` edits the valid record (a callable on a copy of the dict), or edits the
    valid text (``text=True``: a callable str -> str), or is the whole file content (str or bytes)."""

    name: str
    change: Union[Callable[[Any], Any], str, bytes]
    expect: Sequence[str]  # fragments of the one error line besides the file name
    text: bool = False
    readers: Sequence[str] = ("affinity", "predict")  # dataset.json: the commands that refuse it


def _set(path: str, value: Any) -> Callable[[Any], None]:
    """Set ``value`` at a dotted ``path`` (``"model.depth"``, ``"tasks.0.channels"``) of the record."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def change(record: Any) -> None:
        target = record
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def _drop(key: str) -> Callable[[Any], None]:
    return lambda record: record.pop(key)


def _first_key(key: str, value: str) -> Callable[[str], str]:
    return lambda t: t.replace("{", "{" + json.dumps(key) + ": " + value + ", ", 1)


def _deep(key: str = "deep") -> Callable[[str], str]:
    return _first_key(key, DEEP)


NAN, INF = float("nan"), float("inf")

DATASET_CASES = [
    Case("deep nesting", _deep("notes"), ["nest more than"], text=True),
    Case("a list, not an object", "[1, 2, 3]", ["expected an object, got a list"]),
    Case("channel_names a list", _set("channel_names", ["T1", "T2"]), ["channel_names: expected"]),
    Case("channel key not a number", _set("channel_names", {"0": "T1", "x": "T2"}), ["channel_names: key 'x'"]),
    Case("channel name a number", _set("channel_names", {"0": "T1", "1": 2}), ["channel_names.1"]),
    Case("label Infinity", _set("labels.CSF", INF), ["labels.CSF", "inf"]),
    Case("label NaN", _set("labels.GM", NAN), ["labels.GM", "nan"]),
    Case("label a huge integer", _set("labels.CSF", 10 ** 30), ["labels.CSF", "31 digits"]),
    Case("label a string", _set("labels.CSF", "1"), ["labels.CSF", "'1'"]),
    Case("label a float", _set("labels.WM", 3.5), ["labels.WM", "3.5"]),
    Case("label name with a newline", _set("labels", {"background": 0, "C\nSF\nX": "x"}),
         ["labels['C\\nSF\\nX']"]),  # still one line
    Case("region with a negative value", _set("labels.WM", [3, -1]), ["labels.WM"]),
    # a guard: the meaning checks after the schema (predict needs no labels)
    Case("labels missing", _drop("labels"), ["'labels' must be a non-empty object"], readers=("affinity",)),
    Case("file_ending a number", _set("file_ending", 5), ["file_ending: expected"]),
    Case("file_ending with a slash", _set("file_ending", "./../x.nii.gz"), ["file_ending"]),
    Case("sites a list", _set("sites", ["site-A"]), ["sites: expected an object"]),
    Case("site an object", _set("sites.phantom_000", {"a": 1}), ["sites.phantom_000"]),
    Case("name an object", _set("name", {"x": 1}), ["name: expected"]),
    Case("duplicate key", _first_key("file_ending", '".nii"'), ["'file_ending' appears twice"], text=True),
    Case("not UTF-8", b'{"name": "\xff\xfe"}', ["not UTF-8"]),
    Case("truncated", '{"channel_names": {"0": "T1"', ["not valid JSON", "(line 1, column"]),
    Case("integer beyond Python's digit limit", lambda t: t.replace('"CSF": 1', '"CSF": ' + "9" * 5000),
         ["not valid JSON", "4300"], text=True),
]

RUN_CASES = [
    Case("deep nesting", _deep("risk_diagnostics"), ["nest more than"], text=True),
    Case("a list, not an object", "[]", ["expected an object, got a list"]),
    Case("model missing", _drop("model"), ["'model' is missing"]),
    Case("model a list", _set("model", [1, 2]), ["model: expected an object, got a list"]),
    Case("depth a float", _set("model.depth", 64.5), ["model.depth: expected an integer, got 64.5"]),
    Case("depth a string", _set("model.depth", "4"), ["model.depth", "'4'"]),
    Case("depth negative", _set("model.depth", -3), ["model", "depth", "-3"]),
    Case("width NaN", _set("model.width", NAN), ["model.width", "nan"]),
    Case("norm unknown", _set("model.norm", "weird"), ["model", "norm", "'weird'"]),
    Case("lr Infinity", _set("training.lr", INF), ["training.lr", "inf"]),
    Case("iterations NaN", _set("training.iterations", NAN), ["training.iterations", "nan"]),
    Case("training a string", _set("training", "fast"), ["training: expected an object"]),
    Case("divisor huge", _set("divisor", 10 ** 30), ["divisor", "beyond 64-bit"]),
    Case("axis out of range", _set("axis", 7), ["axis: expected an integer from 0 to 2, got 7"]),
    Case("label value a string", _set("label_values", [0, "x", 2]), ["label_values[1]", "'x'"]),
    Case("label names a string", _set("label_names", "background"), ["label_names: expected"]),
    Case("channels an object", _set("channels", {"0": "T1"}), ["channels: expected"]),
    Case("spacing of two values", _set("spacing", [1.0, 1.0]), ["spacing: expected a list of exactly 3"]),
    Case("spacing Infinity", _set("spacing", [1.0, INF, 1.0]), ["spacing[1]"]),
    Case("normalization unknown", _set("normalization", "minmax"), ["normalization: expected one of"]),
    Case("iterations_done a float", _set("iterations_done", 1.5), ["iterations_done"]),
    Case("val_dice a string", _set("val_dice", "high"), ["val_dice"]),
    Case("duplicate key", _first_key("axis", "0"), ["'axis' appears twice"], text=True),
]

METADATA_CASES = [
    Case("deep nesting", lambda t: t.replace('"provenance": {', '"provenance": {"x": ' + DEEP + ", ", 1),
         ["nest more than"], text=True),
    Case("a list, not an object", "[]", ["expected an object, got a list"]),
    Case("divisor a float", _set("divisor", 64.5), ["divisor: expected an integer, got 64.5"]),
    Case("divisor null", _set("divisor", None), ["divisor: expected an integer, got null"]),
    Case("axis NaN", _set("axis", NAN), ["axis: expected an integer", "nan"]),
    Case("label value a string", _set("label_values", [0, "10", 150]), ["label_values[1]", "'10'"]),
    Case("label value huge", _set("label_values", [0, 10 ** 40, 150]), ["label_values[1]"]),
    Case("channels an object", _set("channels", {}), ["channels: expected"]),
    Case("spacing Infinity", _set("spacing", [1.0, INF, 1.0]), ["spacing[1]", "inf"]),
    Case("provenance a list", _set("provenance", []), ["provenance: expected an object"]),
    Case("provenance field a number", _set("provenance.run", 3), ["provenance.run"]),
    Case("unknown key", _set("shape", [1, 2]), ["unknown key 'shape'"]),
    Case("label_names missing", _drop("label_names"), ["'label_names' is missing"]),
    Case("schema_version a string", _set("schema_version", "3"), ["schema_version", "'3'"]),
    Case("duplicate key", _first_key("axis", "2"), ["'axis' appears twice"], text=True),
    Case("truncated", '{"channels": ["T1"', ["not valid JSON", "(line 1, column"]),
]

AFFINITY_CASES = [
    Case("deep nesting", _deep("config"), ["nest more than"], text=True),
    Case("tasks an object", _set("tasks", {"a": 1}), ["tasks: expected"]),
    Case("task channels a string", _set("tasks.0.channels", "T1"), ["tasks[0].channels"]),
    Case("task site with a slash", _set("tasks.1.site", "a/b"), ["tasks[1].site"]),
    Case("n_cases negative", _set("tasks.1.n_cases", -1), ["tasks[1].n_cases"]),
    Case("n_sampled missing", lambda r: r["tasks"][0].pop("n_sampled"), ["tasks[0]", "'n_sampled'"]),
    Case("W NaN", _set("W.0.1", NAN), ["W[0][1]", "nan"]),
    Case("W not square", _set("W", [[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]), ["W: expected a 2 x 2 matrix"]),
    Case("S missing", _drop("S"), ["'S' is missing"]),
    Case("alpha a string", _set("alpha", "x"), ["alpha", "'x'"]),
    Case("beta Infinity", _set("beta", INF), ["beta", "inf"]),
    Case("duplicate key", _first_key("alpha", "1"), ["'alpha' appears twice"], text=True),
]

FIT_CASES = [
    Case("deep nesting", _deep(), ["nest more than"], text=True),
    Case("alpha NaN", _set("alpha", NAN), ["alpha", "nan"]),
    Case("n_results a float", _set("n_results", 1.5), ["n_results", "1.5"]),
    Case("correlation a list", _set("correlation", [0.5]), ["correlation"]),
    Case("beta missing", _drop("beta"), ["'beta' is missing"]),
]

TASKS_FILE_CASES = [
    Case("not UTF-8", b"site-A/T1/CSF\n\xff\xfe\x00\x81", ["not UTF-8"]),
    Case("not a task", "site-A/T1\n", ["not-a-task.txt:1", "SITE/CHANNELS/LABELS"]),  # a guard
]

CSV_CASES = [  # sites CSV (trm affinity --sites-csv) and results CSV (trm affinity fit --results)
    Case("not UTF-8", b"case,site\nphantom_000,\xff\xfe\n", ["not UTF-8"]),
    Case("a field beyond the csv limit", "case,site\nphantom_000," + "x" * 200_000 + "\n", ["not a readable CSV table"]),
]

#: Every crafted JSON (or tasks / CSV) file the suite tries, by reader.
BAD_JSON_CASES = ([("dataset.json", c) for c in DATASET_CASES] + [("run.json", c) for c in RUN_CASES]
                  + [("onnx metadata", c) for c in METADATA_CASES] + [("affinity.json", c) for c in AFFINITY_CASES]
                  + [("fit.json", c) for c in FIT_CASES] + [("tasks file", c) for c in TASKS_FILE_CASES]
                  + [("sites CSV", c) for c in CSV_CASES] + [("results CSV", c) for c in CSV_CASES])


def _crafted(valid: Any, case: Case) -> bytes:
    if isinstance(case.change, bytes):
        return case.change
    if isinstance(case.change, str):
        return case.change.encode()
    if case.text:
        return case.change(json.dumps(valid)).encode()
    record = json.loads(json.dumps(valid))
    case.change(record)
    return json.dumps(record).encode()  # NaN and Infinity written as the literals a hand-edited file may hold


def _one_line_error(capsys, argv: Sequence[Any], names: Sequence[str]) -> str:
    """Run ``trm argv``; assert exit code 2 and one stderr line holding every fragment of ``names``."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    # One error line; the only other stderr line a command may print first is predict's "model M: ..." summary.
    errors = [line for line in lines if line.startswith("trm ")]
    assert len(errors) == 1 and all(line.startswith("model ") for line in lines if line not in errors), captured.err
    for fragment in names:
        assert fragment in errors[0], errors[0]
    return errors[0]


# ------------------------------------------------------------------------------------------- fixtures
CHANNELS, LABEL_NAMES, LABEL_VALUES = ["T1", "T2"], ["background", "CSF", "GM"], [0, 1, 2]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("json") / "data", n_cases=2, sites=2, size=(16, 16, 8), seed=0,
                        progress=False)


def _onnx_model(path: Path, record: Optional[str] = None) -> Path:
    """A tiny valid trmcore model (a 1x1 convolution, 2 channels -> 3 classes); ``record`` replaces its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trmcore.infer.metadata import METADATA_KEY, ModelMetadata

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 2, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelMetadata(channels=CHANNELS, label_names=LABEL_NAMES, label_values=LABEL_VALUES, divisor=1,
                         orientation="RAS", spacing=[1.0, 1.0, 1.0], normalization="zscore-foreground")
    for key, value in meta.to_props().items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, (record if key == METADATA_KEY and record is not None else value)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return _onnx_model(tmp_path_factory.mktemp("json") / "model.onnx")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import torch

    from trmcore.models import UNet, UNetConfig
    from trmcore.training import RunInfo
    from trmcore.training.checkpoint import save_run

    torch.manual_seed(0)
    config = UNetConfig(in_channels=2, num_classes=3, depth=2, width=4)
    info = RunInfo(model=config, channels=CHANNELS, label_names=LABEL_NAMES, label_values=LABEL_VALUES, divisor=4,
                   orientation="RAS", spacing=[1.0, 1.0, 1.0], method="trm", val_dice=float("nan"),
                   risk_diagnostics={"note": "NaN is how trmcore records a class without voxels", "x": float("nan")})
    from trmcore.training import TrainConfig

    info.training = TrainConfig(iterations=2, method="trm")
    return save_run(tmp_path_factory.mktemp("json") / "run", UNet(config), info)


VALID_AFFINITY = {
    "tasks": [{"name": "site-A/T1/CSF", "site": "site-A", "channels": ["T1"], "labels": ["CSF"], "n_cases": 1,
               "n_sampled": 1},
              {"name": "site-B/T1/CSF", "site": "site-B", "channels": ["T1"], "labels": ["CSF"], "n_cases": 1,
               "n_sampled": 1}],
    "alpha": 0.0044, "beta": 2.4756, "W": [[0.0, 1.0], [1.0, 0.0]], "S": [[1.0, 0.5], [0.5, 1.0]],
    "d": [[0.0, 1.2], [1.2, 0.0]], "config": {"size": 16},
}
VALID_FIT = {"alpha": 0.5, "beta": 1.0, "correlation": float("nan"), "default_correlation": -0.5, "n_results": 3}


def test_the_valid_files_are_read(phantom, onnx_model, run_dir, tmp_path):
    """The unmodified records pass (so each bad case fails because of its one change), NaN scores included."""
    from trmcore.data import DatasetLayout
    from trmcore.infer.metadata import ModelMetadata
    from trmcore.selection.affinity import AffinityResult
    from trmcore.selection.fit import load_fit
    from trmcore.training.runinfo import read_run_info

    assert DatasetLayout.read(phantom).labels["WM"] == 3
    assert np.isnan(read_run_info(run_dir).val_dice)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}
    assert ModelMetadata.from_props(props, str(onnx_model)).channels == CHANNELS
    assert ModelMetadata.from_json(ModelMetadata(CHANNELS, LABEL_NAMES, LABEL_VALUES).to_json()).divisor == 16
    (tmp_path / "affinity.json").write_text(json.dumps(VALID_AFFINITY))
    (tmp_path / "fit.json").write_text(json.dumps(VALID_FIT))
    assert AffinityResult.load(tmp_path).names == ["site-A/T1/CSF", "site-B/T1/CSF"]
    assert np.isnan(load_fit(tmp_path).correlation)


# ------------------------------------------------------------------------------------ the bad files
@pytest.mark.parametrize("case, command", [(c, r) for c in DATASET_CASES for r in c.readers],
                         ids=[f"{c.name}-{r}" for c in DATASET_CASES for r in c.readers])
def test_bad_dataset_json(phantom, onnx_model, tmp_path, capsys, case, command):
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    valid = json.loads((phantom / "dataset.json").read_text())
    (data / "dataset.json").write_bytes(_crafted(valid, case))
    if command == "affinity":
        argv = ["affinity", data, "--tasks", "all", "-o", tmp_path / "out", "-q"]
    else:  # predict reads the channel names of a dataset.json beside the input folder
        argv = ["predict", "-m", onnx_model, "-i", data / "imagesTr", "-o", tmp_path / "out", "-q"]
    _one_line_error(capsys, argv, [str(data / "dataset.json"), *case.expect])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", RUN_CASES, ids=lambda c: c.name)
def test_bad_run_json(run_dir, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "run.json").write_bytes(_crafted(json.loads((run_dir / "run.json").read_text()), case))
    _one_line_error(capsys, ["export", run, "-o", tmp_path / "model.onnx"], [str(run / "run.json"), *case.expect])
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("case", METADATA_CASES, ids=lambda c: c.name)
def test_bad_onnx_metadata(phantom, onnx_model, tmp_path, capsys, case):
    import onnx

    from trmcore.infer.metadata import METADATA_KEY

    valid = json.loads({p.key: p.value for p in onnx.load(str(onnx_model)).metadata_props}[METADATA_KEY])
    model = _onnx_model(tmp_path / "crafted.onnx", _crafted(valid, case).decode("utf-8"))
    argv = ["predict", "-m", model, "-i", phantom / "imagesTr", "-o", tmp_path / "out", "-q"]
    _one_line_error(capsys, argv, [str(model), "trmcore metadata", *case.expect])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", AFFINITY_CASES, ids=lambda c: c.name)
def test_bad_affinity_json(tmp_path, capsys, case):
    (tmp_path / "affinity.json").write_bytes(_crafted(VALID_AFFINITY, case))
    _one_line_error(capsys, ["path", tmp_path, "--target", "site-A/T1/CSF", "-o", tmp_path / "out"],
                    [str(tmp_path / "affinity.json"), *case.expect])


@pytest.mark.parametrize("case", FIT_CASES, ids=lambda c: c.name)
def test_bad_fit_json(tmp_path, capsys, case):
    (tmp_path / "affinity.json").write_text(json.dumps(VALID_AFFINITY))
    (tmp_path / "fit.json").write_bytes(_crafted(VALID_FIT, case))
    _one_line_error(capsys, ["path", tmp_path, "--target", "site-A/T1/CSF", "--fit", "-o", tmp_path / "out"],
                    [str(tmp_path / "fit.json"), *case.expect])


@pytest.mark.parametrize("case", TASKS_FILE_CASES, ids=lambda c: c.name)
def test_bad_tasks_file(phantom, tmp_path, capsys, case):
    tasks = tmp_path / "not-a-task.txt"
    tasks.write_bytes(_crafted(None, case))
    _one_line_error(capsys, ["affinity", phantom, "--tasks", tasks, "-o", tmp_path / "out", "-q"],
                    [str(tasks), *case.expect])


@pytest.mark.parametrize("reader", ["sites", "results"])
@pytest.mark.parametrize("case", CSV_CASES, ids=lambda c: c.name)
def test_bad_csv_file(phantom, tmp_path, capsys, case, reader):
    table = tmp_path / "table.csv"
    table.write_bytes(_crafted(None, case))
    if reader == "sites":
        argv = ["affinity", phantom, "--tasks", "all", "--sites-csv", table, "-o", tmp_path / "out", "-q"]
    else:
        (tmp_path / "aff").mkdir()
        (tmp_path / "aff" / "affinity.json").write_text(json.dumps(VALID_AFFINITY))
        argv = ["affinity", "fit", tmp_path / "aff", "--results", table]
    _one_line_error(capsys, argv, [str(table), *case.expect])


def test_a_deeply_nested_output_marker_is_refused_in_one_line(tmp_path, capsys):
    """``--overwrite`` reads the folder's marker: a hostile one is "not made by trm", not a RecursionError."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".trm-output.json").write_text('{"command": "phantom", "owned": ' + DEEP + "}")
    (out / "keep.txt").write_text("not ours")
    _one_line_error(capsys, ["phantom", out, "--overwrite", "-q"], [str(out), "was not made by"])
    assert (out / "keep.txt").read_text() == "not ours"


def test_study_files_with_deep_nesting_or_nan_where_a_number_is(tmp_path):
    """study.json and the study cache are read with their schemas: ValueError naming the file, no RecursionError."""
    from trmcore.study.study import read_study_json

    (tmp_path / "study.json").write_text('{"profile": {"name": "x"}, "datasets": ' + DEEP + "}")
    with pytest.raises(ValueError, match="study.json: objects and lists nest more than"):
        read_study_json(tmp_path)
    (tmp_path / "study.json").write_text('{"profile": {"name": "x"}, "datasets": {"tissue": 3}}')
    with pytest.raises(ValueError, match=r"study.json: datasets.tissue: expected a string"):
        read_study_json(tmp_path)
    (tmp_path / "study.json").write_text('{"profile": {"dice": NaN}, "datasets": {"tissue": null}}')
    assert read_study_json(tmp_path)["datasets"] == {"tissue": None}  # NaN in a record trmcore wrote itself


# ------------------------------------------------------------------------------------- the reader itself
def test_reader_limits_without_recursion():
    from trmcore.schema import Int, JsonFileError, List, Object, parse_json

    assert parse_json("[" * 32 + "]" * 32, "f") == parse_json("[" * 32 + "]" * 32, "f")
    with pytest.raises(JsonFileError, match="f: objects and lists nest more than 32"):
        parse_json("[" * 33 + "]" * 33, "f")
    # brackets inside strings do not count, escaped quotes do not end a string
    assert parse_json(json.dumps({"a": "[" * 5000 + '\\"' + "{" * 5000}), "f")["a"].startswith("[[")
    with pytest.raises(JsonFileError, match="f: not valid JSON: objects and lists nest more than 32"):
        parse_json("[" * 100_000, "f")  # brackets that never close: json.loads's RecursionError, caught
    with pytest.raises(JsonFileError, match=r"f: not valid JSON: .*\(line 1, column 5\)"):
        parse_json("[[1]}", "f")
    with pytest.raises(JsonFileError, match="more than the 100 a trmcore JSON file may have"):
        parse_json("[" + "1," * 60 + "1]", "f", max_bytes=100)
    schema = Object({"n": Int(1, 8), "xs": List(Int(), max_len=2)}, required=("n",))
    with pytest.raises(JsonFileError, match=r"^f: n: expected an integer from 1 to 8, got true$"):
        parse_json('{"n": true}', "f", schema)
    with pytest.raises(JsonFileError, match=r"^f: xs: expected a list of 0 to 2 entries"):
        parse_json('{"n": 1, "xs": [1, 2, 3]}', "f", schema)
    with pytest.raises(JsonFileError, match=r"f: xs\[1\]: expected an integer, got -Infinity|f: xs\[1\]: .*-inf"):
        parse_json('{"n": 1, "xs": [1, -Infinity]}', "f", schema)
    with pytest.raises(JsonFileError, match=r"^f: z.q\[0\]: inf is not a number"):
        parse_json('{"z": {"q": [1e999]}}', "f")


def test_read_json_size_cap_reads_no_further(tmp_path):
    from trmcore.schema import JsonFileError, read_json

    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 5000 + "0]")
    with pytest.raises(JsonFileError, match="big.json: more than 1000 bytes"):
        read_json(big, max_bytes=1000)
    assert len(read_json(big)) == 5001


def test_dataclass_schema_takes_bounds_from_the_dataclass():
    """The model section's bounds are UNetConfig's own check (written once), quoted with the field."""
    from trmcore.models.config import UNetConfig
    from trmcore.schema import JsonFileError, dataclass_schema, parse_json

    schema = dataclass_schema(UNetConfig)
    assert parse_json('{"depth": 3, "width": 8}', "f", schema) == UNetConfig(depth=3, width=8)
    with pytest.raises(JsonFileError) as err:
        parse_json('{"depth": 0}', "f", schema)
    try:
        UNetConfig(depth=0)
    except ValueError as own:
        assert str(err.value) == f"f: {own}"


# ------------------------------------------------------------------------------------------ error causes
FILE_IN_THE_WAY_CASES = [
    ("predict into a folder under a file", "predict"),
    ("phantom into a folder under a file", "phantom"),
    ("affinity into a file", "affinity"),
    ("export to a file under a file", "export"),
]


@pytest.mark.parametrize("name, command", FILE_IN_THE_WAY_CASES, ids=[c[0] for c in FILE_IN_THE_WAY_CASES])
def test_a_file_in_the_way_of_an_output_is_named(phantom, onnx_model, run_dir, tmp_path, capsys, name, command):
    """Not "File exists" or "Not a directory" naming the output: the file that is in the way."""
    blocker = tmp_path / "afile"
    blocker.write_text("a file, not a folder")
    argv = {"predict": ["predict", "-m", onnx_model, "-i", phantom / "imagesTr", "-o", blocker / "out", "-q"],
            "phantom": ["phantom", blocker / "deeper" / "data", "-q"],
            "affinity": ["affinity", phantom, "--tasks", "all", "-o", blocker, "-q"],
            "export": ["export", run_dir, "-o", blocker / "x" / "model.onnx"]}[command]
    _one_line_error(capsys, argv, [f"{blocker} is a file, not a folder"])
    assert blocker.read_text() == "a file, not a folder"


#: (what is unreadable, command): the real cause, "Permission denied", named with the file.
PERMISSION_CASES = [
    ("model.safetensors", "export"),  # was: "No such file or directory" (safetensors)
    ("model.onnx", "predict"),  # was: "system error number 13" (onnxruntime)
    ("imagesTr/phantom_000_0000.nii.gz", "predict"),  # was: "Could not read file" (nibabel)
    ("labelsTr/phantom_000.nii.gz", "affinity"),  # was: "Could not read file" (nibabel)
    ("dataset.json", "affinity"),
    ("run.json", "export"),
]
_DROP = ["--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _unprivileged_prefix(probe: Path) -> Optional[list]:
    """The command prefix under which file modes apply (root without the capabilities that bypass them)."""
    probe.write_text("secret")
    probe.chmod(0)
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    works = subprocess.run([setpriv, *_DROP, "true"], capture_output=True).returncode == 0
    denied = subprocess.run([setpriv, *_DROP, "cat", str(probe)], capture_output=True).returncode != 0
    return [setpriv, *_DROP] if works and denied else None


_DRIVER = """
import json, sys, warnings
warnings.simplefilter("ignore")
from trmcore.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    import io, contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_permission_denied_is_reported_as_such(phantom, onnx_model, run_dir, tmp_path):
    prefix = _unprivileged_prefix(tmp_path / "probe")
    if prefix is None:
        pytest.skip("running as root without setpriv able to drop CAP_DAC_OVERRIDE: file modes cannot be tested")
    work = tmp_path / "work"
    runs = []
    for k, (target, command) in enumerate(PERMISSION_CASES):
        case = work / str(k)
        shutil.copytree(phantom, case / "data")
        shutil.copytree(run_dir, case / "run")
        shutil.copy(onnx_model, case / "model.onnx")
        locked = {"model.safetensors": case / "run" / target, "run.json": case / "run" / target,
                  "model.onnx": case / target}.get(target, case / "data" / target)
        locked.chmod(0)
        argv = {"export": ["export", case / "run", "-o", case / "out.onnx"],
                "predict": ["predict", "-m", case / "model.onnx", "-i", case / "data" / "imagesTr", "-o",
                            case / "out", "-q"],
                "affinity": ["affinity", case / "data", "--tasks", "all", "-o", case / "out", "-q"]}[command]
        runs.append((locked, [str(a) for a in argv]))
    import trmcore

    package_root = str(Path(trmcore.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([*prefix, sys.executable, "-c", _DRIVER, json.dumps([argv for _, argv in runs])],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    for (locked, argv), (code, err) in zip(runs, json.loads(done.stdout)):
        errors = [line for line in err.splitlines() if line.startswith("trm ")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, (argv, err)
        assert f"{locked}: Permission denied" in errors[0], (argv, errors[0])

"""trm transferability: LEEP of a deployed model equals the float64 torch reference on the same voxels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.infer import Segmenter, assess_transferability


def _reference_scores(run_dir, volumes, num_classes):
    """(dataset LEEP, {case: (LEEP, foreground LEEP)}) with torch logits and trmcore.ops.reference."""
    import torch

    from trmcore.data import pad_to_multiple, unpad
    from trmcore.ops import reference
    from trmcore.training.checkpoint import load_run

    model, info = load_run(run_dir)
    per_case = []
    for vol in volumes:
        slices = np.moveaxis(vol.image, info.axis + 1, 0)
        keep = slices.reshape(len(slices), -1).any(axis=1)
        padded, pad = pad_to_multiple(slices[keep], info.divisor)
        with torch.inference_mode():
            logits = unpad(model(torch.from_numpy(padded)), pad).double()
        labels = torch.from_numpy(np.moveaxis(vol.label, info.axis, 0)[keep])
        per_case.append((logits, labels))
    joint = reference.leep_joint(torch.cat([l for l, _ in per_case]), torch.cat([y for _, y in per_case]),
                                 num_classes)
    cases, total = {}, 0.0
    for vol, (logits, labels) in zip(volumes, per_case):
        leep_map = reference.pixel_leep(logits, labels, joint)
        fg = labels != 0
        cases[vol.case_id] = (float(leep_map.mean()), float(leep_map[fg].mean()))
        total += float(leep_map.sum())
    return total / joint.count, cases


def test_scores_match_reference(run_dir, phantom, onnx_model):
    from trmcore.data import load_task_volumes, parse_task

    volumes, info = load_task_volumes(phantom, parse_task("T1,T2", "CSF,GM"), progress=False)
    segmenter = Segmenter(onnx_model, providers="cpu")
    report = assess_transferability(segmenter, volumes, info.label_names, progress=False)
    expected, cases = _reference_scores(run_dir, volumes, len(info.label_names))
    assert report.leep == pytest.approx(expected, abs=1e-4)
    assert report.leep < 0
    for case in report.cases:
        leep, fg_leep = cases[case.case_id]
        assert case.leep == pytest.approx(leep, abs=1e-4)
        assert case.foreground_leep == pytest.approx(fg_leep, abs=1e-4)
        assert 1.0 <= case.mean_risk <= 10.0
    # recomputing the logits (no cache) gives the same report
    again = assess_transferability(segmenter, volumes, info.label_names, progress=False, cache_bytes=0)
    assert again.leep == pytest.approx(report.leep, abs=1e-6)


def test_cli_reports_and_writes_json(phantom, onnx_model, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["transferability", "-m", str(onnx_model), str(phantom), "--channel", "T1,T2",
                 "--labels", "GM", "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "dataset LEEP" in printed and "phantom_002" in printed
    report = json.loads(out.read_text())
    assert report["target_labels"] == ["background", "GM"]
    assert np.asarray(report["conditional"]).shape == (2, 3)


def test_cli_rejects_wrong_channel_count_and_unlabelled(phantom, onnx_model, capsys):
    assert main(["transferability", "-m", str(onnx_model), str(phantom), "--channel", "T1",
                 "--labels", "CSF", "-q"]) == 2
    assert "takes 2" in capsys.readouterr().err
    segmenter = Segmenter(onnx_model, providers="cpu")
    with pytest.raises(ValueError, match="no target volumes"):
        assess_transferability(segmenter, [], ["background", "CSF"], progress=False)


def test_a_run_folder_scores_as_its_exported_model(run_dir, phantom, onnx_model, tmp_path, capsys):
    # `trm transferability -m RUN` (torch, trmcore.training.source_segmenter) and `-m RUN.onnx` (onnxruntime)
    # run the same network on the same slices: the same report to float32 rounding.
    pytest.importorskip("torch")
    reports = {}
    for name, model in (("onnx", onnx_model), ("run", run_dir)):
        out = tmp_path / f"{name}.json"
        assert main(["transferability", "-m", str(model), str(phantom), "--channel", "T1,T2", "--labels", "CSF,GM",
                     "-o", str(out), "-q"]) == 0, capsys.readouterr().err
        reports[name] = json.loads(out.read_text())
    onnx, run = reports["onnx"], reports["run"]
    assert run["leep"] == pytest.approx(onnx["leep"], abs=1e-4) and run["leep"] < 0
    assert run["voxels"] == onnx["voxels"] and run["source_labels"] == onnx["source_labels"]
    assert [c["case_id"] for c in run["cases"]] == [c["case_id"] for c in onnx["cases"]]
    for a, b in zip(run["cases"], onnx["cases"]):
        assert a["leep"] == pytest.approx(b["leep"], abs=1e-4)
        assert a["mean_risk"] == pytest.approx(b["mean_risk"], abs=1e-3)
    np.testing.assert_allclose(run["conditional"], onnx["conditional"], atol=1e-4)
    # the extras follow the source: an ONNX model needs [cpu], anything else [train]
    from trmcore import extras
    from trmcore.cli.main import build_parser

    argv = [str(phantom), "--channel", "T1,T2", "--labels", "CSF"]
    parser = build_parser()
    assert extras.command_extras("transferability", parser.parse_args(["transferability", "-m", str(onnx_model)]
                                                                      + argv)) == ("cpu",)
    assert extras.command_extras("transferability", parser.parse_args(["transferability", "-m", str(run_dir)]
                                                                      + argv)) == ("train",)

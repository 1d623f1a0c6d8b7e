"""trm evaluate as nnU-Net users expect: held-out cases, NaN for absent classes, ONNX models and folders."""

from __future__ import annotations

import json
import math
import shutil

import nibabel as nib
import numpy as np
import onnx
import pytest

from trmcore.cli.main import main
from trmcore.data.geometry import GeometryWarning
from trmcore.data.scoring import dice_per_class, summarize, volume_dice
from trmcore.data.tasks import IGNORE_INDEX
from trmcore.infer import Segmenter
from trmcore.infer.metadata import METADATA_KEY


def test_dice_conventions_values():
    label = np.array([0, 1, 1, 2, 2, IGNORE_INDEX])
    pred = np.array([0, 1, 0, 2, 1, 2])  # the last voxel is not annotated: left out
    # class 1: P={1,4}, T={1,2} -> 2*1/4; class 2: P={3}, T={3,4} -> 2*1/3; class 3: absent from both -> NaN
    scores = dice_per_class(pred, label, 4)
    np.testing.assert_allclose(scores[:2], [0.5, 2 / 3])
    assert math.isnan(scores[2])
    # predicted but absent from the reference: 0, not NaN
    assert dice_per_class(np.array([0, 3]), np.array([0, 0]), 4)[2] == 0.0
    a = volume_dice("a", pred, label, ["x", "y", "z"])
    assert a.mean == pytest.approx((0.5 + 2 / 3) / 2)  # the NaN class is left out
    b = volume_dice("b", np.array([0, 3, 3]), np.array([0, 3, 0]), ["x", "y", "z"])  # x, y absent: NaN
    result = summarize([a, b], ["x", "y", "z"], scope="held-out case(s)")
    assert result.mean_per_class["x"] == pytest.approx(0.5) and result.mean_per_class["z"] == pytest.approx(2 / 3)
    # nnU-Net's foreground mean: the mean of the per-class means
    assert result.mean == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
    table = result.table()
    assert table.startswith("Dice per volume") and "held-out case(s)" in table and "left out of the means" in table
    assert "       -" in table
    record = result.to_dict()
    assert record["metric"] == "Dice" and record["volumes"][1]["dice"]["x"] is None


def _run_with_split(run_dir, phantom, tmp_path):
    """The deploy run, recorded as trained on phantom_000 and phantom_001 of ``phantom``."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    record = json.loads((run / "run.json").read_text())
    record.update(data=str(phantom.resolve()), train_cases=["phantom_000", "phantom_001"], val_cases=["phantom_002"])
    (run / "run.json").write_text(json.dumps(record))
    return run


def test_run_scores_held_out_cases_by_default_and_all_on_request(run_dir, phantom, tmp_path, capsys):
    run = _run_with_split(run_dir, phantom, tmp_path)
    out = tmp_path / "dice.json"
    assert main(["evaluate", str(phantom), "-m", str(run), "-q", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "on 1 held-out case(s) (not used for training)" in printed
    held = json.loads(out.read_text())
    assert [v["case_id"] for v in held["volumes"]] == ["phantom_002"]
    assert main(["evaluate", str(phantom), "-m", str(run), "-q", "--all", "-o", str(out), "--overwrite"]) == 0
    assert "all cases of the task, training cases included (--all)" in capsys.readouterr().out
    every = json.loads(out.read_text())
    assert [v["case_id"] for v in every["volumes"]] == ["phantom_000", "phantom_001", "phantom_002"]
    assert every["volumes"][2] == held["volumes"][0]


def test_onnx_model_and_prediction_folder_score_like_the_run(run_dir, phantom, onnx_model, tmp_path, capsys):
    run_json, onnx_json, folder_json = (tmp_path / f"{n}.json" for n in ("run", "onnx", "folder"))
    assert main(["evaluate", str(phantom), "-m", str(run_dir), "-q", "-o", str(run_json)]) == 0
    assert main(["evaluate", str(phantom), "-m", str(onnx_model), "-q", "-o", str(onnx_json)]) == 0
    assert "does not record its training cases" in capsys.readouterr().out
    pred = tmp_path / "pred"
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(pred),
                 "-q"]) == 0
    # the deploy model writes iSeg-like values (CSF 10, GM 150); the phantom stores CSF 1, GM 2
    for path in pred.glob("phantom_*.nii.gz"):
        image = nib.load(str(path))
        values = np.asarray(image.dataobj)
        mapped = np.select([values == 10, values == 150], [1, 2], 0).astype(np.uint8)
        nib.save(nib.Nifti1Image(mapped, image.affine, image.header), str(path))
    assert main(["evaluate", str(phantom), "--labels", "CSF,GM", "--predictions", str(pred), "-q",
                 "-o", str(folder_json)]) == 0
    by_run, by_onnx, by_folder = (json.loads(p.read_text()) for p in (run_json, onnx_json, folder_json))
    assert by_onnx["volumes"] == by_folder["volumes"]
    for a, b in zip(by_run["volumes"], by_onnx["volumes"]):  # torch and onnxruntime: equal up to ties
        for name in ("CSF", "GM"):
            assert a["dice"][name] == pytest.approx(b["dice"][name], abs=0.01)


def test_prediction_folder_on_another_grid_is_refused(phantom, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    label = nib.load(str(phantom / "labelsTr" / "phantom_000.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), label.affine @ np.diag([2.0, 1, 1, 1])),
             str(pred / "phantom_000.nii.gz"))
    assert main(["evaluate", str(phantom), "--labels", "CSF,GM", "--predictions", str(pred), "-q"]) == 2


def test_model_without_geometry_warns_and_uses_volumes_as_stored(onnx_model, phantom, tmp_path):
    model = onnx.load(str(onnx_model))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            record = json.loads(prop.value)
            record.pop("orientation"), record.pop("spacing"), record.pop("preprocessing")  # a version 1 record
            record["schema_version"], record["normalization"] = 1, "zscore-nonzero"
            prop.value = json.dumps(record)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    segmenter = Segmenter(old, providers="cpu")
    assert segmenter.metadata.orientation is None
    with pytest.warns(GeometryWarning, match="old.onnx does not record the orientation"):
        assert main(["predict", "-m", str(old), "-i", str(phantom / "imagesTr"), "-o", str(tmp_path / "out"),
                     "-q"]) == 0

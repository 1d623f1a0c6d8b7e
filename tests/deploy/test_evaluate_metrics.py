"""`trm evaluate` reports counts, volumes, HD95, surface distance and lesion-wise detection (torch-free path)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from trmcore.cli.main import main


def test_evaluate_folder_reports_hd95_volumes_and_lesions(phantom, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    label = nib.load(str(phantom / "labelsTr" / "phantom_000.nii.gz"))
    data = np.asarray(label.dataobj).copy()
    reference_csf = int((data == 1).sum())
    moved = data.copy()
    moved[data == 1] = 0  # CSF missed entirely ...
    moved[0:3, 0:3, 0:2] = 1  # ... and one false CSF blob predicted in the corner (no CSF there)
    assert not (data[0:3, 0:3, 0:2] == 1).any()
    nib.save(nib.Nifti1Image(moved.astype(np.uint8), label.affine), str(pred / "phantom_000.nii.gz"))
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(phantom), "--labels", "CSF,GM", "--predictions", str(pred), "-q",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "HD95 mm" in printed and "les F1" in printed and "pred mL" in printed
    record = json.loads(out.read_text())
    csf = record["volumes"][0]["metrics"]["CSF"]
    spacing = np.sqrt((label.affine[:3, :3] ** 2).sum(axis=0))
    assert csf["tp"] == 0 and csf["fn"] == reference_csf and csf["fp"] == 18
    assert csf["volume_pred_ml"] == np.float64(18 * np.prod(spacing) / 1000)
    assert csf["lesions_detected"] == 0 and csf["lesion_sensitivity"] == 0.0 and csf["lesion_precision"] == 0.0
    assert csf["hd95_mm"] > 0
    gm = record["volumes"][0]["metrics"]["GM"]
    assert gm["fp"] == gm["fn"] == 0 and gm["hd95_mm"] == 0.0 and gm["lesion_f1"] == 1.0
    assert record["metrics_over_volumes"]["CSF"]["fn"] == reference_csf

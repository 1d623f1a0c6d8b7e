"""Risk-map diagnostics (per-class statistics, degeneracy warnings), robust scaling, `trm riskmap` output."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.data import load_task_volumes, parse_task
from trmcore.training.risk_diagnostics import RiskStatistics, summary_lines, volume_diagnostics
from trmcore.training.risk_scaling import clip_to_class_quantiles, scaled_risk_map
from trmcore.training.riskmap_files import write_risk_maps


def test_statistics_by_hand():
    labels = torch.tensor([[[0, 0, 0, 1], [1, 2, -100, 2]]])
    risk = torch.tensor([[[1.0, 2.0, 9.0, 6.0], [10.0, 4.0, 0.0, 8.0]]])
    stats = RiskStatistics(3, base=10.0)
    stats.update(risk, labels)
    summary = stats.summary(["background", "A", "B"])
    bg, a, b = (summary["classes"][k] for k in ("background", "A", "B"))
    assert summary["midpoint"] == 5.5 and summary["near_one_below"] == pytest.approx(1.9)
    assert (bg["pixels"], a["pixels"], b["pixels"]) == (3, 2, 2)  # the ignored pixel counts nowhere
    assert bg["mean_risk"] == pytest.approx(4.0) and a["mean_risk"] == pytest.approx(8.0)
    assert bg["std_risk"] == pytest.approx(np.std([1, 2, 9])) and b["std_risk"] == pytest.approx(2.0)
    assert bg["share_above_midpoint"] == pytest.approx(1 / 3) and a["share_above_midpoint"] == 1.0
    assert b["share_above_midpoint"] == pytest.approx(0.5)
    assert bg["share_near_one"] == pytest.approx(1 / 3)
    assert summary["share_near_one"] == pytest.approx(1 / 7)
    # 20 bins of 0.45 over [1, 10]: R = 1, 2, 9 fall in bins 0, 2, 17, so no band of two bins holds two of them
    assert bg["share_in_densest_band"] == pytest.approx(1 / 3) and a["share_in_densest_band"] == 0.5
    assert summary["warnings"] == []


def test_statistics_add_across_updates():
    rng = np.random.default_rng(0)
    risk = rng.uniform(1, 10, size=(4, 5, 5))
    labels = rng.integers(0, 3, size=(4, 5, 5))
    whole = RiskStatistics(3)
    whole.update(risk, labels)
    parts = RiskStatistics(3)
    parts.update(risk[:1], labels[:1])
    parts.update(torch.from_numpy(risk[1:]), torch.from_numpy(labels[1:]))
    torch.testing.assert_close(parts.sums, whole.sums)


def test_class_weight_map_is_flagged():
    labels = torch.zeros(4, 8, 8, dtype=torch.int64)
    labels[:, 2:4, 2:4] = 1
    risk = torch.where(labels == 1, 9.9, 1.05) + 0.01 * torch.rand(4, 8, 8)
    stats = RiskStatistics(2)
    stats.update(risk, labels)
    # A background-only slice, stretched over the whole range by the per-image min-max, does not hide it.
    stats.update(torch.linspace(1, 10, 16).view(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    summary = stats.summary(["background", "CSF"])
    assert summary["classes"]["background"]["std_risk"] > 0.45 * 2  # a threshold on the std would miss it
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("class weight")
    assert any("warning: class weight" in line for line in summary_lines(summary))
    # Spread within the foreground: no warning.
    spread = RiskStatistics(2)
    spread.update(torch.where(labels == 1, 1 + 9 * torch.rand(4, 8, 8), 1.05), labels)
    assert spread.summary(["background", "CSF"])["warnings"] == []


def test_few_pixels_rule_is_flagged():
    labels = torch.zeros(1, 10, 10, dtype=torch.int64)
    labels[0, :5] = 1
    risk = 1.0 + torch.rand(1, 10, 10) * 0.5  # near 1 and varying within each class
    risk[0, 0, :3] = 10.0
    stats = RiskStatistics(2)
    stats.update(risk, labels)
    summary = stats.summary(["background", "lesion"])
    assert summary["share_near_one"] == pytest.approx(0.97)
    assert [w.split(":")[0] for w in summary["warnings"]] == ["a few pixels rule"]
    # A sparse class at high risk (a tumour over a background at 1) is no degenerate map.
    tumour = torch.zeros(1, 10, 10, dtype=torch.int64)
    tumour[0, 0, :3] = 1
    sparse = RiskStatistics(2)
    sparse.update(torch.where(tumour == 1, 4.0 + 5.0 * torch.rand(1, 10, 10), 1.0 + 0.8 * torch.rand(1, 10, 10)),
                  tumour)
    summary = sparse.summary(["background", "tumour"])
    assert summary["share_near_one"] == pytest.approx(0.97) and summary["warnings"] == []


def test_robust_clipping_by_hand():
    t = torch.tensor([[[-9.0, -1.0, -1.2, -1.1, -0.0, -0.2, -0.1, -0.3, -50.0, -0.15]]])
    labels = torch.tensor([[[1, 1, 1, 1, 0, 0, 0, 0, 0, 0]]])
    q = 0.25
    lo = min(np.quantile([-9.0, -1.0, -1.2, -1.1], q), np.quantile([0.0, -0.2, -0.1, -0.3, -50.0, -0.15], q))
    hi = max(np.quantile([-9.0, -1.0, -1.2, -1.1], 1 - q), np.quantile([0.0, -0.2, -0.1, -0.3, -50.0, -0.15], 1 - q))
    clipped = clip_to_class_quantiles(t, labels, q)
    np.testing.assert_allclose(clipped.numpy(), np.clip(t.numpy(), lo, hi), rtol=1e-6)
    # The min-max after clipping is exactly ops.risk_map of the clipped map.
    torch.testing.assert_close(scaled_risk_map(t, labels, scaling="robust", quantile=q), ops.risk_map(clipped, labels))
    # The lesion class (label 1) keeps its contrast with the background: its bulk is now the hardest.
    robust = scaled_risk_map(t, labels, scaling="robust", quantile=q)
    minmax = scaled_risk_map(t, labels, scaling="minmax")
    assert float(robust[labels == 1].mean()) > 2 * float(minmax[labels == 1].mean())
    # q = 0 and "minmax" are TRM Eq. 5 exactly.
    torch.testing.assert_close(scaled_risk_map(t, labels, scaling="robust", quantile=0.0), minmax)
    # Ignored pixels stay 0; clipping is per image in scope "image".
    labels2 = labels.clone()
    labels2[0, 0, 0] = -100
    assert float(scaled_risk_map(t, labels2, scaling="robust", quantile=q)[0, 0, 0]) == 0.0
    with pytest.raises(ValueError, match="scaling"):
        scaled_risk_map(t, labels, scaling="zscore")


def test_riskmap_writes_diagnostics_matching_the_maps(phantom, source_run, tmp_path):
    out = tmp_path / "maps"
    written = write_risk_maps(phantom, source_run, out, "T2", "CSF", progress=False, cases=["phantom_000"])
    assert out / "risk_diagnostics.json" in written and (out / "phantom_000.png").is_file()
    diagnostics = json.loads((out / "risk_diagnostics.json").read_text())
    assert diagnostics["after"] is None and diagnostics["scaling"] == "minmax"
    volumes, _ = load_task_volumes(phantom, parse_task("T2", "CSF"), cases=["phantom_000"], progress=False)
    risk = np.asarray(nib.load(str(out / "phantom_000_risk.nii.gz")).dataobj)
    label = volumes[0].label
    for k, name in enumerate(["background", "CSF"]):
        entry = diagnostics["before"]["classes"][name]
        assert entry["pixels"] == int((label == k).sum())
        assert entry["mean_risk"] == pytest.approx(float(risk[label == k].mean()), rel=1e-5)
        assert entry["share_above_midpoint"] == pytest.approx(float((risk[label == k] > 5.5).mean()))
    assert diagnostics["before"] == volume_diagnostics([risk], [label], ["background", "CSF"], 10.0) | {
        "warnings": diagnostics["before"]["warnings"]}


def test_riskmap_has_no_compatibility_shim():
    """The files half lives only in riskmap_files; riskmap (the computation) does not re-export it."""
    from trmcore.training import riskmap

    for name in ("save_nifti", "pick_slice", "plot_panel", "write_risk_maps"):
        assert not hasattr(riskmap, name), name


def test_riskmap_compute_write_plot_compose_to_write_risk_maps(phantom, source_run, tmp_path):
    """The three steps, called by hand with the settings whole, write the same bytes as write_risk_maps."""
    from trmcore.training.evaluate import load_run_task
    from trmcore.training.riskmap import RiskMapSettings
    from trmcore.training.riskmap_files import compute_risk_maps, plot_risk_maps, write_risk_map_files

    settings = RiskMapSettings(base=5.0, scaling="robust", quantile=0.1)
    whole = tmp_path / "whole"
    written = write_risk_maps(phantom, source_run, whole, "T2", "CSF", after_run=source_run, cases=["phantom_001"],
                              settings=settings, progress=False)
    source, info, volumes, task_info, device = load_run_task(source_run, phantom, "T2", "CSF", None,
                                                             cases=["phantom_001"], device=None, progress=False)
    maps = compute_risk_maps(source, info, volumes, task_info, device, settings, source_run,
                             after_run=source_run, progress=False)
    assert float(maps.before[0].risk.max()) <= 5.0 and maps.after is not None
    steps = tmp_path / "steps"
    files, diagnostics = write_risk_map_files(steps, maps, show=False)
    files += plot_risk_maps(steps, maps, diagnostics)
    assert [p.name for p in files] == [p.name for p in written]
    assert [p.name for p in files] == ["risk_diagnostics.json", "phantom_001_transferability.nii.gz",
                                       "phantom_001_risk.nii.gz", "phantom_001_transferability_after.nii.gz",
                                       "phantom_001_risk_after.nii.gz", "phantom_001.png"]
    for path in files:
        assert path.read_bytes() == (whole / path.name).read_bytes(), path.name
    record = json.loads((steps / "risk_diagnostics.json").read_text())
    assert (record["scaling"], record["quantile"], record["scope"]) == ("robust", 0.1, "image")
    with pytest.raises(ValueError, match="risk_quantile must be in"):
        RiskMapSettings(quantile=0.6)

"""Scoring segmentations as nnU-Net and MONAI do: per-volume 3D Dice on the stored grid.

Torch-free and onnxruntime-free: NumPy only. The files are read, and the
cases chosen, by :mod:`trmcore.infer.evaluate_files` (a folder of predictions,
an exported model) and :mod:`trmcore.training.evaluate` (a run); all three
score a case with :func:`score_case`.

Conventions (docs/training.md, "Evaluating"):

- Dice of class c in one volume: 2 |P ∩ T| / (|P| + |T|), over the voxels of
  the volume on its stored grid, leaving out voxels of the dataset's
  ``ignore`` label.
- A class absent from both the reference and the prediction has no Dice:
  NaN, shown as ``-``, and left out of every mean (nnU-Net, MONAI
  ``ignore_empty``). Absent from the reference but predicted: 0.
- Per-volume mean: over the classes that have a Dice. Per-class mean: over
  the volumes that have a Dice for it. ``mean``: the mean of the per-class
  means (nnU-Net's "foreground mean").

Three sources of predictions: a run (``trmcore.training.evaluate``, torch),
an exported model (``trmcore.infer.evaluate_files.evaluate_model``,
onnxruntime), or a folder of label files written by ``trm predict`` or any
other tool (``trmcore.infer.evaluate_files.evaluate_folder``, NumPy and
nibabel only, like ``nnUNetv2_evaluate_folder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from trmcore.data.metrics import ClassMetrics
from trmcore.data.tasks import IGNORE_INDEX

METRIC = "Dice"


@dataclass
class VolumeDice:
    """3D Dice of one volume: ``dice[name]`` per foreground class (NaN: absent from both) and their mean."""

    case_id: str
    dice: Dict[str, float]
    mean: float
    # per class: counts, volumes, HD95, surface distance, lesions (trmcore.data.metrics); None without a spacing
    details: Optional[Dict[str, ClassMetrics]] = None


@dataclass
class EvaluationResult:
    """Per-volume Dice, per-class means over volumes and their mean.

    ``scope`` says which cases were scored (e.g. "held-out cases (not used for
    training)" or "all cases"); ``metric`` the metric shown.
    """

    volumes: List[VolumeDice]
    class_names: List[str]
    mean_per_class: Dict[str, float] = field(default_factory=dict)
    mean: float = float("nan")
    scope: str = ""
    metric: str = METRIC

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "scope": self.scope,
            "absent_classes": "NaN (null) when a class is absent from reference and prediction; left out of means",
            "class_names": self.class_names,
            "mean_per_class": {k: _json_float(v) for k, v in self.mean_per_class.items()},
            "mean": _json_float(self.mean),
            "volumes": [{"case_id": v.case_id, "dice": {k: _json_float(d) for k, d in v.dice.items()},
                         "mean": _json_float(v.mean),
                         **({} if v.details is None else
                            {"metrics": {k: m.to_dict() for k, m in v.details.items()}})}
                        for v in self.volumes],
            **self._pooled_dict(),
        }

    def _pooled_dict(self) -> dict:
        from trmcore.data.metrics import json_number, pooled

        if not self.volumes or any(v.details is None for v in self.volumes):
            return {}
        return {"metrics_over_volumes": {n: {k: json_number(x) for k, x in
                                             pooled([v.details[n] for v in self.volumes]).items()}
                                         for n in self.class_names}}

    def metrics_table(self) -> str:
        """Per class over all volumes: voxel counts, volumes, HD95, surface distance, lesion detection ('' without)."""
        from trmcore.data.metrics import pooled

        if not self.volumes or any(v.details is None for v in self.volumes):
            return ""
        columns = (("TP", "tp", "d"), ("FP", "fp", "d"), ("FN", "fn", "d"), ("pred mL", "volume_pred_ml", ".2f"),
                   ("ref mL", "volume_ref_ml", ".2f"), ("HD95 mm", "hd95_mm", ".2f"), ("MSD mm", "msd_mm", ".2f"),
                   ("lesions", "lesions_ref", "d"), ("found", "lesions_detected", "d"),
                   ("pred les", "lesions_pred", "d"), ("les sens", "lesion_sensitivity", ".3f"),
                   ("les prec", "lesion_precision", ".3f"), ("les F1", "lesion_f1", ".3f"))
        width = max(len("class"), *(len(n) for n in self.class_names))
        header = f"{'class':<{width}}  " + "  ".join(f"{c[0]:>9}" for c in columns)
        lines = ["Per class over all volumes: voxel counts and volumes summed; HD95 and mean symmetric surface "
                 "distance (mm) averaged over volumes ('inf': class in only one of reference and prediction); "
                 "lesions = connected components, sensitivity/precision/F1 from the summed lesion counts",
                 header, "-" * len(header)]
        for name in self.class_names:
            total = pooled([v.details[name] for v in self.volumes])
            lines.append(f"{name:<{width}}  " + "  ".join(_number_cell(total[key], fmt) for _, key, fmt in columns))
        return "\n".join(lines)

    def table(self) -> str:
        """A plain-text table: what is shown, one row per volume, then the means."""
        names = self.class_names
        width = max([len("case"), len("mean")] + [len(v.case_id) for v in self.volumes])
        header = f"{'case':<{width}}  " + "  ".join(f"{n:>8}" for n in names) + f"  {'mean':>8}"
        lines = [f"{self.metric} per volume (3D, on each volume's stored grid)"
                 + (f" on {len(self.volumes)} {self.scope}" if self.scope else ""),
                 "'-': class absent from both reference and prediction (NaN), left out of the means; "
                 "last row: mean over volumes, last column: mean over classes", header, "-" * len(header)]
        for v in self.volumes:
            lines.append(f"{v.case_id:<{width}}  " + "  ".join(_cell(v.dice[n]) for n in names) + f"  {_cell(v.mean)}")
        lines.append("-" * len(header))
        lines.append(f"{'mean':<{width}}  " + "  ".join(_cell(self.mean_per_class.get(n, math.nan)) for n in names)
                     + f"  {_cell(self.mean)}")
        return "\n".join(lines)


def dice_per_class(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..C-1 between two class arrays of the same shape: float64 ``[C-1]``.

    NaN for a class absent from both; voxels whose ``label`` is ``IGNORE_INDEX`` are left out.
    """
    prediction = np.asarray(prediction)
    label = np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from label shape {label.shape}")
    annotated = label != IGNORE_INDEX
    if not annotated.all():
        prediction, label = prediction[annotated], label[annotated]
    scores = np.empty(num_classes - 1, np.float64)
    for c in range(1, num_classes):
        p, t = prediction == c, label == c
        denominator = int(p.sum()) + int(t.sum())
        scores[c - 1] = math.nan if denominator == 0 else 2.0 * int((p & t).sum()) / denominator
    return scores


def volume_dice(case_id: str, prediction: np.ndarray, label: np.ndarray, class_names: Sequence[str],
                spacing: Optional[Sequence[float]] = None) -> VolumeDice:
    """:class:`VolumeDice` of one volume (``class_names`` without background).

    With the voxel ``spacing`` (mm per axis) also the per-class counts,
    volumes, HD95, surface distance and lesion detection of
    :mod:`trmcore.data.metrics` (``details``).
    """
    scores = dice_per_class(prediction, label, len(class_names) + 1)
    details = None
    if spacing is not None:
        from trmcore.data.metrics import volume_metrics

        details = volume_metrics(prediction, label, spacing, class_names, ignore=IGNORE_INDEX)
    return VolumeDice(case_id, dict(zip(class_names, scores.tolist())), _nanmean(scores), details)


def score_case(case_id: str, prediction: np.ndarray, reference: np.ndarray, class_names: Sequence[str],
               affine: Optional[np.ndarray] = None) -> VolumeDice:
    """The per-class scores of one case: the one function every ``trm evaluate`` source calls.

    ``prediction`` and ``reference`` are class arrays (0 = background,
    ``IGNORE_INDEX`` = not annotated in the reference) of one shape on the
    case's stored grid, ``class_names`` the foreground classes, ``affine`` the
    grid's voxel-to-world 4x4 (None when unknown). A new metric is computed
    here, from these arguments, and shown by :class:`EvaluationResult`.
    """
    spacing = None if affine is None else _spacing(affine)  # no geometry: Dice only, no distances or volumes
    return volume_dice(case_id, prediction, reference, class_names, spacing=spacing)


def _spacing(affine) -> tuple:
    from trmcore.data.geometry import voxel_spacing

    return voxel_spacing(affine)


def summarize(volumes: List[VolumeDice], class_names: List[str], scope: str = "") -> EvaluationResult:
    result = EvaluationResult(volumes, list(class_names), scope=scope)
    if volumes:
        result.mean_per_class = {n: _nanmean([v.dice[n] for v in volumes]) for n in class_names}
        result.mean = _nanmean(list(result.mean_per_class.values()))
    return result


def _number_cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"{'-':>9}"
    if isinstance(value, float) and math.isinf(value):
        return f"{'inf':>9}"
    return f"{value:>9{fmt}}" if fmt != "d" else f"{int(value):>9d}"


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _cell(value: float) -> str:
    return f"{'-':>8}" if value is None or math.isnan(value) else f"{value:8.4f}"


def _json_float(value: float):
    return None if value is None or math.isnan(value) else float(value)

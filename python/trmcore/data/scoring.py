"""Scoring segmentations as nnU-Net and MONAI do: per-volume 3D Dice on the stored grid.

Torch-free and onnxruntime-free (only :func:`evaluate_model` needs onnxruntime).

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
an exported model (:func:`evaluate_model`), or a folder of label files
written by ``trm predict`` or any other tool (:func:`evaluate_folder`, like
``nnUNetv2_evaluate_folder``).
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


def summarize(volumes: List[VolumeDice], class_names: List[str], scope: str = "") -> EvaluationResult:
    result = EvaluationResult(volumes, list(class_names), scope=scope)
    if volumes:
        result.mean_per_class = {n: _nanmean([v.dice[n] for v in volumes]) for n in class_names}
        result.mean = _nanmean(list(result.mean_per_class.values()))
    return result


def evaluate_folder(predictions: Union[str, Path], data_root: Union[str, Path], task, sites=None,
                    cases: Optional[Sequence[str]] = None, progress: bool = False) -> EvaluationResult:
    """Dice of the label files ``predictions/CASE.nii.gz`` against the dataset's labels (torch-free).

    Prediction files hold dataset label values (as ``trm predict`` writes
    them); they are mapped to the task's classes like the reference. Every
    case with a prediction file is scored (``cases`` restricts them); a
    prediction must lie on its reference's grid.
    """
    from trmcore.data.layout import DatasetLayout
    from trmcore.data.nifti import check_same_grid, load_label
    from trmcore.data.tasks import TaskInfo

    predictions = Path(predictions)
    if not predictions.is_dir():
        raise FileNotFoundError(f"predictions folder not found: {predictions}")
    layout = DatasetLayout.read(data_root, sites=sites)
    info = TaskInfo.resolve(layout, task)
    ending = layout.file_ending
    found = sorted(p.name[: -len(ending)] for p in predictions.iterdir()
                   if p.name.endswith(ending) and not p.name.startswith(".")
                   and not p.name.endswith(f"_probabilities{ending}"))
    known = set(layout.cases())
    chosen = [c for c in found if c in known and (task.site is None or layout.site_of(c) == task.site)]
    if cases is not None:
        missing = [c for c in cases if c not in found]
        if missing:
            raise FileNotFoundError(f"no prediction file for case(s) {missing} in {predictions}")
        chosen = [c for c in chosen if c in set(cases)]
    if not chosen:
        raise ValueError(f"no prediction file in {predictions} matches a labelled case of {layout.root} "
                         f"(task {task}); files are named CASE{ending}")
    names = info.label_names[1:]
    declared = sorted(set(info.dataset_values) | {int(v) for v in _flat(info.label_values)})
    results = []
    for case in _bar(chosen, progress, "evaluating"):
        ref_path = layout.label_path(case)
        reference, ref_affine = load_label(ref_path, case, info.dataset_values)
        pred_path = predictions / f"{case}{ending}"
        predicted, pred_affine = load_label(pred_path, case, declared)
        check_same_grid(case, ref_path, reference.shape, ref_affine, pred_path, predicted.shape, pred_affine,
                        "prediction")
        results.append(volume_dice(case, info.map_labels(predicted), info.map_labels(reference), names,
                                   spacing=_spacing(ref_affine)))
    return summarize(results, names, scope=f"case(s) with a prediction in {predictions}")


def evaluate_model(segmenters, data_root: Union[str, Path], task, cases: Optional[Sequence[str]] = None,
                   sites=None, resample: bool = True, mirror: bool = False,
                   progress: bool = False) -> EvaluationResult:
    """Dice of an exported model (or an ensemble) on a dataset's task, torch-free.

    Each case is predicted from its files exactly as ``trm predict`` does
    (model geometry, back onto the stored grid) and scored there.
    """
    from trmcore.data.layout import DatasetLayout
    from trmcore.data.nifti import load_label
    from trmcore.data.tasks import TaskInfo
    from trmcore.data.volumes import _select_cases
    from trmcore.infer.nifti_files import CaseFiles, load_case
    from trmcore.infer.predict_files import check_ensemble, model_geometries, predict_case

    segmenters = list(segmenters) if isinstance(segmenters, (list, tuple)) else [segmenters]
    check_ensemble(segmenters)
    layout = DatasetLayout.read(data_root, sites=sites)
    info = TaskInfo.resolve(layout, task)
    if len(info.channels) != segmenters[0].metadata.num_channels:
        raise ValueError(f"the model takes {segmenters[0].metadata.num_channels} channel(s) "
                         f"{segmenters[0].channels}, the task gives {info.channels}")
    if info.num_classes != segmenters[0].num_classes:
        raise ValueError(f"the model predicts {segmenters[0].num_classes} classes {segmenters[0].label_names}, "
                         f"the task has {info.num_classes} {info.label_names}")
    geometries = model_geometries(segmenters, resample)
    names = info.label_names[1:]
    results = []
    for case in _bar(_select_cases(layout, task, cases, "Tr"), progress, "evaluating"):
        files = CaseFiles(case, [layout.image_path(case, k) for k in info.channel_indices])
        images = load_case(files)
        probs = predict_case(segmenters, images, geometries, mirror)
        reference, ref_affine = load_label(layout.label_path(case), case, info.dataset_values)
        if reference.shape != probs.shape[1:]:
            raise ValueError(f"case {case}: label file has shape {reference.shape}, images {probs.shape[1:]}")
        results.append(volume_dice(case, probs.argmax(axis=0), info.map_labels(reference), names,
                                   spacing=_spacing(ref_affine)))
    return summarize(results, names)


def _spacing(affine) -> tuple:
    from trmcore.data.geometry import voxel_spacing

    return voxel_spacing(affine)


def _number_cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"{'-':>9}"
    if isinstance(value, float) and math.isinf(value):
        return f"{'inf':>9}"
    return f"{value:>9{fmt}}" if fmt != "d" else f"{int(value):>9d}"


def _flat(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _cell(value: float) -> str:
    return f"{'-':>8}" if value is None or math.isnan(value) else f"{value:8.4f}"


def _json_float(value: float):
    return None if value is None or math.isnan(value) else float(value)


def _bar(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="case", leave=False)

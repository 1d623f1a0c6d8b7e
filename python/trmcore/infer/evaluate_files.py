"""`trm evaluate` of files, torch-free: a folder of predicted label files, or an exported model.

A folder needs NumPy and nibabel only (the base install); an exported model
adds onnxruntime (``trmcore[cpu]``). Neither imports torch: only a run folder
(:mod:`trmcore.training.evaluate`) does. Cases are scored with
:func:`trmcore.data.scoring.score_case` (the Dice conventions and the one
place where a metric is added) and summarised into an
:class:`~trmcore.data.scoring.EvaluationResult` (table and JSON).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from trmcore.data.scoring import EvaluationResult, score_case, summarize


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
        results.append(score_case(case, info.map_labels(predicted), info.map_labels(reference), names, ref_affine))
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
        reference, affine = load_label(layout.label_path(case), case, info.dataset_values)
        if reference.shape != probs.shape[1:]:
            raise ValueError(f"case {case}: label file has shape {reference.shape}, images {probs.shape[1:]}")
        results.append(score_case(case, probs.argmax(axis=0), info.map_labels(reference), names, affine))
    return summarize(results, names)


def _flat(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value


def _bar(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="case", leave=False)

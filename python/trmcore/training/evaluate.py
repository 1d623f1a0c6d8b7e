"""Prediction and Dice of a run: per-volume 3D Dice per class and their mean (SPEC 7).

The metric and its conventions (NaN for a class absent from reference and
prediction, left out of means; scores on each volume's stored grid) live in
the torch-free :mod:`trmcore.data.scoring`, shared with exported models
and folders of predictions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from trmcore.data import volumes_to_slices
from trmcore.data.preprocess import unpad
from trmcore.data.scoring import (EvaluationResult, VolumeDice, dice_per_class, score_case,  # noqa: F401
                                  summarize, volume_dice)
from trmcore.training.precision import autocast_for


@torch.no_grad()
def predict_slices(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16,
                   amp: bool = True) -> np.ndarray:
    """Arg-max labels int64 ``[S, H, W]`` of float32 slices ``[S, Cin, H, W]``."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            with autocast_for(device, amp):
                logits = model(batch)
            out.append(logits.argmax(dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[2:], np.int64)


def evaluate_volumes(model: nn.Module, volumes: Sequence, label_names: Sequence[str], axis: int, divisor: int,
                     device: torch.device, batch_size: int = 16, amp: bool = True,
                     progress: bool = False, scope: str = "", details: bool = False) -> EvaluationResult:
    """Per-volume 3D Dice of ``model`` on labelled ``volumes`` (trmcore.data.Volume).

    ``details``: also counts, volumes, HD95, surface distance and lesion
    detection per class (trmcore.data.metrics; ``trm evaluate``, not validation
    during training).

    Every slice of a volume is predicted (also the empty ones) and the padding
    is removed before counting, so the Dice is that of the whole 3D volume;
    the prediction is mapped back onto the volume's stored grid and scored
    there against the stored labels (as nnU-Net does).
    """
    names = list(label_names[1:])
    iterator = volumes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(volumes, desc="evaluating", unit="volume", leave=False)
    results = []
    for volume in iterator:
        if volume.label is None:
            raise ValueError(f"case {volume.case_id} has no label: cannot evaluate")
        slices = volumes_to_slices([volume], axis=axis, divisor=divisor, skip_empty=False)
        predicted = unpad(predict_slices(model, slices.images, device, batch_size, amp), slices.pad)
        predicted = np.moveaxis(predicted, 0, axis)  # [S, H, W] -> the volume's [X, Y, Z]
        truth, affine = volume.label, volume.affine
        if volume.grid is not None and not volume.grid.identity:
            predicted = volume.grid.to_native(predicted, "label")
            truth, affine = volume.label_on_native_grid(), volume.grid.native_affine
        # the affine gives the distance metrics and volumes (``details``); without it, Dice only
        results.append(score_case(volume.case_id, predicted, truth, names, affine if details else None))
    return summarize(results, names, scope)


def load_run_task(run_dir, data_root, channel: Optional[str] = None, labels: Optional[str] = None,
                  site: Optional[str] = None, *, cases: Optional[Sequence[str]] = None, device: Optional[str] = None,
                  progress: bool = True, sites=None, resample: bool = True, what: str = "run"):
    """A run and a dataset task's volumes on that run's grid and normalisation.

    Channels and labels default to the run's own; ``resample=False`` keeps the
    volumes as stored. ``what`` names the run in geometry warnings ("run",
    "source run"). Returns ``(model, info, volumes, task_info, device)``.
    """
    from trmcore.data import load_task_volumes, parse_task
    from trmcore.training.checkpoint import load_run
    from trmcore.training.distributed import resolve_device

    resolved = resolve_device(device)
    model, info = load_run(run_dir, device=resolved)
    task = parse_task(channel or info.channels, labels or info.label_names[1:], site)
    volumes, task_info = load_task_volumes(data_root, task, cases=cases, progress=progress, sites=sites,
                                           geometry=info.geometry(f"{what} {run_dir}", resample),
                                           normalization=info.normalization)
    return model, info, volumes, task_info, resolved


def evaluate_run(run_dir: str, data_root: str, channel: Optional[str] = None, labels: Optional[str] = None,
                 site: Optional[str] = None, cases: Optional[Sequence[str]] = None, device: Optional[str] = None,
                 batch_size: int = 16, progress: bool = True, sites=None, resample: bool = True,
                 scope: str = "") -> EvaluationResult:
    """Load a run and evaluate it on a dataset's task (channels/labels default to the run's own).

    Volumes are loaded on the run's recorded grid and normalisation
    (``resample=False``: as stored); ``scope`` describes ``cases`` in the table.
    """
    loaded = load_run_task(run_dir, data_root, channel, labels, site, cases=cases, device=device,
                           progress=progress, sites=sites, resample=resample, what="run")
    model, info, volumes, task_info, resolved = loaded
    check_task_matches(info, task_info, run_dir)
    return evaluate_volumes(model, volumes, task_info.label_names, info.axis, info.divisor, resolved,
                            batch_size, progress=progress, scope=scope, details=True)


def check_task_matches(info, task_info, run_dir) -> None:
    """ValueError unless the dataset task has the run's number of channels and classes."""
    if len(task_info.channels) != info.model.in_channels:
        raise ValueError(f"run {run_dir} takes {info.model.in_channels} channel(s) {info.channels}, "
                         f"the task gives {len(task_info.channels)} {task_info.channels}")
    if task_info.num_classes != info.num_classes:
        raise ValueError(f"run {run_dir} predicts {info.num_classes} classes {info.label_names}, "
                         f"the task has {task_info.num_classes} {task_info.label_names}")

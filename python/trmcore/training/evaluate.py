"""Prediction and Dice: per-volume 3D Dice per class and their mean (SPEC 7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from trmcore.data import volumes_to_slices
from trmcore.data.preprocess import unpad
from trmcore.training.precision import autocast_for


@dataclass
class VolumeDice:
    """3D Dice of one volume: ``dice[name]`` per foreground class and ``mean`` over them.

    A class absent from both the label and the prediction scores 1.0 (nothing to find, nothing found).
    """

    case_id: str
    dice: Dict[str, float]
    mean: float


@dataclass
class EvaluationResult:
    """Per-volume Dice plus the mean over volumes of each class and of the per-volume means."""

    volumes: List[VolumeDice]
    class_names: List[str]
    mean_per_class: Dict[str, float] = field(default_factory=dict)
    mean: float = float("nan")

    def to_dict(self) -> dict:
        return {
            "class_names": self.class_names,
            "mean_per_class": self.mean_per_class,
            "mean": self.mean,
            "volumes": [{"case_id": v.case_id, "dice": v.dice, "mean": v.mean} for v in self.volumes],
        }

    def table(self) -> str:
        """A plain-text table: one row per volume, then the mean."""
        names = self.class_names
        width = max([len("case"), len("mean")] + [len(v.case_id) for v in self.volumes])
        header = f"{'case':<{width}}  " + "  ".join(f"{n:>8}" for n in names) + f"  {'mean':>8}"
        lines = [header, "-" * len(header)]
        for v in self.volumes:
            lines.append(f"{v.case_id:<{width}}  " + "  ".join(f"{v.dice[n]:8.4f}" for n in names)
                         + f"  {v.mean:8.4f}")
        lines.append("-" * len(header))
        lines.append(f"{'mean':<{width}}  " + "  ".join(f"{self.mean_per_class[n]:8.4f}" for n in names)
                     + f"  {self.mean:8.4f}")
        return "\n".join(lines)


def dice_per_class(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..C-1 between two integer label arrays of the same shape: float64 ``[C-1]``."""
    prediction = np.asarray(prediction)
    label = np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from label shape {label.shape}")
    scores = np.empty(num_classes - 1, np.float64)
    for c in range(1, num_classes):
        p, t = prediction == c, label == c
        denominator = int(p.sum()) + int(t.sum())
        scores[c - 1] = 1.0 if denominator == 0 else 2.0 * int((p & t).sum()) / denominator
    return scores


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
                     progress: bool = False) -> EvaluationResult:
    """Per-volume 3D Dice of ``model`` on labelled ``volumes`` (trmcore.data.Volume).

    Every slice of a volume is predicted (also the empty ones) and the padding
    is removed before counting, so the Dice is that of the whole 3D volume.
    """
    num_classes = len(label_names)
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
        truth = unpad(slices.labels, slices.pad)
        scores = dice_per_class(predicted, truth, num_classes)
        results.append(VolumeDice(volume.case_id, dict(zip(names, scores.tolist())), float(scores.mean())))
    return summarize(results, names)


def summarize(volumes: List[VolumeDice], class_names: List[str]) -> EvaluationResult:
    result = EvaluationResult(volumes, list(class_names))
    if volumes:
        result.mean_per_class = {n: float(np.mean([v.dice[n] for v in volumes])) for n in class_names}
        result.mean = float(np.mean([v.mean for v in volumes]))
    return result


def evaluate_run(run_dir: str, data_root: str, channel: Optional[str] = None, labels: Optional[str] = None,
                 site: Optional[str] = None, cases: Optional[Sequence[str]] = None, device: Optional[str] = None,
                 batch_size: int = 16, progress: bool = True, sites=None) -> EvaluationResult:
    """Load a run and evaluate it on a dataset's task (channels/labels default to the run's own)."""
    from trmcore.data import load_task_volumes, parse_task
    from trmcore.training.checkpoint import load_run
    from trmcore.training.distributed import resolve_device

    resolved = resolve_device(device)
    model, info = load_run(run_dir, device=resolved)
    task = parse_task(channel or info.channels, labels or info.label_names[1:], site)
    volumes, task_info = load_task_volumes(data_root, task, cases=cases, progress=progress, sites=sites)
    check_task_matches(info, task_info, run_dir)
    return evaluate_volumes(model, volumes, task_info.label_names, info.axis, info.divisor, resolved,
                            batch_size, progress=progress)


def check_task_matches(info, task_info, run_dir) -> None:
    """ValueError unless the dataset task has the run's number of channels and classes."""
    if len(task_info.channels) != info.model.in_channels:
        raise ValueError(f"run {run_dir} takes {info.model.in_channels} channel(s) {info.channels}, "
                         f"the task gives {len(task_info.channels)} {task_info.channels}")
    if task_info.num_classes != info.num_classes:
        raise ValueError(f"run {run_dir} predicts {info.num_classes} classes {info.label_names}, "
                         f"the task has {task_info.num_classes} {task_info.label_names}")

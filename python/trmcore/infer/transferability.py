"""How well will a deployed model transfer to a new site? LEEP and transfer risk, no torch.

Runs the deployed (source) model over a site's labelled volumes and scores
its outputs against the site's labels with pixel-level LEEP (SPEC section 2)
and the transfer risk map (SPEC section 3), using the NumPy path of
:mod:`trmcore.ops`.

Definitions (all over the *valid voxels*: the voxels of every slice along
the model's slice axis whose image is not all zero, i.e. slices with tissue;
padding is never counted):

- dataset LEEP: mean log EEP over all valid voxels of all cases, with the
  joint P(y | z) of the whole dataset. <= 0; closer to 0 = more transferable.
- case LEEP: mean log EEP over the case's valid voxels, with the same dataset
  joint, so cases compare with each other and with the dataset LEEP.
- foreground LEEP: the same over the case's foreground voxels (label != 0),
  where segmentation errors matter; None when the case has no foreground.
- mean risk: mean of the TRM risk map R (base 10, computed per slice exactly
  as risk-weighted fine-tuning does) over the case's foreground voxels; in
  [1, base], higher = more of the structure is hard to transfer. None when the
  case has no foreground.
- at risk: the case LEEP lies below the dataset LEEP minus one standard
  deviation of the case LEEPs (flagged only with three or more cases).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np

from trmcore import ops
from trmcore.data.crop import CropPlan
from trmcore.data.preprocess import unpad
from trmcore.data.tasks import IGNORE_INDEX
from trmcore.infer.segmenter import Segmenter

# Slices per chunk in the scoring pass: bounds the float64 temporaries of the ops.
_CHUNK_SLICES = 16


@dataclass
class CaseTransfer:
    """Per-case transferability (see the module docstring for definitions)."""

    case_id: str
    site: Optional[str]
    voxels: int
    foreground_voxels: int
    leep: float
    foreground_leep: Optional[float]
    mean_risk: Optional[float]
    at_risk: bool = False


@dataclass
class TransferReport:
    """Dataset LEEP of a deployed model on labelled target data, and the per-case scores."""

    model: str
    model_channels: List[str]
    data_channels: List[str]
    source_labels: List[str]
    target_labels: List[str]
    leep: float
    voxels: int
    risk_base: float
    cases: List[CaseTransfer] = field(default_factory=list)
    conditional: List[List[float]] = field(default_factory=list)  # P(y | z), [C][Z]
    skipped_cases: List[str] = field(default_factory=list)  # cases without any slice with tissue

    def to_dict(self) -> dict:
        return asdict(self)

    def format_table(self) -> str:
        """A plain-text report: dataset LEEP, then cases from riskiest to safest."""
        lines = [
            f"model {self.model}: channels {','.join(self.model_channels)}, "
            f"classes {','.join(self.source_labels)}",
            f"data: channels {','.join(self.data_channels)}, labels {','.join(self.target_labels)}",
            f"dataset LEEP {self.leep:.4f} over {self.voxels} voxels of {len(self.cases)} case(s) "
            "(<= 0, closer to 0 = transfers better)",
            "",
            f"{'case':<24} {'site':<10} {'LEEP':>9} {'fg LEEP':>9} {'mean risk':>10}  at risk",
        ]
        for case in sorted(self.cases, key=lambda c: c.leep):
            fg = "-" if case.foreground_leep is None else f"{case.foreground_leep:.4f}"
            risk = "-" if case.mean_risk is None else f"{case.mean_risk:.3f}"
            lines.append(f"{case.case_id:<24} {case.site or '-':<10} {case.leep:>9.4f} {fg:>9} {risk:>10}  "
                         f"{'yes' if case.at_risk else ''}")
        if self.skipped_cases:
            lines.append(f"skipped (no slice with tissue): {', '.join(self.skipped_cases)}")
        return "\n".join(lines)


def assess_transferability(segmenter: Segmenter, volumes: Sequence, target_labels: Sequence[str],
                           data_channels: Optional[Sequence[str]] = None, base: float = ops.RISK_BASE,
                           progress: bool = True, cache_bytes: int = 2 << 30) -> TransferReport:
    """Score a deployed model on labelled volumes (:class:`trmcore.data.Volume`, already normalised).

    Args:
        segmenter: the deployed source model (its Z classes are the "dummy labels").
        volumes: labelled target volumes, ``image`` float32 ``[Cin, X, Y, Z]``
            z-scored, ``label`` int64 ``[X, Y, Z]`` in ``0..C-1``.
        target_labels: the C target class names, background first.
        data_channels: the volumes' channel names (only reported; a model may
            be assessed on another modality, which is the point of asking).
        base: risk-map base (R in [1, base]).
        cache_bytes: keep source logits (float16) in memory up to this size
            between the two passes; beyond it the network runs twice.
    """
    volumes = list(volumes)
    if not volumes:
        raise ValueError("no target volumes to assess")
    num_classes = len(target_labels)
    if num_classes < 2:
        raise ValueError(f"target labels need background and at least one class, got {list(target_labels)}")
    for vol in volumes:
        if vol.label is None:
            raise ValueError(f"case {vol.case_id!r} has no label volume: transferability needs labelled data")
        if vol.image.shape[0] != segmenter.metadata.num_channels:
            raise ValueError(f"case {vol.case_id!r} has {vol.image.shape[0]} channel(s) but the model expects "
                             f"{segmenter.metadata.num_channels} ({', '.join(segmenter.channels)})")

    axis = segmenter.metadata.axis
    joint = None
    cache: List[Optional[np.ndarray]] = []
    cached = 0
    scored, skipped = [], []
    for vol in _bar(volumes, progress, "source logits"):
        logits, labels = _case_slices(segmenter, vol, axis)
        if labels.size == 0:  # all-zero or constant image: nothing to score, and one case must not stop the rest
            warnings.warn(f"case {vol.case_id!r} skipped: its image has no slice with tissue "
                          "(all zero or constant)", RuntimeWarning, stacklevel=2)
            skipped.append(vol.case_id)
            continue
        scored.append(vol)
        part = ops.leep_joint(logits, labels, num_classes)
        joint = part if joint is None else joint + part
        if cached + logits.size * 2 <= cache_bytes:
            cache.append(logits.astype(np.float16))
            cached += logits.size * 2
        else:
            cache.append(None)
    if joint is None or joint.count == 0:
        raise ValueError("the target volumes hold no slices with tissue (all images are zero or constant)")
    volumes = scored

    cases = []
    total = 0.0
    for vol, logits in zip(_bar(volumes, progress, "transfer risk"), cache):
        if logits is None:
            logits, labels = _case_slices(segmenter, vol, axis)
        else:
            labels = _case_slices(segmenter, vol, axis, labels_only=True)
        case, case_sum = _score_case(vol, logits, labels, joint, base)
        cases.append(case)
        total += case_sum
    _flag_at_risk(cases, total / joint.count)
    return TransferReport(
        model=str(segmenter.model_path), model_channels=segmenter.channels,
        data_channels=list(data_channels) if data_channels is not None else segmenter.channels,
        source_labels=segmenter.label_names, target_labels=list(target_labels),
        leep=total / joint.count, voxels=int(joint.count), risk_base=float(base), cases=cases,
        conditional=np.asarray(joint.conditional()).tolist(), skipped_cases=skipped)


def _case_slices(segmenter: Segmenter, vol, axis: int, labels_only: bool = False):
    """Logits float32 [S, Z, H, W] and labels int64 [S, H, W] of the case's slices with tissue."""
    image_slices = np.moveaxis(vol.image, axis + 1, 0)  # [S, Cin, H, W]
    keep = np.flatnonzero(image_slices.reshape(image_slices.shape[0], -1).any(axis=1))
    labels = np.moveaxis(np.asarray(vol.label), axis, 0)[keep].astype(np.int64)
    if labels_only:
        return labels
    if keep.size == 0:
        return np.zeros((0, segmenter.num_classes, *labels.shape[1:]), np.float32), labels
    slicer = segmenter.preprocessing.step("slice")  # the model's slice step, as training and trm predict cut
    plane = tuple(image_slices.shape[2:])
    plan = CropPlan(keep.astype(np.int64), ((0, plane[0]), (0, plane[1])), slicer.padding(plane))
    logits = np.ascontiguousarray(unpad(segmenter.slice_logits(slicer.cut(vol.image, plan)), plan.pad))
    return logits, labels


def _score_case(vol, logits: np.ndarray, labels: np.ndarray, joint, base: float):
    """(CaseTransfer, sum of log EEP over the case) for one case's slices with tissue."""
    voxels = int(np.count_nonzero(labels != IGNORE_INDEX))  # the dataset's "ignore" voxels never count
    if voxels == 0:
        raise ValueError(f"case {vol.case_id!r} has no slice with tissue (its image is all zero) "
                         "or no annotated voxel in them")
    leep_sum = fg_leep_sum = risk_sum = 0.0
    fg_voxels = 0
    for start in range(0, labels.shape[0], _CHUNK_SLICES):
        chunk_logits = logits[start:start + _CHUNK_SLICES].astype(np.float32)
        chunk_labels = labels[start:start + _CHUNK_SLICES]
        leep_map = ops.pixel_leep(chunk_logits, chunk_labels, joint)
        risk = ops.risk_map(leep_map, chunk_labels, base=base, scope=ops.RISK_SCOPE)
        foreground = chunk_labels > 0  # not background, not ignored
        leep_sum += float(leep_map.sum(dtype=np.float64))
        fg_leep_sum += float(leep_map[foreground].sum(dtype=np.float64))
        risk_sum += float(risk[foreground].sum(dtype=np.float64))
        fg_voxels += int(foreground.sum())
    case = CaseTransfer(
        case_id=vol.case_id, site=getattr(vol, "site", None), voxels=voxels, foreground_voxels=fg_voxels,
        leep=leep_sum / voxels,
        foreground_leep=fg_leep_sum / fg_voxels if fg_voxels else None,
        mean_risk=risk_sum / fg_voxels if fg_voxels else None)
    return case, leep_sum


def _flag_at_risk(cases: List[CaseTransfer], dataset_leep: float) -> None:
    if len(cases) < 3:
        return
    spread = float(np.std([c.leep for c in cases]))
    for case in cases:
        case.at_risk = case.leep < dataset_leep - spread


def _bar(items: Iterable, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="case")

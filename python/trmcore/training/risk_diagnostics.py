"""Diagnostics of transfer risk maps: per-class statistics and warnings when a map degenerates.

A risk map R in [1, base] is meant to single out the pixels where the source
model disagrees with the target. Two degenerate forms were seen on phantoms
and real scans (issue 14):

- **class weight**: R is nearly constant within each class (about base on the
  foreground, 1 on the background), so trm acts as a fixed foreground class
  weight; flagged when, in every class, at least ``CONSTANT_SHARE`` of the
  pixels lie in one band a tenth of the range wide (two adjacent bins of a
  20-bin histogram of R over [1, base]). A share rather than the standard
  deviation, since a few slices without foreground, whose min-max stretches
  the background over the whole range, would hide the pattern;
- **a few pixels rule**: almost every pixel has R near 1 (the lowest tenth of
  the range) and a few extreme pixels take R = base, as min-max scaling
  follows the extremes; flagged when at least ``NEAR_ONE_WARN`` of the valid
  pixels and at least half of every class are near 1, and the map is not a
  class weight (a sparse class at high risk over a background at 1, a tumour
  say, is what trm is for and is not flagged).

The statistics are sums (count, sum R, sum R^2, #R above the midpoint,
#R near 1, a histogram of R per class), so they add across batches and processes.

Example:
    >>> import torch
    >>> labels = torch.tensor([[[0, 0, 1, 1]]])
    >>> stats = RiskStatistics(num_classes=2, base=10.0)
    >>> stats.update(torch.tensor([[[1.0, 1.0, 10.0, 10.0]]]), labels)
    >>> summary = stats.summary(["background", "CSF"])
    >>> summary["classes"]["CSF"]["mean_risk"], summary["warnings"][0].split(":")[0]
    (10.0, 'class weight')
"""

from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch

from trmcore.training.weighting import IGNORE_INDEX

# Share of a class's pixels in one band of a tenth of the range above which the class counts as constant;
# a map constant in every class is a class weight.
CONSTANT_SHARE = 0.9
HISTOGRAM_BINS = 20
# "Near 1": R in the lowest tenth of [1, base].
NEAR_ONE = 0.1
# Share of valid pixels near 1 above which a few pixels rule the loss.
NEAR_ONE_WARN = 0.95
_FIELDS = ("pixels", "sum", "sum_sq", "above_midpoint", "near_one")


class RiskStatistics:
    """Additive per-class statistics of risk maps.

    Args:
        num_classes: C target classes (labels in [0, C) or ``ignore_index``).
        base: the risk base (R in [1, base]); the midpoint is (1 + base) / 2.
    """

    def __init__(self, num_classes: int, base: float = 10.0, ignore_index: int = IGNORE_INDEX) -> None:
        self.base = float(base)
        self.ignore_index = ignore_index
        self.sums = torch.zeros(num_classes, len(_FIELDS) + HISTOGRAM_BINS, dtype=torch.float64)

    @property
    def midpoint(self) -> float:
        return (1.0 + self.base) / 2.0

    @property
    def near_one_limit(self) -> float:
        return 1.0 + NEAR_ONE * (self.base - 1.0)

    def update(self, risk: Any, labels: Any) -> None:
        """Add risk maps ``[N, H, W]`` (torch or NumPy, any float dtype) with their labels."""
        risk = torch.as_tensor(risk).detach().to("cpu", torch.float64).flatten()
        labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).flatten()
        valid = labels != self.ignore_index
        risk, labels = risk[valid], labels[valid]
        num_classes = self.sums.shape[0]
        columns = (torch.ones_like(risk), risk, risk * risk, (risk > self.midpoint).double(),
                   (risk <= self.near_one_limit).double())
        for k, column in enumerate(columns):
            self.sums[:, k] += torch.bincount(labels, weights=column, minlength=num_classes)[:num_classes]
        position = ((risk - 1.0) / max(self.base - 1.0, 1e-12) * HISTOGRAM_BINS).floor().clamp(0, HISTOGRAM_BINS - 1)
        cells = labels * HISTOGRAM_BINS + position.long()
        histogram = torch.bincount(cells, minlength=num_classes * HISTOGRAM_BINS)[:num_classes * HISTOGRAM_BINS]
        self.sums[:, len(_FIELDS):] += histogram.view(num_classes, HISTOGRAM_BINS).double()

    def all_reduce(self, ctx: Any) -> "RiskStatistics":
        """Sum the statistics across processes (``ctx``: a DistContext)."""
        self.sums = ctx.all_reduce_sum(self.sums)
        return self

    def summary(self, class_names: Sequence[str]) -> Dict[str, Any]:
        """JSON-ready: per class mean / std of R, share above the midpoint and near 1; warnings."""
        classes: Dict[str, Dict[str, Optional[float]]] = {}
        for name, row in zip(class_names, self.sums.tolist()):
            count, total, total_sq, above, near = row[:len(_FIELDS)]
            histogram = row[len(_FIELDS):]
            if count == 0:
                classes[name] = {"pixels": 0, "mean_risk": None, "std_risk": None, "share_above_midpoint": None,
                                 "share_near_one": None, "share_in_densest_band": None}
                continue
            mean = total / count
            band = max(histogram[k] + histogram[k + 1] for k in range(HISTOGRAM_BINS - 1))
            classes[name] = {"pixels": int(count), "mean_risk": mean,
                             "std_risk": math.sqrt(max(total_sq / count - mean * mean, 0.0)),
                             "share_above_midpoint": above / count, "share_near_one": near / count,
                             "share_in_densest_band": band / count}
        pixels = float(self.sums[:, 0].sum())
        near_share = float(self.sums[:, 4].sum()) / pixels if pixels else None
        return {"base": self.base, "midpoint": self.midpoint, "near_one_below": self.near_one_limit,
                "share_near_one": near_share, "classes": classes,
                "warnings": self._warnings(classes, near_share)}

    def _warnings(self, classes: Dict[str, Dict[str, Optional[float]]], near_share: Optional[float]) -> List[str]:
        present = {name: c for name, c in classes.items() if c["pixels"]}
        warnings = []
        means = [c["mean_risk"] for c in present.values()]
        # A class weight: every class concentrated in one band, and the classes' levels differ.
        class_weight = (len(present) > 1 and max(means) - min(means) > NEAR_ONE * (self.base - 1.0)
                        and all(c["share_in_densest_band"] >= CONSTANT_SHARE for c in present.values()))
        if class_weight:
            levels = ", ".join(f"{name} {c['mean_risk']:.2f}" for name, c in present.items())
            warnings.append(f"class weight: the risk map is nearly constant within each class (>= "
                            f"{CONSTANT_SHARE:.0%} of each class's pixels in one band a tenth of the range wide; "
                            f"mean risk {levels}), so trm acts as a fixed class weight")
        elif (near_share is not None and near_share >= NEAR_ONE_WARN
              and all(c["share_near_one"] >= 0.5 for c in present.values())):
            # Most of every class near 1: the rest are a few pixels, not a sparse class (a tumour at high
            # risk over a background at 1 is what trm is for).
            warnings.append(f"a few pixels rule: {near_share:.1%} of the pixels, and most of every class, have "
                            f"risk <= {self.near_one_limit:.2f} (near 1); the few others dominate the loss "
                            "(min-max scaling follows the extremes; try --risk-scaling robust)")
        return warnings


def summary_lines(summary: Dict[str, Any], title: str = "risk map") -> List[str]:
    """Readable lines: one per class (mean risk, share above the midpoint), then the warnings."""
    lines = [f"{title}: mean risk and share of pixels above the midpoint {summary['midpoint']:g} per class"]
    for name, c in summary["classes"].items():
        if not c["pixels"]:
            lines.append(f"  {name:<12} (no pixel)")
            continue
        lines.append(f"  {name:<12} mean {c['mean_risk']:.2f}  std {c['std_risk']:.2f}  "
                     f"above midpoint {c['share_above_midpoint']:.1%}  near 1 {c['share_near_one']:.1%}")
    lines += [f"  warning: {w}" for w in summary["warnings"]]
    return lines


def report(summary: Dict[str, Any], title: str = "risk map", stream: Any = None) -> None:
    """Print :func:`summary_lines` (to stderr by default, so tables on stdout stay clean)."""
    print("\n".join(summary_lines(summary, title)), file=stream or sys.stderr, flush=True)


def volume_diagnostics(risk_volumes: Sequence[Any], labels: Sequence[Any], class_names: Sequence[str],
                       base: float) -> Dict[str, Any]:
    """Summary over whole volumes (``trm riskmap``): risk arrays with their class-index label arrays."""
    stats = RiskStatistics(len(class_names), base)
    for risk, label in zip(risk_volumes, labels):
        stats.update(risk, label)
    return stats.summary(class_names)


def write_volume_diagnostics(out_dir: Any, before: Sequence[Any], after: Optional[Sequence[Any]],
                             labels: Sequence[Any], class_names: Sequence[str], base: float,
                             settings: Dict[str, Any], titles: Sequence[str] = ("before", "after"),
                             show: bool = True) -> Any:
    """``trm riskmap``: OUT/risk_diagnostics.json with the summaries before (and after) fine-tuning.

    Printed when ``show`` or when a map is flagged. Returns (path, {"before", "after", **settings}).
    """
    from pathlib import Path

    from trmcore.fileio import atomic_write_json

    diagnostics = {"before": volume_diagnostics(before, labels, class_names, base),
                   "after": None if after is None else volume_diagnostics(after, labels, class_names, base),
                   **settings}
    for summary, title in zip((diagnostics["before"], diagnostics["after"]), titles):
        if summary is not None and (show or summary["warnings"]):
            report(summary, title)
    path = Path(out_dir) / "risk_diagnostics.json"
    atomic_write_json(path, diagnostics, overwrite=True)
    return path, diagnostics


def panel_caption(summary: Dict[str, Any]) -> str:
    """One short line per foreground class for a figure: mean risk and share above the midpoint."""
    parts = [f"{name}: mean {c['mean_risk']:.1f}, {c['share_above_midpoint']:.0%} > {summary['midpoint']:g}"
             for name, c in list(summary["classes"].items())[1:] if c["pixels"]]
    return "; ".join(parts)


def weighting_diagnostics(weighting: Any, slices: Any, class_names: Sequence[str], ctx: Any,
                          base: float, batch_size: int = 16) -> Optional[Dict[str, Any]]:
    """Summary of the risk weights a trm weighting gives the training slices (None for other methods).

    Args:
        weighting: a LossWeighting; only one with transferability ``maps`` (trm) is diagnosed.
        slices: the TrainingSlices (this rank's shard is summarised, then summed across ranks).
    """
    if not hasattr(weighting, "maps"):
        return None
    stats = RiskStatistics(len(class_names), base)
    for index in slices.shard_batches(batch_size):
        labels = slices.labels[index]
        stats.update(weighting.weights(index, labels.to(ctx.device)), labels)
    return stats.all_reduce(ctx).summary(class_names)

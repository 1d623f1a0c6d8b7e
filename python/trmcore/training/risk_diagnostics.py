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

from trmcore.ops import RISK_BASE
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

    def __init__(self, num_classes: int, base: float = RISK_BASE, ignore_index: int = IGNORE_INDEX) -> None:
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
    mass = summary.get("mass")
    if mass:
        lines.append(f"  loss weight (balance {summary.get('balance', 'none')}): share of pixels -> share of weight, "
                     "effective weight per pixel (vanilla: the same shares, weight 1)")
        for name, c in mass["target_classes"].items():
            if c["pixels"]:
                lines.append(f"  {name:<12} {c['pixel_share']:.2%} -> {c['weight_share']:.2%}  "
                             f"effective weight {c['effective_weight']:.2f}")
        empty = mass.get("background_of_empty_slices") or {}
        if empty.get("pixels"):
            lines.append(f"  background of slices without foreground: mean risk {empty['mean_risk']:.2f}, "
                         f"{empty['weight_share']:.1%} of the loss weight")
        if mass.get("background_emphasis") is not None:
            lines.append(f"  background / foreground effective weight {mass['background_emphasis']:.2f} (vanilla 1)")
    grads = summary.get("gradients")
    if grads and grads.get("batches"):
        lines.append(f"  gradient norm foreground / background {grads['fg_bg_ratio']:.2f} "
                     f"(vanilla {grads['vanilla_fg_bg_ratio']:.2f}); loss {grads['loss']:.3g} = vanilla's "
                     f"{grads['vanilla_loss']:.3g} x {grads['denominator_factor']:.3g} (pixels / Eq. 7 denominator) "
                     f"x {grads['weight_factor']:.3g} (weighted / plain mean CE)")
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
                          base: float, batch_size: int = 16, model: Any = None,
                          denominator: Any = None) -> Optional[Dict[str, Any]]:
    """Summary of the risk maps a trm weighting gives the training slices (None for other methods).

    Args:
        weighting: a LossWeighting; only one with transferability ``maps`` (trm) is diagnosed.
        slices: the TrainingSlices (this rank's shard is summarised, then summed across ranks).
        model: the model about to be fine-tuned; with it (and ``denominator``, the run's
            LossDenominator) the summary gets ``gradients`` (:func:`gradient_diagnostics`).
    Returns:
        The :class:`RiskStatistics` summary of R, plus ``mass`` (:func:`mass_diagnostics`: where the
        loss weight sits per target and source class) and the harm warnings of :func:`harm_warnings`
        appended to ``warnings``.
    """
    if not hasattr(weighting, "maps"):
        return None
    stats = RiskStatistics(len(class_names), base)
    risk_of = getattr(weighting, "risk", weighting.weights)  # R itself, before any class balance
    for index in slices.shard_batches(batch_size):
        labels = slices.labels[index]
        stats.update(risk_of(index, labels.to(ctx.device)), labels)
    summary = stats.all_reduce(ctx).summary(class_names)
    summary["mass"] = mass_diagnostics(weighting, slices, class_names, ctx, batch_size)
    summary["balance"] = getattr(weighting, "balance", "none")
    summary["warnings"] = summary["warnings"] + harm_warnings(summary["mass"], summary["balance"])
    if model is not None and denominator is not None:
        summary["gradients"] = gradient_diagnostics(model, weighting, slices, denominator, ctx,
                                                    batch_size=min(batch_size, 8), max_batches=2)
    return summary


# --- Where the loss weight goes (issue 24) -------------------------------------------------------------------
# Background's effective weight (mean loss weight per pixel) relative to the foreground's, above which trm
# shifts the class balance towards background compared with vanilla (where the ratio is 1): under-segmentation.
BACKGROUND_EMPHASIS_WARN = 1.0
# Share of the loss-weight mass on target-background pixels that the source model calls a foreground class,
# above which the source's idea of "foreground" covers much target background (a superset task: whole tumour
# for an enhancing-tumour target); the risk map then puts its weight around the lesion.
CONFLICT_MASS_WARN = 0.25
# Background / foreground effective weight below which trm acts as a strong foreground class weight (the
# foreground weighs more than 1 / this times the background). On the real MS benchmark (docs/results.md,
# "Issue 24") the 4 runs below it include the pair where trm trailed vanilla (0.076 vs 0.085, bg/fg 0.12), and
# per-class scored 0.011 above trm on average over them; no phantom run fell below it (lowest 0.164).
FOREGROUND_EMPHASIS_WARN = 0.15


class WeightMass:
    """Additive sums per (target class y, source class z): pixels, sum of R, sum of loss weights.

    Args:
        num_classes: C target classes; num_source: Z source classes (the source head's outputs).
    """

    def __init__(self, num_classes: int, num_source: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.sums = torch.zeros(3, num_classes, num_source, dtype=torch.float64)

    def update(self, risk: Any, weights: Any, labels: Any, source_classes: Any) -> None:
        """Add ``[N, H, W]`` maps: R, the loss weights, target labels and the source's argmax class."""
        labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).flatten()
        valid = labels != self.ignore_index
        y = labels[valid]
        z = torch.as_tensor(source_classes).detach().to("cpu", torch.int64).flatten()[valid]
        cells = y * self.sums.shape[2] + z
        size = self.sums.shape[1] * self.sums.shape[2]
        for k, values in enumerate((torch.ones_like(y, dtype=torch.float64),
                                    torch.as_tensor(risk).detach().to("cpu", torch.float64).flatten()[valid],
                                    torch.as_tensor(weights).detach().to("cpu", torch.float64).flatten()[valid])):
            self.sums[k] += torch.bincount(cells, weights=values, minlength=size)[:size].view(self.sums.shape[1:])

    def all_reduce(self, ctx: Any) -> "WeightMass":
        self.sums = ctx.all_reduce_sum(self.sums)
        return self

    def summary(self, class_names: Sequence[str], source_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Per target class and per source class: pixel share, weight-mass share, effective weight, mean R.

        ``effective_weight`` = sum of loss weights / pixels of the class (vanilla: 1 for every class);
        ``weight_share`` = the class's share of all loss weight (vanilla: its pixel share).
        ``background_emphasis`` = background's effective weight / the pixel-weighted mean effective
        weight of the foreground classes (vanilla: 1). ``conflict_share`` = share of the weight mass on
        target-background pixels whose source class is not the source's class 0.
        """
        pixels, risk, weight = self.sums
        source_names = list(source_names or [f"source class {z}" for z in range(pixels.shape[1])])
        total_pixels, total_weight = float(pixels.sum()), float(weight.sum())

        def row(p: torch.Tensor, r: torch.Tensor, w: torch.Tensor) -> Dict[str, Optional[float]]:
            count = float(p.sum())
            return {"pixels": int(count), "pixel_share": count / total_pixels if total_pixels else None,
                    "weight_share": float(w.sum()) / total_weight if total_weight else None,
                    "effective_weight": float(w.sum()) / count if count else None,
                    "mean_risk": float(r.sum()) / count if count else None}

        target = {name: row(pixels[c], risk[c], weight[c]) for c, name in enumerate(class_names)}
        source = {name: row(pixels[:, z], risk[:, z], weight[:, z]) for z, name in enumerate(source_names)}
        cross = {f"{class_names[c]} / {source_names[z]}": row(pixels[c, z], risk[c, z], weight[c, z])
                 for c in range(pixels.shape[0]) for z in range(pixels.shape[1]) if pixels[c, z] > 0}
        fg_pixels, fg_weight = float(pixels[1:].sum()), float(weight[1:].sum())
        bg_pixels = float(pixels[0].sum())
        emphasis = None
        if fg_pixels and bg_pixels and fg_weight:
            emphasis = (float(weight[0].sum()) / bg_pixels) / (fg_weight / fg_pixels)
        conflict = float(weight[0, 1:].sum()) / total_weight if total_weight and pixels.shape[1] > 1 else None
        return {"target_classes": target, "source_classes": source, "cells": cross,
                "background_emphasis": emphasis, "conflict_share": conflict}


def _masked_gradient_norm(model: Any, images: Any, labels: Any, weights: Any, denominator: Any, mask: Any) -> float:
    """L2 norm of the trainable parameters' gradient of the run's loss restricted to the ``mask`` pixels."""
    import torch.nn.functional as F

    params = [p for p in model.parameters() if p.requires_grad]
    if not params or not bool(mask.any()):
        return 0.0
    logits = model(images).float()
    ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    valid = labels != IGNORE_INDEX
    numerator = (weights * ce * (mask & valid)).sum()
    loss = numerator / _denominator(labels, denominator)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def _denominator(labels: Any, denominator: Any) -> float:
    """What risk_weighted_ce divides by: valid pixels ("valid"), max(#foreground, floor) ("batch")."""
    valid = labels != IGNORE_INDEX
    if denominator.normalize == "valid":
        return float(max(1, int(valid.sum())))
    foreground = int(((labels != 0) & valid).sum())
    if denominator.normalize == "image":  # per image then averaged: approximate by the batch
        return float(max(1, foreground))
    return float(max(denominator.min_foreground, foreground, 1))


def gradient_diagnostics(model: Any, weighting: Any, slices: Any, denominator: Any, ctx: Any,
                         batch_size: int = 8, max_batches: int = 4) -> Dict[str, Any]:
    """Foreground vs background gradient and the loss scale, at the start of fine-tuning.

    Over up to ``max_batches`` batches of this rank's shard that hold foreground: the norm of the
    trainable parameters' gradient of the run's loss from foreground pixels only and from background
    pixels only, the same for vanilla (weights 1, mean over valid pixels), and the run's loss next to
    vanilla's with its two factors: ``denominator_factor`` = valid pixels / the run's denominator
    (Eq. 7 divides by the foreground count, not the pixel count) and ``weight_factor`` = the weighted
    mean CE / the plain mean CE. loss / vanilla loss = denominator_factor * weight_factor.
    The model is run in eval mode (no BatchNorm statistics change) and its gradients are not kept.
    """
    import torch.nn.functional as F

    from trmcore.training.loss_denominator import LossDenominator

    was_training = model.training
    model.eval()
    vanilla = LossDenominator("valid")
    rows = []
    try:
        for index in slices.shard_batches(batch_size):
            labels = slices.labels[index].to(ctx.device)
            if not bool(((labels != 0) & (labels != IGNORE_INDEX)).any()):
                continue
            images = slices.images[index].to(ctx.device)
            weights = weighting.weights(index, labels)
            ones = torch.where(labels == IGNORE_INDEX, torch.zeros_like(weights), torch.ones_like(weights))
            fg = (labels != 0) & (labels != IGNORE_INDEX)
            bg = labels == 0
            with torch.no_grad():
                ce = F.cross_entropy(model(images).float(), labels.clamp_min(0), reduction="none")
                valid = labels != IGNORE_INDEX
                loss = float((weights * ce * valid).sum()) / _denominator(labels, denominator)
                plain = float((ce * valid).sum()) / _denominator(labels, vanilla)
                weighted_mean = float((weights * ce * valid).sum()) / max(1, int(valid.sum()))
            rows.append({"loss": loss, "vanilla_loss": plain,
                         "denominator_factor": _denominator(labels, vanilla) / _denominator(labels, denominator),
                         "weight_factor": weighted_mean / plain if plain else None,
                         "grad_fg": _masked_gradient_norm(model, images, labels, weights, denominator, fg),
                         "grad_bg": _masked_gradient_norm(model, images, labels, weights, denominator, bg),
                         "vanilla_grad_fg": _masked_gradient_norm(model, images, labels, ones, vanilla, fg),
                         "vanilla_grad_bg": _masked_gradient_norm(model, images, labels, ones, vanilla, bg)})
            if len(rows) >= max_batches:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not rows:
        return {"batches": 0}
    out: Dict[str, Any] = {"batches": len(rows)}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = sum(values) / len(values) if values else None
    out["fg_bg_ratio"] = out["grad_fg"] / out["grad_bg"] if out["grad_bg"] else None
    out["vanilla_fg_bg_ratio"] = out["vanilla_grad_fg"] / out["vanilla_grad_bg"] if out["vanilla_grad_bg"] else None
    return out


def mass_diagnostics(weighting: Any, slices: Any, class_names: Sequence[str], ctx: Any,
                     batch_size: int = 16) -> Optional[Dict[str, Any]]:
    """:class:`WeightMass` summary of a trm weighting over the training slices (None for other methods)."""
    if not hasattr(weighting, "source_classes"):
        return None
    num_source = int(weighting.joint.sums.shape[1])
    mass = WeightMass(len(class_names), num_source)
    # Background of slices without any foreground: [pixels, sum R, sum weight] (per-image min-max stretches
    # their nearly constant T over the whole range [1, base]).
    empty = torch.zeros(3, dtype=torch.float64)
    for index in slices.shard_batches(batch_size):
        labels = slices.labels[index].to(ctx.device)
        rows = weighting.row_of[index.cpu()]
        risk, weights = weighting.risk(index, labels), weighting.weights(index, labels)
        mass.update(risk, weights, labels, weighting.source_classes[rows])
        no_fg = ~((labels != 0) & (labels != IGNORE_INDEX)).flatten(1).any(dim=1)
        pick = (labels == 0) & no_fg[:, None, None]
        empty += torch.stack([pick.sum().double(), risk[pick].double().sum(), weights[pick].double().sum()]).cpu()
    summary = mass.all_reduce(ctx).summary(class_names, ["source background"] +
                                           [f"source class {z}" for z in range(1, num_source)])
    empty = ctx.all_reduce_sum(empty)
    total_weight = float(mass.sums[2].sum())
    summary["background_of_empty_slices"] = {
        "pixels": int(empty[0]), "mean_risk": float(empty[1] / empty[0]) if empty[0] else None,
        "weight_share": float(empty[2]) / total_weight if total_weight else None}
    return summary


def harm_warnings(mass: Optional[Dict[str, Any]], balance: str = "none") -> List[str]:
    """Warnings when the weight mass predicts that trm hurts, with what to use instead."""
    if not mass:
        return []
    warnings = []
    emphasis, conflict = mass.get("background_emphasis"), mass.get("conflict_share")
    if emphasis is not None and emphasis > BACKGROUND_EMPHASIS_WARN and balance == "none":
        warnings.append(f"background emphasis: trm gives a background pixel {emphasis:.2f} times the mean weight of a "
                        "foreground pixel (vanilla: 1), so it tilts the class balance towards background and can "
                        "under-segment; use --trm-class-balance per-class (weights of mean 1 in every class: "
                        "vanilla's class balance, only the emphasis inside a class stays) or --method vanilla")
    if emphasis is not None and emphasis < FOREGROUND_EMPHASIS_WARN and balance == "none":
        warnings.append(f"foreground emphasis: trm weighs a foreground pixel {1 / emphasis:.1f} times a background "
                        f"pixel on average (vanilla: 1), a strong class weight that can over-segment; in the 4 runs "
                        "of the real MS benchmark with this emphasis, --trm-class-balance per-class scored 0.011 Dice "
                        "above trm on average (docs/results.md, Issue 24); consider it")
    if conflict is not None and conflict >= CONFLICT_MASS_WARN:
        warnings.append(f"source/target conflict: {conflict:.0%} of the loss weight sits on target background that "
                        "the source model calls foreground (a source trained on a wider label, e.g. whole tumour "
                        "for an enhancing-tumour target); the risk map there teaches the model to shrink the "
                        "lesion; the safe choices are --method vanilla or a source trained on the target's labels"
                        + ("; --trm-class-balance per-class at least keeps vanilla's class balance (no evidence yet "
                           "that it helps here: docs/results.md, Issue 24)" if balance == "none" else ""))
    return warnings

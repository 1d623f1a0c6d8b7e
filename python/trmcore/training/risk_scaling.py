"""How the transferability map T becomes the risk map R (SPEC 3, and the robust option of SPEC 8),
and how R is balanced between the target classes and annealed (SPEC 8, issue 24).

``"minmax"`` is TRM Eq. 5-6: ``T' = (max T - T) / (max T - min T)`` per image
(or batch), ``R = base ** T'``. Min-max follows the extremes: a few pixels
with very low T (often at the brain's edge) take R = base and squeeze every
other pixel towards R = 1, so those few pixels rule the loss.

``"robust"`` first clips T to ``[lo, hi]``, where ``lo`` is the lowest of the
classes' ``q``-quantiles of T and ``hi`` the highest of their
``(1 - q)``-quantiles, in the same scope as the min-max. Quantiles are taken
per class so that a small class (a tumour of 1 % of the pixels) is never
clipped away as an outlier of the background: the contrast between classes
stays, the single-pixel extremes go. The min-max and the power are then
exactly :func:`trmcore.ops.risk_map`.

Example:
    >>> import torch
    >>> t = -0.1 * torch.arange(20.0).view(1, 1, 20); t[0, 0, 19] = -50.0  # T from 0 to -1.8, one at -50
    >>> labels = torch.zeros(1, 1, 20, dtype=torch.int64)
    >>> round(float(scaled_risk_map(t, labels, scaling="minmax")[0, 0, 18]), 2)  # squeezed towards 1
    1.09
    >>> round(float(scaled_risk_map(t, labels, scaling="robust", quantile=0.1)[0, 0, 18]), 2)
    10.0
"""

from __future__ import annotations

import torch

from trmcore import ops
from trmcore.training.method_settings import RISK_BALANCES, RISK_SCALINGS

# As trmcore.ops (and training.weighting); not imported from weighting, which imports this module.
IGNORE_INDEX = -100


def clip_to_class_quantiles(leep_map: torch.Tensor, labels: torch.Tensor, quantile: float, scope: str = ops.RISK_SCOPE,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """T clipped to the per-class quantiles, float32 ``[N, H, W]`` (ignored pixels unchanged).

    Args:
        leep_map: float ``[N, H, W]`` transferability (log EEP).
        labels: int ``[N, H, W]`` target classes or ``ignore_index``.
        quantile: q in [0, 0.5); 0 leaves T as it is.
        scope: "image" (bounds per image) or "batch" (one pair of bounds for the batch).
    """
    t = leep_map.detach().float()
    if quantile <= 0:
        return t.clone()
    groups = [slice(None)] if scope == "batch" else [slice(i, i + 1) for i in range(t.shape[0])]
    out = t.clone()
    for group in groups:
        values, classes = t[group], labels[group]
        valid = classes != ignore_index
        lows, highs = [], []
        for c in torch.unique(classes[valid]).tolist():
            pixels = values[classes == c].double()
            lows.append(torch.quantile(pixels, quantile))
            highs.append(torch.quantile(pixels, 1.0 - quantile))
        if not lows:
            continue
        low, high = float(torch.stack(lows).min()), float(torch.stack(highs).max())
        out[group] = torch.where(valid, values.clamp(low, high), values)
    return out


def scaled_risk_map(leep_map: torch.Tensor, labels: torch.Tensor, base: float = ops.RISK_BASE, scope: str = ops.RISK_SCOPE,
                    scaling: str = "minmax", quantile: float = 0.05, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """R in [1, base] (0 at ignored pixels), float32 ``[N, H, W]``, with the chosen scaling of T."""
    if scaling not in RISK_SCALINGS:
        raise ValueError(f"risk scaling must be one of {RISK_SCALINGS}, got {scaling!r}")
    if scaling == "robust":
        leep_map = clip_to_class_quantiles(leep_map, labels, quantile, scope, ignore_index)
    return ops.risk_map(leep_map, labels, base=base, scope=scope, ignore_index=ignore_index)


def class_risk_sums(risk: torch.Tensor, labels: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """float64 ``[C, 2]``: (sum of R, pixel count) per target class over valid pixels (adds across batches)."""
    valid = labels != ignore_index
    classes = labels[valid].long().flatten().cpu()
    values = risk[valid].double().flatten().cpu()
    sums = torch.bincount(classes, weights=values, minlength=num_classes)[:num_classes]
    counts = torch.bincount(classes, minlength=num_classes)[:num_classes].double()
    return torch.stack([sums, counts], dim=1)


def class_means(sums: torch.Tensor) -> torch.Tensor:
    """float32 ``[C]``: mean R per class from :func:`class_risk_sums` (1 for a class without pixels)."""
    return torch.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1].clamp_min(1), torch.ones_like(sums[:, 0])).float()


def balance_risk(risk: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, balance: str = "none",
                 ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Loss weights from R, float32 ``[N, H, W]`` (0 at ignored pixels).

    Args:
        risk: R ``[N, H, W]`` (0 at ignored pixels).
        labels: int ``[N, H, W]`` target classes or ``ignore_index``.
        means: float ``[C]``, the mean R of each class over the training pixels (:func:`class_means`).
        balance: "none" (R itself, TRM Eq. 7's weights), "per-class" (R / means[class]: mean weight 1
            in every class over the training set, so the classes weigh as in vanilla cross-entropy and
            only the emphasis within a class remains) or "foreground" ("per-class" on the foreground
            classes, weight 1 on background).

    Example:
        >>> r = torch.tensor([[[2.0, 4.0, 10.0, 6.0]]]); y = torch.tensor([[[0, 0, 1, 1]]])
        >>> [round(v, 4) for v in balance_risk(r, y, torch.tensor([3.0, 8.0]), "per-class").flatten().tolist()]
        [0.6667, 1.3333, 1.25, 0.75]
        >>> balance_risk(r, y, torch.tensor([3.0, 8.0]), "foreground").flatten().tolist()
        [1.0, 1.0, 1.25, 0.75]
    """
    if balance not in RISK_BALANCES:
        raise ValueError(f"risk balance must be one of {RISK_BALANCES}, got {balance!r}")
    if balance == "none":
        return risk
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    weights = risk / means.to(risk.device)[safe].clamp_min(1e-12)
    if balance == "foreground":
        weights = torch.where(safe == 0, torch.ones_like(weights), weights)
    return torch.where(valid, weights, torch.zeros_like(weights))


def anneal_weights(weights: torch.Tensor, labels: torch.Tensor, iteration: int, iterations: int,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``1 + (w - 1) * (1 - iteration / iterations)`` on valid pixels: w at iteration 0, 1 at the end.

    Example:
        >>> anneal_weights(torch.tensor([[5.0, 1.0]]), torch.tensor([[1, 0]]), 3, 4).tolist()
        [[2.0, 1.0]]
    """
    keep = max(0.0, 1.0 - iteration / max(iterations, 1))
    annealed = 1.0 + (weights - 1.0) * keep
    return torch.where(labels != ignore_index, annealed, torch.zeros_like(annealed))

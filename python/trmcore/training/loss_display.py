"""The displayed training loss: every method on the scale of mean cross-entropy.

What is optimised differs by method (``trmcore.training.loss_denominator``):
vanilla, class-weight and trs-map divide the weighted sum ``sum(w * CE)`` by
the batch's valid pixels, trm by its foreground pixels (bounded Eq. 7), so
trm's objective reads ~100-2000 where cross-entropy users expect ~0.5. The
progress bar and metrics.csv's ``loss`` column show instead the **weighted
mean cross-entropy** of the batch,

    sum over valid pixels of w * CE  /  sum over valid pixels of w,

that is, the optimised loss times what the method divides by, divided by the
sum of the weights. With all-ones weights (vanilla) it is the mean
cross-entropy itself; for any weights it lies between the smallest and the
largest pixel's cross-entropy, so methods compare by eye. It changes nothing
that is optimised: metrics.csv's ``objective`` column keeps the optimised loss.

Example:
    >>> import torch
    >>> labels = torch.tensor([[[0, 1], [1, -100]]]); weights = torch.tensor([[[1.0, 3.0], [3.0, 9.0]]])
    >>> # objective "batch": sum(w * CE) / #foreground = (1*a + 3*b + 3*c) / 2
    >>> float(mean_ce_scale(torch.tensor(7.0), labels, weights, "batch", 1.0))  # 7 * 2 / (1 + 3 + 3)
    2.0
"""

from __future__ import annotations

from typing import Optional

import torch

from trmcore import ops
from trmcore.training.weighting import IGNORE_INDEX


def mean_ce_scale(loss: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, normalize: str,
                  min_foreground: float, logits: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weighted mean cross-entropy of a batch from its optimised ``loss`` (detached, float64 scalar).

    Args:
        loss: the scalar :func:`trmcore.ops.risk_weighted_ce` returned with ``normalize`` and
            ``min_foreground``.
        labels: int64 ``[B, H, W]`` (``IGNORE_INDEX`` left out); weights: float32 ``[B, H, W]``.
        logits: ``[B, C, H, W]``, needed only for ``normalize="image"`` (whose per-image
            denominators cannot be undone from the mean): the weighted sum is then recomputed.
    """
    valid = labels != IGNORE_INDEX
    weight_sum = torch.where(valid, weights.detach(), torch.zeros_like(weights)).sum(dtype=torch.float64)
    loss = loss.detach().double()
    if normalize == "valid":
        denominator = valid.sum().double()
    elif normalize == "batch":
        foreground = (valid & (labels != 0)).sum().double()
        denominator = torch.clamp(foreground, min=float(min_foreground))
    elif normalize == "image":
        if logits is None:
            raise ValueError("the 'image' normalisation needs the logits to rescale its loss")
        with torch.no_grad():
            loss = ops.risk_weighted_ce(logits.detach().float(), labels, weights.detach(), ignore_index=IGNORE_INDEX,
                                        normalize="valid").double()
        denominator = valid.sum().double()
    else:
        raise ValueError(f"unknown loss normalisation {normalize!r}")
    # All weights zero: nothing is weighted, the loss is 0 and so is its mean.
    return torch.where(weight_sum > 0, loss * denominator / weight_sum.clamp(min=1e-300), torch.zeros_like(loss))

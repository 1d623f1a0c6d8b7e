"""The denominator of the training loss: TRM Eq. 7 as published, or bounded (SPEC 4 and 8).

TRM Eq. 7 divides a batch's risk-weighted cross-entropy by the batch's
foreground pixel count. Where most slices hold little or no foreground
(tumours, lesions), a batch with a handful of foreground pixels gets a loss
and gradient orders of magnitude larger than the others, and Adam follows
those batches towards background (docs/training.md, "Bounded Eq. 7").

``"mean"`` divides by the valid pixel count as vanilla does (no Eq. 7).

``"bounded"`` keeps Eq. 7 for every batch with at least ``E / bound``
foreground pixels and floors the denominator there otherwise, where ``E``
is the expected foreground count of a batch under the sampler (from the
training set's labels). So no batch is scaled by more than ``bound`` times
what a batch with the expected foreground count gets.

Example:
    >>> import torch
    >>> labels = torch.zeros(4, 8, 8, dtype=torch.int64); labels[0, :2, :2] = 1
    >>> round(expected_foreground(labels, batch_size=2, foreground_share=0.0), 3)  # 2 * 4 / 4
    2.0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trmcore.training.config import TrainConfig
from trmcore.training.sampling import foreground_slots
from trmcore.training.weighting import IGNORE_INDEX


@dataclass(frozen=True)
class LossDenominator:
    """``normalize`` and ``min_foreground`` of :func:`trmcore.ops.risk_weighted_ce` for one run.

    ``expected_foreground``: E, the expected foreground pixels of a batch (0 when not needed).
    """

    normalize: str
    min_foreground: float = 1.0
    expected_foreground: float = 0.0

    def to_dict(self) -> dict:
        return {"normalize": self.normalize, "min_foreground": self.min_foreground,
                "expected_foreground": self.expected_foreground}


def foreground_per_slice(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """int64 ``[S]``: pixels of each slice labelled neither background (0) nor ``ignore_index``."""
    return ((labels != 0) & (labels != ignore_index)).flatten(1).sum(dim=1)


def expected_foreground(labels: torch.Tensor, batch_size: int, foreground_share: float,
                        ignore_index: int = IGNORE_INDEX) -> float:
    """E: expected foreground pixels of a batch of ``batch_size`` slices under :class:`SliceSampler`.

    Uniform slots draw any training slice, foreground slots only slices with foreground
    (``foreground_share`` as in the sampler; no foreground slot when no slice has foreground).
    """
    counts = foreground_per_slice(labels, ignore_index).double()
    has_foreground = counts > 0
    fg_slots = foreground_slots(batch_size, foreground_share) if bool(has_foreground.any()) else 0
    mean_all = float(counts.mean()) if len(counts) else 0.0
    mean_fg = float(counts[has_foreground].mean()) if fg_slots else 0.0
    return (batch_size - fg_slots) * mean_all + fg_slots * mean_fg


def loss_denominator(method_normalize: str, config: TrainConfig, labels: torch.Tensor) -> LossDenominator:
    """The loss denominator of a run.

    Args:
        method_normalize: what the method asks for (``LossWeighting.normalize``): "valid" for
            vanilla / class-weight / trs-map, "batch" (Eq. 7) for trm.
        config: ``trm_normalize`` and ``trm_bound`` choose the form of Eq. 7;
            ``batch_size`` and ``foreground_share`` give E.
        labels: int64 ``[S, H, W]``, the whole training set (identical on every rank, so every
            rank uses the same floor).
    """
    if method_normalize != "batch":
        return LossDenominator(method_normalize)
    if config.trm_normalize == "mean":
        return LossDenominator("valid")
    if config.trm_normalize == "image":
        return LossDenominator("image")
    if config.trm_normalize == "batch":
        return LossDenominator("batch")
    expected = expected_foreground(labels, config.batch_size, config.foreground_share)
    return LossDenominator("batch", bounded_min_foreground(expected, config.trm_bound), expected)


def bounded_min_foreground(expected_foreground: float, bound: float) -> float:
    """The floor of Eq. 7's denominator under "bounded": ``max(1, E / bound)`` (also trmcore.training.loss)."""
    return max(1.0, float(expected_foreground) / float(bound))

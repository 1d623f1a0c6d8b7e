"""Final reduction of the risk-weighted loss, shared by the NumPy and torch backends."""

from __future__ import annotations

from typing import Any, Tuple


def reduce_loss(per_image: Any, normalize: str, xp: Any, min_foreground: float = 1.0) -> Tuple[Any, Any]:
    """Loss and per-image gradient factor from the forward kernel's per-image sums.

    Args:
        per_image: float64 ``[N, 3]``: sum of w*CE, #foreground, #valid per image
            (a NumPy array with ``xp=numpy`` or a torch tensor with ``xp=torch``).
        normalize: ``"batch"`` (TRM Eq. 7), ``"image"`` or ``"valid"``.
        min_foreground: floor (>= 1) of the foreground count in the denominator of
            ``"batch"`` (of the batch) and ``"image"`` (of each image); unused by ``"valid"``.

    Returns:
        ``(loss, inv_denominator)``: the scalar loss and float64 ``[N]``
        d loss / d (image b's sum of w*CE), which scales the backward kernel.
    """
    weighted, foreground, valid = per_image[:, 0], per_image[:, 1], per_image[:, 2]
    ones = xp.ones_like(weighted)
    if normalize == "batch":
        denominator = xp.maximum(foreground.sum(), ones[0] * min_foreground)
        return weighted.sum() / denominator, ones / denominator
    if normalize == "image":
        denominator = xp.maximum(foreground, ones * min_foreground)
        return (weighted / denominator).mean(), ones / (weighted.shape[0] * denominator)
    denominator = valid.sum()
    return weighted.sum() / denominator, ones / denominator

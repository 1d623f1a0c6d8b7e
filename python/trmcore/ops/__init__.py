"""Pixel-level LEEP, transfer risk map and risk-weighted loss (SPEC sections 2-4).

Every function takes torch tensors (CPU or CUDA; float32, float16 or bfloat16
logits) or NumPy arrays. With NumPy input the result is NumPy and torch is
never imported, so deployment code can use these ops without torch.

Shapes: logits ``[N, K, *spatial]`` (K = Z source classes for the LEEP ops, C
target classes for the loss) with 1 to 3 spatial dims (``[N, K, H, W]`` slices,
``[N, K, D, H, W]`` volumes), labels ``[N, *spatial]`` of any integer dtype, maps
and weights ``[N, *spatial]``. Pixels labelled ``ignore_index`` take part in nothing.
Every rank runs the same kernels: a C-contiguous ``[N, K, *spatial]`` buffer is
``[N, K, S]`` with S the pixels (voxels) of one image, so a contiguous volume is
used in place and the result equals the 2-D op on ``[N, K, S, 1]`` (a
non-contiguous input is copied once to contiguous memory first).

Example::

    >>> import numpy as np
    >>> from trmcore import ops
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)  # source model, Z = 3
    >>> labels = rng.integers(0, 2, size=(2, 8, 8))                 # target task, C = 2
    >>> joint = ops.leep_joint(logits, labels, num_classes=2)
    >>> leep_map = ops.pixel_leep(logits, labels, joint)            # [2, 8, 8] float32
    >>> risk = ops.risk_map(leep_map, labels)                       # [2, 8, 8] in [1, 10]
    >>> float(risk.min()) >= 1.0
    True
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np

from . import _validate as V
from ._validate import RISK_BASE, RISK_SCOPE
from ._validate import SCOPES as RISK_SCOPES
from .accumulator import LeepAccumulator
from .joint import LeepJoint

__all__ = ["RISK_BASE", "RISK_SCOPE", "RISK_SCOPES", "LeepAccumulator", "LeepJoint", "check_pending", "leep", "leep_joint", "pixel_leep",
           "risk_map", "risk_weighted_ce", "set_check_mode"]


def _is_torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor implies torch is imported already
    return torch is not None and isinstance(value, torch.Tensor)


def _backend(**arrays: Any) -> ModuleType:
    """The backend module for these inputs: all torch tensors or all NumPy arrays."""
    kinds = {name: _is_torch_tensor(value) for name, value in arrays.items()}
    if all(kinds.values()):
        from . import _torch
        return _torch
    if not any(kinds.values()):
        for name, value in arrays.items():
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name} must be a torch tensor or a NumPy array, got {type(value).__name__}")
        from . import _numpy
        return _numpy
    torch_names = [name for name, is_torch in kinds.items() if is_torch]
    other = [name for name, is_torch in kinds.items() if not is_torch]
    raise TypeError(f"{', '.join(torch_names)} are torch tensors but {', '.join(other)} are not: "
                    "pass all inputs as torch tensors or all as NumPy arrays")


def leep_joint(logits: Any, labels: Any, num_classes: int, ignore_index: int = -100) -> LeepJoint:
    """Unnormalised joint of target label and source class over valid pixels.

    Args:
        logits: source-model logits ``[N, Z, *spatial]`` (1-3 spatial dims).
        labels: target labels ``[N, *spatial]`` in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: C, the number of target classes.

    Returns:
        :class:`LeepJoint` with float64 ``sums [C, Z]`` (same library and device
        as the input) and ``count`` = M valid pixels. Joints add across batches.
    """
    num_classes = V.check_num_classes(num_classes)
    ignore_index = V.check_ignore_index(ignore_index)
    return _backend(logits=logits, labels=labels).leep_joint(logits, labels, num_classes, ignore_index)


def pixel_leep(logits: Any, labels: Any, joint: LeepJoint) -> Any:
    """Transferability map: log EEP per pixel, float32 ``[N, *spatial]`` (0 at ignored pixels).

    ``joint`` is the :class:`LeepJoint` of the target data (usually the whole
    training set, from :func:`leep_joint` or :class:`LeepAccumulator`); its
    ``ignore_index`` applies here too.
    """
    if not isinstance(joint, LeepJoint):
        raise TypeError(f"joint must be a LeepJoint (from leep_joint or LeepAccumulator), got {type(joint).__name__}")
    if not hasattr(joint.sums, "shape"):
        raise TypeError(f"joint.sums must be a NumPy array or torch tensor, got {type(joint.sums).__name__}")
    rank = len(getattr(logits, "shape", ()))
    logits_classes = logits.shape[1] if 2 + V.MIN_SPATIAL_DIMS <= rank <= 2 + V.MAX_SPATIAL_DIMS else None
    count = V.check_joint(tuple(joint.sums.shape), joint.count, logits_classes)
    ignore_index = V.check_ignore_index(joint.ignore_index)
    if count == 0:
        raise ValueError("the joint holds no valid pixels")
    backend = _backend(logits=logits, labels=labels, joint=joint.sums)
    _check_joint_values(joint.sums)
    return backend.pixel_leep(logits, labels, joint.conditional(), ignore_index)


def _check_joint_values(sums: Any) -> None:
    """A hand-made or damaged joint: NaN/inf or negative sums would give a NaN map, not an error."""
    if _is_torch_tensor(sums):
        import torch

        if torch.compiler.is_compiling():  # a value check would break the graph; eager calls check it
            return
        bad = bool((~torch.isfinite(sums)).any() or (sums < 0).any())
    else:
        sums = np.asarray(sums)
        if sums.dtype.kind not in "fiu":
            raise TypeError(f"joint.sums must be a real floating-point array, got dtype {sums.dtype}")
        bad = bool((~np.isfinite(sums)).any() or (sums < 0).any())
    if bad:
        raise ValueError("joint.sums holds NaN, infinite or negative values; build the joint with leep_joint "
                         "or LeepAccumulator")


def leep(logits: Any, labels: Any, num_classes: int, ignore_index: int = -100) -> float:
    """Dataset LEEP of these pixels: mean log EEP over valid pixels (<= 0, higher = better).

    Equals classic image-level LEEP applied to the flattened pixels. For data
    that does not fit in one batch, use :class:`LeepAccumulator`.
    """
    joint = leep_joint(logits, labels, num_classes, ignore_index)
    leep_map = pixel_leep(logits, labels, joint)
    total = leep_map.sum(dtype=np.float64) if isinstance(leep_map, np.ndarray) else leep_map.double().sum()
    return float(total) / joint.count


def risk_map(leep_map: Any, labels: Any, base: float = RISK_BASE, scope: str = RISK_SCOPE, ignore_index: int = -100) -> Any:
    """Transfer risk map R = base ** T', float32 ``[N, *spatial]`` in ``[1, base]`` (SPEC section 3).

    T' rescales the transferability map to [0, 1] per image (``scope="image"``)
    (over all its spatial dims: a whole volume for 3-D maps) or over the whole
    batch (``scope="batch"``); 1 = hardest pixel. Ignored
    pixels get R = 0.
    """
    base = V.check_base(base)
    V.check_choice("scope", scope, V.SCOPES)
    ignore_index = V.check_ignore_index(ignore_index)
    backend = _backend(leep_map=leep_map, labels=labels)
    return backend.risk_map(leep_map, labels, base, scope == "image", ignore_index)


def risk_weighted_ce(logits: Any, labels: Any, weights: Any, ignore_index: int = -100,
                     normalize: str = "batch", min_foreground: float = 1.0) -> Any:
    """Risk-weighted, foreground-normalised cross-entropy (TRM Eq. 7).

    Args:
        logits: target-model logits ``[N, C, *spatial]`` (1-3 spatial dims; differentiable).
        labels: ``[N, *spatial]`` in ``[0, C)`` or ``ignore_index``; 0 is background.
        weights: per-pixel weights ``[N, *spatial]`` (the risk map), >= 0, no gradient.
        normalize: ``"batch"``: sum(w * CE) / max(1, #foreground pixels in the batch);
            ``"image"``: the same per image, then the mean over images;
            ``"valid"``: sum(w * CE) / #valid pixels (a weighted mean; all-ones
            weights give plain cross-entropy).
        min_foreground: floor of the foreground count in the ``"batch"`` / ``"image"``
            denominator, max(min_foreground, #foreground); 1 is TRM Eq. 7 as published.
            A larger floor bounds how much a batch with little foreground can weigh
            (see docs/training.md, "bounded Eq. 7").

    Returns:
        A scalar: a float32 torch tensor with a fused backward kernel, or a
        NumPy float64 for NumPy input.
    """
    V.check_choice("normalize", normalize, V.DENOMINATORS)
    ignore_index = V.check_ignore_index(ignore_index)
    min_foreground = V.check_min_foreground(min_foreground)
    backend = _backend(logits=logits, labels=labels, weights=weights)
    return backend.risk_weighted_ce(logits, labels, weights, ignore_index, normalize, min_foreground)


def check_pending() -> None:
    """Raise the first failed value check of earlier torch op calls on CUDA (see ``set_check_mode``).

    On CUDA the ops check their data (labels in range, finite values) without stopping the
    GPU and report a failure from a later call; this waits for every queued check (one host
    sync). Nothing to do when torch was never used.
    """
    if "trmcore.ops._torch" in sys.modules:
        sys.modules["trmcore.ops._torch"].check_pending()


def set_check_mode(mode: str) -> None:
    """"auto" (default: CPU calls checked at once, CUDA calls lazily, without a host sync per call),
    "eager" (every call checked at once, for debugging; also TRM_OPS_CHECKS=eager) or "deferred"
    (lazily on every device)."""
    from . import _torch

    _torch.set_check_mode(mode)

"""Mixed precision on CUDA: which half type, autocast, and whether the loss needs scaling.

The bfloat16-or-float16 choice is made here only: training, evaluation, LEEP
statistics and risk maps all run their forward passes under :func:`autocast_for`,
and the trainer scales the loss exactly when that autocast uses float16.
"""

from __future__ import annotations

import contextlib

import torch


def half_dtype() -> torch.dtype:
    """bfloat16 where the GPU supports it (same range as float32, no loss scaling), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (:func:`half_dtype`); nothing on CPU or when ``enabled`` is False."""
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=half_dtype())


def needs_loss_scaling(device: torch.device, enabled: bool = True) -> bool:
    """True when :func:`autocast_for` runs in float16, whose small range needs a GradScaler."""
    return device.type == "cuda" and enabled and half_dtype() == torch.float16

"""Segmentation networks: the 2D U-Net used by every trmcore method.

``UNetConfig`` and the ``NORMS`` registry are torch-free; ``UNet``, ``create_unet``
and ``freeze_encoder`` import torch on first access. Freezing is a model method:
``model.freeze_encoder()`` / ``model.unfreeze_encoder()``.
"""

from __future__ import annotations

from typing import Any

from trmcore.models.config import UNetConfig
from trmcore.models.norms import NORMS, create_norm

__all__ = ["NORMS", "UNetConfig", "create_norm", "UNet", "create_unet", "freeze_encoder", "is_encoder_frozen"]

_TORCH_NAMES = {"UNet", "create_unet", "freeze_encoder", "is_encoder_frozen", "Encoder", "Decoder"}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from trmcore.models import unet

        return getattr(unet, name)
    raise AttributeError(f"module 'trmcore.models' has no attribute {name!r}")

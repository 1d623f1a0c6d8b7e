"""Training and fine-tuning of segmentation models (SPEC section 5).

Torch-free names (``TrainConfig``, ``RunInfo``, ``read_run_info``) import
eagerly; the rest import torch on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from trmcore.training.config import METHODS, TrainConfig
from trmcore.training.runinfo import RunInfo, read_run_info

_LAZY = {
    "save_run": "trmcore.training.checkpoint",
    "load_run": "trmcore.training.checkpoint",
    "save_train_state": "trmcore.training.checkpoint",
    "load_train_state": "trmcore.training.checkpoint",
    "train": "trmcore.training.trainer",
    "finetune": "trmcore.training.trainer",
    "evaluate_run": "trmcore.training.evaluate",
    "dice_per_class": "trmcore.training.evaluate",
}

__all__ = ["METHODS", "TrainConfig", "RunInfo", "read_run_info", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trmcore.training' has no attribute {name!r}")

"""Small training configurations for fast tests."""

from __future__ import annotations

from trmcore.training import TrainConfig


def tiny_config(**overrides) -> TrainConfig:
    base = dict(iterations=4, batch_size=4, val_every=2, val_fraction=0.25, seed=0, lr=1e-3)
    return TrainConfig(**{**base, **overrides})

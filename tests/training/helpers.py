"""Small training configurations for fast tests."""

from __future__ import annotations

from trmcore.training import TrainConfig


def tiny_config(**overrides) -> TrainConfig:
    base = dict(iterations=4, batch_size=4, val_every=2, val_fraction=0.25, seed=0, lr=1e-3)
    return TrainConfig(**{**base, **overrides})


class Interrupt(Exception):
    """Raised by ``stop_at`` to cut a training run short, as a kill would."""


def stop_at(n):
    """An ``on_iteration`` callback that raises Interrupt once ``n`` iterations are done."""
    def callback(done):
        if done == n:
            raise Interrupt

    return callback

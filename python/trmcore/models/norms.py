"""The registry of normalisation layers of the U-Net (``UNetConfig.norm``).

Torch-free at import (each factory imports torch when called), so that
``UNetConfig`` validation and the ``--norm`` choices of the CLI read the names
from here without torch. A new normalisation is one entry: a function
``channels -> nn.Module``.

Example:
    >>> list(NORMS)
    ['batch', 'instance', 'group', 'none']
"""

from __future__ import annotations

import math
from typing import Any, Callable

from trmcore.registry import Registry


def _batch(channels: int) -> Any:
    from torch import nn

    return nn.BatchNorm2d(channels)


def _instance(channels: int) -> Any:
    from torch import nn

    return nn.InstanceNorm2d(channels, affine=True)


def _group(channels: int) -> Any:
    from torch import nn

    # Groups of channels / gcd(8, channels): 8 groups when the width allows, never an uneven split.
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _none(channels: int) -> Any:
    from torch import nn

    return nn.Identity()


# name -> factory(channels) -> nn.Module, in the order of --help.
NORMS: Registry[Callable[[int], Any]] = Registry("norm")
for _name, _factory in (("batch", _batch), ("instance", _instance), ("group", _group), ("none", _none)):
    NORMS.add(_name, _factory)


def create_norm(name: str, channels: int) -> Any:
    """The normalisation layer ``name`` over ``channels`` channels; ValueError for an unknown name."""
    return NORMS.lookup(name)(channels)

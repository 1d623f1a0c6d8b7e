"""U-Net configuration (torch-free, so run.json can be read without torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from trmcore.models.norms import NORMS


@dataclass
class UNetConfig:
    """Shape of a 2D U-Net (Ronneberger et al. 2015).

    Args:
        in_channels: input channels (modalities), >= 1.
        num_classes: output classes including background, >= 2.
        depth: number of 2x down-samplings; inputs must have H and W divisible by ``2**depth``.
        width: channels of the first level; level ``k`` has ``width * 2**k`` channels.
        norm: normalisation after each 3x3 convolution, a name of the NORMS registry
            (trmcore.models.norms): "batch", "instance", "group" or "none".

    Example:
        >>> UNetConfig(in_channels=2, num_classes=4, depth=3, width=16).divisor
        8
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 4
    width: int = 32
    norm: str = "batch"

    def __post_init__(self) -> None:
        for name, minimum in (("in_channels", 1), ("num_classes", 2), ("depth", 1), ("width", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"UNetConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm must be one of {tuple(NORMS)}, got {self.norm!r}")

    @property
    def divisor(self) -> int:
        """Input H and W must be multiples of this (``2**depth``)."""
        return 2 ** self.depth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {k: data[k] for k in ("in_channels", "num_classes", "depth", "width", "norm") if k in data}
        return cls(**known)

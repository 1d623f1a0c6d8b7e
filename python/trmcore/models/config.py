"""U-Net configuration (torch-free, so run.json can be read without torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from trmcore.limits import MAX_DEPTH, check_allocation, format_size
from trmcore.models.norms import NORMS

#: Hard bounds of a U-Net a run.json or model may declare, whatever the memory budget.
MAX_WIDTH = 4096
MAX_IN_CHANNELS = 1024
MAX_CLASSES = 4096
# Training holds each parameter four times in float32: the weight, its gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16


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
        for name, minimum, maximum in (("in_channels", 1, MAX_IN_CHANNELS), ("num_classes", 2, MAX_CLASSES),
                                       ("depth", 1, MAX_DEPTH), ("width", 1, MAX_WIDTH)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
                raise ValueError(f"UNetConfig.{name} must be an integer from {minimum} to {maximum}, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm must be one of {tuple(NORMS)}, got {self.norm!r}")
        # What the declared network costs before torch allocates it: weights, gradients, Adam's moments.
        check_allocation(self.parameter_count() * TRAINING_BYTES_PER_PARAMETER,
                         f"a U-Net of depth {self.depth} and width {self.width} "
                         f"({self.parameter_count():,} parameters, {format_size(4 * self.parameter_count())} "
                         "of float32 weights) to train")

    def parameter_count(self) -> int:
        """Number of weights and biases of the U-Net (trmcore.models.unet), from the configuration alone.

        >>> UNetConfig(in_channels=1, num_classes=2, depth=2, width=4).parameter_count() > 0
        True
        """
        widths = [self.width * 2 ** k for k in range(self.depth + 1)]
        extra = 1 if self.norm == "none" else 2  # per channel: a bias, or the norm's scale and shift

        def double(cin: int, cout: int) -> int:  # two 3x3 convolutions
            return 9 * cin * cout + 9 * cout * cout + 2 * cout * extra

        total = 0
        previous = self.in_channels
        for channels in widths[:-1]:
            total += double(previous, channels)
            previous = channels
        total += double(widths[-2], widths[-1])
        for k in range(self.depth):
            total += 4 * widths[k + 1] * widths[k] + widths[k] + double(2 * widths[k], widths[k])
        return total + widths[0] * self.num_classes + self.num_classes

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

"""2D U-Net (Ronneberger et al. 2015) with separable encoder, decoder and head.

The split matters for transfer learning: fine-tuning freezes ``encoder``
(contracting path + bottleneck), trains ``decoder`` (expanding path) and
``head`` (1x1 convolution to the classes), and may re-initialise ``head`` when
the target has a different number of classes.

Shapes: input float ``[N, in_channels, H, W]`` with H, W multiples of
``2**depth``; output logits ``[N, num_classes, H, W]``.
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn

from trmcore.models.config import UNetConfig
from trmcore.models.norms import create_norm


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2; the convolution has a bias only without a norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
            create_norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
            create_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """Contracting path and bottleneck.

    ``forward(x)`` returns ``depth + 1`` feature maps: the skip connections of
    levels ``0..depth-1`` (``[N, width*2**k, H/2**k, W/2**k]``) and, last, the
    bottleneck ``[N, width*2**depth, H/2**depth, W/2**depth]``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        widths = [config.width * 2**k for k in range(config.depth + 1)]
        self.levels = nn.ModuleList()
        previous = config.in_channels
        for channels in widths[:-1]:
            self.levels.append(DoubleConv(previous, channels, config.norm))
            previous = channels
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(widths[-2], widths[-1], config.norm)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
            x = self.pool(x)
        features.append(self.bottleneck(x))
        return features


class Decoder(nn.Module):
    """Expanding path: 2x2 transposed convolution up, concatenate the skip, DoubleConv.

    ``forward(features)`` takes the encoder's list and returns ``[N, width, H, W]``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        widths = [config.width * 2**k for k in range(config.depth + 1)]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for k in reversed(range(config.depth)):
            self.ups.append(nn.ConvTranspose2d(widths[k + 1], widths[k], kernel_size=2, stride=2))
            self.blocks.append(DoubleConv(2 * widths[k], widths[k], config.norm))

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = features[:-1]
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return x


def _exporting() -> bool:
    # Shape checks must not become graph guards when tracing/exporting to ONNX.
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


class UNet(nn.Module):
    """2D U-Net with ``encoder``, ``decoder`` and ``head`` submodules.

    Example:
        >>> model = UNet(UNetConfig(in_channels=1, num_classes=2, depth=2, width=4))
        >>> model(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.head = nn.Conv2d(config.width, config.num_classes, kernel_size=1)
        self._encoder_frozen = False

    @property
    def encoder_frozen(self) -> bool:
        """True between :meth:`freeze_encoder` and :meth:`unfreeze_encoder`."""
        return self._encoder_frozen

    def freeze_encoder(self) -> "UNet":
        """Freeze the contracting path and bottleneck in place (SPEC 5) and return the model.

        Parameters get ``requires_grad=False`` and the encoder's normalisation
        layers stay in eval mode even after ``model.train()``, so BatchNorm running
        statistics are never updated.
        """
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self._encoder_frozen = True
        self.encoder.eval()
        return self

    def unfreeze_encoder(self) -> "UNet":
        """Undo :meth:`freeze_encoder`: encoder parameters trainable, its mode follows the model's again."""
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(True)
        self._encoder_frozen = False
        self.encoder.train(self.training)
        return self

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is ``[N, in_channels, H, W]`` with H, W multiples of ``2**depth``."""
        if x.ndim != 4:
            raise ValueError(f"UNet input must be [N, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"UNet input has {x.shape[1]} channels, the model expects {self.config.in_channels}")
        divisor = self.config.divisor
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if height % divisor or width % divisor:
            raise ValueError(
                f"UNet input H x W = {height} x {width} must be divisible by 2**depth = {divisor} "
                f"(pad with trmcore.data.preprocess.pad_to_multiple)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _exporting():
            self.check_input(x)
        return self.head(self.decoder(self.encoder(x)))

    def decode(self, features: List[torch.Tensor]) -> torch.Tensor:
        """Logits ``[N, num_classes, H, W]`` from the encoder's features."""
        return self.head(self.decoder(features))

    def reset_head(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised 1x1 convolution to ``num_classes``."""
        device = self.head.weight.device
        self.config = UNetConfig(**{**self.config.to_dict(), "num_classes": num_classes})
        self.head = nn.Conv2d(self.config.width, num_classes, kernel_size=1).to(device)

    def train(self, mode: bool = True) -> "UNet":
        super().train(mode)
        if self._encoder_frozen:
            # Frozen BatchNorm must keep its running statistics (SPEC 5).
            self.encoder.eval()
        return self


def freeze_encoder(model: UNet) -> UNet:
    """``model.freeze_encoder()``; kept for the 0.x public API, prefer the method."""
    if not isinstance(model, UNet):
        raise TypeError(f"freeze_encoder expects a UNet, got {type(model).__name__}")
    return model.freeze_encoder()


def is_encoder_frozen(model: UNet) -> bool:
    """``model.encoder_frozen``; kept for the 0.x public API, prefer the property."""
    return bool(getattr(model, "encoder_frozen", False))


def create_unet(**kwargs: Any) -> UNet:
    """Build a UNet from UNetConfig keyword arguments, e.g. ``create_unet(in_channels=2, num_classes=4)``."""
    return UNet(UNetConfig(**kwargs))

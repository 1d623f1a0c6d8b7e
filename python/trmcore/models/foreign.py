"""A network of nnU-Net's or MONAI's as trmcore's fine-tuned model, rebuilt from run.json without code.

A run fine-tuned from an nnU-Net v2 2d result folder or a MONAI network
(``trm finetune --source``) records its network in run.json's ``network``:

- ``{"kind": "nnunet", "architecture": {...}, "swap": bool}``: the plans'
  ``architecture`` entry (dynamic_network_architectures class and arguments,
  ops under ``torch.nn``), built as :func:`trmcore.models.nnunet.build_network`
  builds it, deep supervision off;
- ``{"kind": "monai", "network": "monai.networks.nets:UNet", "kwargs": {...}}``:
  a class of ``monai.networks`` with literal arguments, built as
  :mod:`trmcore.models.monai_net` builds it.

The run's ``model`` (a :class:`~trmcore.models.config.UNetConfig`) then records
only what every run has: ``in_channels``, ``num_classes`` and the padding
multiple (``2**depth``); width and norm are placeholders. :class:`ForeignNet`
wraps the network with the interface the trainer and ``trm export`` use:
``config``, ``forward(x)`` (logits ``[N, Z, H, W]``), ``encoder`` /
``decode`` / ``freeze_encoder`` where the network has an encoder and a decoder
(nnU-Net's U-Nets), and ``swap`` (nnU-Net's in-plane axis order, see
trmcore.training.sources).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Union

import torch
from torch import nn

from trmcore.models.config import UNetConfig

FOREIGN_KINDS = ("nnunet", "monai")


def stand_in_config(in_channels: int, num_classes: int, divisor: int) -> UNetConfig:
    """The UNetConfig a foreign run records: channels, classes, ``depth = log2(divisor)`` (width 1, norm none)."""
    if divisor < 2 or divisor & (divisor - 1):
        raise ValueError(f"the network needs inputs padded to a multiple of {divisor}; trmcore runs record a power "
                         "of two (2**depth)")
    return UNetConfig(in_channels=int(in_channels), num_classes=int(num_classes), depth=divisor.bit_length() - 1,
                      width=1, norm="none")


def build_network(record: Dict[str, Any], in_channels: int, num_classes: int, source: Union[str, Path]) -> nn.Module:
    """The bare network of a ``network`` record (freshly initialised), for ``num_classes`` outputs."""
    source = Path(source)
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind == "nnunet":
        from trmcore.models.nnunet import build_network as build_nnunet

        return build_nnunet({}, {"architecture": record.get("architecture")}, int(in_channels), int(num_classes),
                            source)
    if kind == "monai":
        from trmcore.models.monai_net import _literal, _network_class

        kwargs = record.get("kwargs")
        if not isinstance(kwargs, dict):
            raise ValueError(f"{source}: network.kwargs must be an object")
        kwargs = {**_literal(kwargs, "network.kwargs", source), "in_channels": int(in_channels),
                  "out_channels": int(num_classes)}
        cls = _network_class(record.get("network"), source)
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"{source}: network.kwargs do not fit {cls.__name__}: {err}") from None
    raise ValueError(f"{source}: network.kind must be one of {', '.join(FOREIGN_KINDS)}, got {kind!r}")


def _full_resolution(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (list, tuple)) else output


class ForeignNet(nn.Module):
    """An nnU-Net or MONAI network with trmcore's model interface (see the module docstring).

    ``forward(x)``: float ``[N, C, H, W]`` (H, W multiples of ``config.divisor``) -> logits ``[N, Z, H, W]``.
    """

    def __init__(self, network: nn.Module, record: Dict[str, Any], config: UNetConfig) -> None:
        super().__init__()
        self.network = network
        self.record = dict(record)
        self.config = config
        self.swap = bool(record.get("swap", False))
        self._encoder_frozen = False

    @classmethod
    def from_record(cls, record: Dict[str, Any], config: UNetConfig, source: Union[str, Path]) -> "ForeignNet":
        return cls(build_network(record, config.in_channels, config.num_classes, source), record, config)

    @property
    def has_encoder(self) -> bool:
        return isinstance(getattr(self.network, "encoder", None), nn.Module) and \
            isinstance(getattr(self.network, "decoder", None), nn.Module)

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def _in(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(-1, -2) if self.swap else x

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.transpose(-1, -2).contiguous() if self.swap else logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(_full_resolution(self.network(self._in(x))))

    def encoder(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The encoder's skip features of ``x`` (nnU-Net's U-Nets: ``network.encoder``)."""
        return self.network.encoder(self._in(x))

    def decode(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self._out(_full_resolution(self.network.decoder(features)))

    def freeze_encoder(self) -> "ForeignNet":
        """Freeze ``network.encoder`` (SPEC 5; its norm layers stay in eval mode); ValueError without one."""
        if not self.has_encoder:
            raise ValueError(f"{type(self.network).__name__} has no encoder and decoder to tell apart: fine-tune it "
                             "with --freeze none")
        self.network.encoder.requires_grad_(False)
        self._encoder_frozen = True
        self.network.encoder.eval()
        return self

    def train(self, mode: bool = True) -> "ForeignNet":
        super().train(mode)
        if self._encoder_frozen:
            self.network.encoder.eval()
        return self

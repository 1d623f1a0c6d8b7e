"""A torch source (trmcore run, nnU-Net 2d folder, MONAI 2-D network) seen as a deployed segmenter.

``trm transferability`` scores a source on a labelled target with
:func:`trmcore.infer.transferability.assess_transferability`, which takes an
ONNX :class:`~trmcore.infer.segmenter.Segmenter`. :class:`SourceSegmenter`
gives a :class:`~trmcore.training.sources.SourceModel` the few members that
function reads (channels, source labels, the slice step, ``slice_logits``), so
the same LEEP and per-case transfer risk come from a model that was never
exported. 3-D sources are refused: their maps are whole-volume (``trm riskmap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch

from trmcore.data.pipeline import Slice
from trmcore.training.sources import SourceModel


@dataclass(frozen=True)
class _Metadata:
    num_channels: int
    axis: int
    divisor: int


class _SliceOnly:
    """The one pipeline step the assessment asks for: how the source cuts and pads its slices."""

    def __init__(self, axis: int, divisor: int) -> None:
        self._slice = Slice(axis=axis, divisor=divisor)

    def step(self, name: str) -> Slice:
        if name != "slice":
            raise KeyError(name)
        return self._slice


class SourceSegmenter:
    """``source`` (2-D) with the interface of an ONNX Segmenter for :func:`assess_transferability`."""

    def __init__(self, source: SourceModel, channels: List[str], batch_size: int = 16) -> None:
        if source.spatial_dims != 2:
            raise ValueError(f"source {source.path} is a 3-D network: its transfer maps are whole volumes; "
                             "use trm riskmap (maps and LEEP) or trm rank")
        self.source = source
        self.model_path = Path(source.path)
        self.channels = list(source.channels or channels)
        self.metadata = _Metadata(len(channels), source.axis, source.divisor)
        self.preprocessing = _SliceOnly(source.axis, source.divisor)
        self.batch_size = batch_size
        self._device = next(source.network.parameters()).device
        self.num_classes = source.num_classes
        self.label_names = self._label_names()

    def _label_names(self) -> List[str]:
        if self.source.run_info is not None:
            return list(self.source.run_info.label_names)
        labels = getattr(self.source.native, "labels", None)  # nnU-Net: dataset.json name -> value, in output order
        if isinstance(labels, dict):
            return list(labels)
        return [f"class {k}" for k in range(self.num_classes or 0)]

    @torch.no_grad()
    def slice_logits(self, slices: np.ndarray) -> np.ndarray:
        """float32 ``[S, Cin, H, W]`` (H, W multiples of the divisor) -> float32 logits ``[S, Z, H, W]``."""
        if slices.ndim != 4 or slices.shape[1] != self.metadata.num_channels:
            raise ValueError(f"slices must be [S, {self.metadata.num_channels}, H, W], got {slices.shape}")
        outputs = []
        for start in range(0, slices.shape[0], self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(slices[start:start + self.batch_size], np.float32))
            logits = self.source.network(batch.to(self._device)).float().cpu().numpy()
            if not np.isfinite(logits).all():
                raise ValueError(f"source {self.source.path} gave non-finite logits (NaN or inf): its weights "
                                 "are broken")
            outputs.append(logits)
        logits = np.concatenate(outputs, axis=0)
        if self.num_classes is None:
            self.num_classes = int(logits.shape[1])
            self.label_names = self.label_names or [f"class {k}" for k in range(self.num_classes)]
        return logits

"""Transferability and risk volumes of a model on a labelled task (the computation).

For a (source) model and a target task: the LEEP joint over all the given
volumes (SPEC 2), the pixel-level transferability map T of every slice, and
its transfer risk map R (SPEC 3), reassembled into 3D volumes. Writing them as
NIfTI and drawing the TRM Fig. 2 panels is :mod:`trmcore.training.riskmap_files`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from trmcore import ops
from trmcore.data import slices_to_volume, volumes_to_slices
from trmcore.training.method_settings import TrmSettings
from trmcore.training.precision import autocast_for
from trmcore.training.risk_scaling import scaled_risk_map
from trmcore.training.weighting import IGNORE_INDEX


@dataclass(frozen=True)
class RiskMapSettings:
    """How a transferability map T becomes a risk map R (SPEC 3; ``trm riskmap --risk-*``).

    ``base``: R lies in [1, base]; ``scope``: T rescaled per "image" or per "batch";
    ``scaling``/``quantile``: :mod:`trmcore.training.risk_scaling`. Defaults and checks are trm's
    (:class:`~trmcore.training.method_settings.TrmSettings`).
    """

    base: float = TrmSettings.risk_base
    scope: str = TrmSettings.risk_scope
    scaling: str = TrmSettings.risk_scaling
    quantile: float = TrmSettings.risk_quantile

    def __post_init__(self) -> None:
        TrmSettings(risk_base=self.base, risk_scope=self.scope, risk_scaling=self.scaling,
                    risk_quantile=self.quantile)  # raises ValueError naming the bad one

    def to_dict(self) -> Dict[str, Any]:
        """What risk_diagnostics.json records besides the base: scaling, quantile, scope."""
        return {"scaling": self.scaling, "quantile": self.quantile, "scope": self.scope}


@dataclass
class RiskVolumes:
    """Per-case float32 ``[X, Y, Z]`` transferability (log EEP, <= 0) and risk (in [1, base]) volumes."""

    case_id: str
    transferability: np.ndarray
    risk: np.ndarray


@torch.no_grad()
def _volume_logits(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int):
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        with autocast_for(device):
            yield model(batch).float()


@torch.no_grad()
def risk_volumes(model: nn.Module, volumes: Sequence, num_classes: int, axis: int, divisor: int,
                 device: torch.device, settings: RiskMapSettings = RiskMapSettings(), batch_size: int = 16,
                 progress: bool = False) -> List[RiskVolumes]:
    """T and R volumes of ``model`` on labelled ``volumes`` (joint accumulated over all of them).

    ``settings``: how T becomes R.

    Slices without any brain still get maps (they are part of the volume); the
    joint is shared by all volumes, as for fine-tuning.
    """
    model = model.eval()
    slice_sets = [volumes_to_slices([v], axis=axis, divisor=divisor) for v in volumes]
    accumulator = ops.LeepAccumulator(num_classes, ignore_index=IGNORE_INDEX)
    for slices in slice_sets:
        labels = torch.from_numpy(slices.labels).to(device)
        for start, logits in zip(range(0, len(labels), batch_size),
                                 _volume_logits(model, slices.images, device, batch_size)):
            accumulator.update(logits, labels[start:start + batch_size])
    joint = accumulator.all_reduce()
    iterator = list(zip(volumes, slice_sets))
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="risk maps", unit="volume", leave=False)
    results = []
    for volume, slices in iterator:
        labels = torch.from_numpy(slices.labels).to(device)
        leep_parts, risk_parts = [], []
        for start, logits in zip(range(0, len(labels), batch_size),
                                 _volume_logits(model, slices.images, device, batch_size)):
            batch_labels = labels[start:start + batch_size]
            leep_map = ops.pixel_leep(logits, batch_labels, joint)
            leep_parts.append(leep_map.float().cpu())
            risk_parts.append(scaled_risk_map(leep_map, batch_labels, settings.base, settings.scope,
                                              settings.scaling, settings.quantile, IGNORE_INDEX).float().cpu())
        shape = volume.shape
        as_volume = lambda parts: slices_to_volume(torch.cat(parts).numpy(), slices.pad, axis, shape)  # noqa: E731
        results.append(RiskVolumes(volume.case_id, as_volume(leep_parts), as_volume(risk_parts)))
    ops.check_pending()
    return results


"""Transferability, risk volumes and LEEP of a 3-D source: whole volumes through the network (SPEC 2-3).

The 2-D path (:mod:`trmcore.training.riskmap`) slices volumes; a 3-D source
(an nnU-Net 3d configuration, trmcore.training.sources) sees each case whole,
padded (centred, as trmcore pads slices) to its size multiple per axis. Padded
voxels carry the ignore label, so they take part in neither the joint nor
the maps. Pass 1 accumulates the LEEP joint over all volumes, one volume's
logits in memory at a time; pass 2 runs each volume again for its maps
(``scope="image"`` rescales T per volume), except the first, whose logits pass 1
keeps: one volume costs one forward pass.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from trmcore import ops
from trmcore.training.precision import autocast_for
from trmcore.training.riskmap import RiskMapSettings, RiskVolumes
from trmcore.training.risk_scaling import scaled_risk_map
from trmcore.training.weighting import IGNORE_INDEX


def pad_volume(volume, divisors: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, Tuple[slice, ...]]:
    """(image float32 ``[C, X', Y', Z']``, label int64 ``[X', Y', Z']`` padded with IGNORE_INDEX, the crop back)."""
    widths, crop = [], []
    for size, divisor in zip(volume.shape, divisors):
        total = -size % int(divisor)
        widths.append((total // 2, total - total // 2))
        crop.append(slice(total // 2, total // 2 + size))
    image = np.pad(np.asarray(volume.image, np.float32), [(0, 0)] + widths)
    label = np.pad(np.asarray(volume.label, np.int64), widths, constant_values=IGNORE_INDEX)
    return image, label, tuple(crop)


@torch.no_grad()
def _volume_logits(network: nn.Module, image: np.ndarray, device: torch.device) -> torch.Tensor:
    with autocast_for(device):
        return network(torch.from_numpy(image[None]).to(device)).float()


def _joint(network: nn.Module, volumes: Sequence, num_classes: int, divisors: Sequence[int],
           device: torch.device) -> Tuple[ops.LeepJoint, Optional[torch.Tensor]]:
    """The joint over all volumes and the first volume's logits (kept for pass 2)."""
    accumulator = ops.LeepAccumulator(num_classes, ignore_index=IGNORE_INDEX)
    first = None
    for index, volume in enumerate(volumes):
        image, label, _ = pad_volume(volume, divisors)
        logits = _volume_logits(network, image, device)
        accumulator.update(logits, torch.from_numpy(label[None]).to(device))
        if index == 0:
            first = logits
    return accumulator.all_reduce(), first


def _pass_two(network: nn.Module, volumes: Sequence, divisors: Sequence[int], device: torch.device,
              first: Optional[torch.Tensor]) -> Iterator[Tuple[torch.Tensor, torch.Tensor, Tuple[slice, ...]]]:
    """(logits, labels ``[1, X', Y', Z']``, crop) per volume, the first one's logits from pass 1."""
    for index, volume in enumerate(volumes):
        image, label, crop = pad_volume(volume, divisors)
        logits = first if index == 0 and first is not None else _volume_logits(network, image, device)
        yield logits, torch.from_numpy(label[None]).to(device), crop


@torch.no_grad()
def risk_volumes_3d(network: nn.Module, volumes: Sequence, num_classes: int, divisors: Sequence[int],
                    device: torch.device, settings: RiskMapSettings = RiskMapSettings(),
                    progress: bool = False) -> List[RiskVolumes]:
    """T and R volumes float32 ``[X, Y, Z]`` of a 3-D ``network`` (``[N, C, X, Y, Z]`` -> logits) on ``volumes``.

    ``settings``: how T becomes R, as for :func:`trmcore.training.riskmap.risk_volumes`.
    """
    network = network.eval()
    joint, first = _joint(network, volumes, num_classes, divisors, device)
    passes = zip(volumes, _pass_two(network, volumes, divisors, device, first))
    if progress:
        from tqdm.auto import tqdm

        passes = tqdm(passes, total=len(volumes), desc="risk maps", unit="volume", leave=False)
    results = []
    for volume, (logits, labels, crop) in passes:
        leep_map = ops.pixel_leep(logits, labels, joint)
        risk = scaled_risk_map(leep_map, labels, settings.base, settings.scope, settings.scaling, settings.quantile,
                               IGNORE_INDEX)
        results.append(RiskVolumes(volume.case_id, leep_map[0].float().cpu().numpy()[crop],
                                   risk[0].float().cpu().numpy()[crop]))
    ops.check_pending()
    return results


@torch.no_grad()
def source_leep_3d(network: nn.Module, volumes: Sequence, num_classes: int, divisors: Sequence[int],
                   device: torch.device) -> Tuple[float, int, int]:
    """(dataset LEEP, Z, voxels scored) of a 3-D ``network`` over whole ``volumes`` (two passes)."""
    network = network.eval()
    joint, first = _joint(network, volumes, num_classes, divisors, device)
    if joint.count == 0:
        raise ValueError("the target training set has no voxel to score")
    total = 0.0
    for logits, labels, _ in _pass_two(network, volumes, divisors, device, first):
        total += float(ops.pixel_leep(logits, labels, joint).double().sum())
    ops.check_pending()
    return total / joint.count, joint.num_source_classes, joint.count

"""Float64 pure-PyTorch reference of SPEC sections 2-4: the test oracle.

Written for clarity, not speed: every formula appears as in the spec, computed
in float64 from the inputs. The fast ops in :mod:`trmcore.ops` must agree with
these functions to floating-point tolerance.

Shapes: logits ``[N, K, *spatial]`` (K = Z source classes or C target classes)
with any number of spatial dims (the ops take 1 to 3), labels ``[N, *spatial]``
integer, maps ``[N, *spatial]``. The class axis is moved last (``movedim``)
and per-image reductions run over every spatial dim, so the oracle of a 3-D op
does not go through the ops' ``[N, K, S]`` view of the buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validate import RISK_BASE, RISK_SCOPE

# Smallest normal float32: eep is clamped here before the log (SPEC 2).
EEP_FLOOR = float(torch.finfo(torch.float32).tiny)
RISK_EPS = 1e-8


class ReferenceJoint(NamedTuple):
    sums: torch.Tensor  # float64 [C, Z]: sum of theta over valid pixels per (label, source class)
    count: int  # number of valid pixels M
    ignore_index: int = -100

    def conditional(self) -> torch.Tensor:
        """P(y | z) as float64 ``[C, Z]``; a column with P(z) = 0 is all zeros."""
        column = self.sums.sum(dim=0, keepdim=True)
        return torch.where(column > 0, self.sums / column.clamp_min(1e-300), torch.zeros_like(self.sums))


def _valid_mask(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    return labels != ignore_index


def leep_joint(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = -100) -> ReferenceJoint:
    """J[y, z] * M: the unnormalised joint of target label and source class."""
    theta = torch.softmax(logits.double(), dim=1)  # [N, Z, *spatial]
    valid = _valid_mask(labels, ignore_index)
    z = theta.shape[1]
    theta_pixels = theta.movedim(1, -1)[valid]  # [M, Z]
    label_pixels = labels[valid].long()  # [M]
    sums = torch.zeros(num_classes, z, dtype=torch.float64, device=logits.device)
    sums.index_add_(0, label_pixels, theta_pixels)
    return ReferenceJoint(sums, int(valid.sum()), ignore_index)


def pixel_leep(logits: torch.Tensor, labels: torch.Tensor, joint: ReferenceJoint) -> torch.Tensor:
    """T_i(h, w) = log(sum_z P(y | z) theta[z]), float64 ``[N, *spatial]``, 0 at ignored pixels."""
    theta = torch.softmax(logits.double(), dim=1)
    cond = joint.conditional().to(theta.device)  # [C, Z]
    valid = _valid_mask(labels, joint.ignore_index)
    safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    cond_per_pixel = cond[safe_labels]  # [N, *spatial, Z]
    eep = (cond_per_pixel * theta.movedim(1, -1)).sum(dim=-1)
    leep_map = torch.log(eep.clamp_min(EEP_FLOOR))
    return torch.where(valid, leep_map, torch.zeros_like(leep_map))


def leep(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = -100) -> float:
    """Dataset LEEP: mean log EEP over valid pixels (<= 0)."""
    joint = leep_joint(logits, labels, num_classes, ignore_index)
    leep_map = pixel_leep(logits, labels, joint)
    return float(leep_map.sum() / joint.count)


def risk_map(leep_map: torch.Tensor, labels: torch.Tensor, base: float = RISK_BASE, scope: str = RISK_SCOPE,
             ignore_index: int = -100) -> torch.Tensor:
    """R = base ** ((max T - T) / (max T - min T + eps)) over valid pixels; 0 at ignored pixels."""
    t = leep_map.double()
    valid = _valid_mask(labels, ignore_index)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=t.device)
    if scope == "image":
        spatial = tuple(range(1, t.dim()))
        t_max = torch.where(valid, t, -inf).amax(dim=spatial, keepdim=True)
        t_min = torch.where(valid, t, inf).amin(dim=spatial, keepdim=True)
    elif scope == "batch":
        t_max = torch.where(valid, t, -inf).amax()
        t_min = torch.where(valid, t, inf).amin()
    else:
        raise ValueError(f"scope must be 'image' or 'batch', got {scope!r}")
    hardness = (t_max - t) / (t_max - t_min + RISK_EPS)
    risk = torch.pow(torch.tensor(base, dtype=torch.float64), hardness)
    return torch.where(valid, risk, torch.zeros_like(risk))


def risk_weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, ignore_index: int = -100,
                     normalize: str = "batch", min_foreground: float = 1.0) -> torch.Tensor:
    """TRM Eq. 7 in float64; differentiable w.r.t. ``logits`` through autograd.

    ``min_foreground`` floors the foreground count of the denominator ("batch", "image").
    """
    x = logits.double()
    valid = _valid_mask(labels, ignore_index)
    safe_labels = torch.where(valid, labels.long(), torch.zeros_like(labels.long()))
    ce = torch.logsumexp(x, dim=1) - x.gather(1, safe_labels.unsqueeze(1)).squeeze(1)  # [N, *spatial]
    weighted = torch.where(valid, weights.double() * ce, torch.zeros_like(ce))
    foreground = valid & (labels != 0)
    if normalize == "batch":
        return weighted.sum() / max(float(min_foreground), float(foreground.sum()))
    if normalize == "image":
        per_image_fg = foreground.flatten(1).sum(dim=1).double().clamp_min(float(min_foreground))
        return (weighted.flatten(1).sum(dim=1) / per_image_fg).mean()
    if normalize == "valid":
        return weighted.sum() / int(valid.sum())
    raise ValueError(f"normalize must be 'batch', 'image' or 'valid', got {normalize!r}")

"""The TRM method as parts of any training loop (MONAI, Lightning, nnU-Net trainers, a loop of your own).

Two pieces, for 2-D slices or 3-D volumes alike (the ops take 1 to 3 spatial dims):

- :class:`RiskWeightedCE`, a ``torch.nn.Module`` loss: the risk-weighted,
  foreground-normalised cross-entropy of TRM Eq. 7, with trmcore's defaults
  (``TrainConfig.trm_normalize``: "bounded", ``TrainConfig.trm_bound``) and the
  paper's Eq. 7 as ``normalize="batch"``.
- :func:`source_risk_maps`: the transfer risk maps of a source model over an
  iterable of (image, label) batches, streaming. Pass 1 accumulates the LEEP
  joint over the whole set (one batch of logits in memory at a time); then
  :meth:`SourceRiskMaps.maps` gives T and R of any batch (with its own
  augmentation, inside the training loop) and iterating the object is pass 2,
  the maps of the batches themselves, one batch at a time.

Example (see docs/api.md for a whole fine-tuning loop)::

    risk = source_risk_maps(source, loader, num_classes=2)        # pass 1: the joint
    criterion = RiskWeightedCE(expected_foreground=risk.expected_foreground)
    for images, labels in loader:
        _, weights = risk.maps(images, labels)                    # no grad, the source's forward
        loss = criterion(model(images), labels, weights)
"""

from __future__ import annotations

from collections.abc import Iterable as IterableABC
from collections.abc import Iterator as IteratorABC
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from trmcore import ops
from trmcore.training.config import TrainConfig
from trmcore.training.method_settings import RISK_SCALINGS, TRM_DENOMINATORS
from trmcore.training.loss_denominator import bounded_min_foreground
from trmcore.training.precision import autocast_for
from trmcore.training.risk_scaling import IGNORE_INDEX, scaled_risk_map


class RiskWeightedCE(nn.Module):
    """Risk-weighted, foreground-normalised cross-entropy (TRM Eq. 7) as a ``torch.nn.Module``.

    ``forward(logits, labels, risk)``: logits ``[N, C, *spatial]`` (1-3 spatial dims, any float
    dtype; computed in float32), labels ``[N, *spatial]`` (or ``[N, 1, *spatial]`` as MONAI
    gives them; integer, or float holding integers), risk ``[N, *spatial]`` >= 0 (no gradient).
    Returns a float32 scalar; the gradient is the fused kernel of :func:`trmcore.ops.risk_weighted_ce`.

    Args:
        normalize: one of ``TRM_DENOMINATORS`` (default ``TrainConfig.trm_normalize``):
            "bounded" divides by max(#foreground of the batch, E / bound), "batch" by
            max(1, #foreground) as TRM Eq. 7 is published, "image" per image then the mean.
        bound: with "bounded", no batch weighs more than ``bound`` times a batch with the
            expected foreground count (default ``TrainConfig.trm_bound``).
        expected_foreground: E, the expected foreground pixels of a batch of your loader
            (:attr:`SourceRiskMaps.expected_foreground` measures it in pass 1); needed by "bounded".
        ignore_index: label of pixels that take part in nothing.
    """

    def __init__(self, normalize: str = TrainConfig.trm_normalize, bound: float = TrainConfig.trm_bound,
                 expected_foreground: Optional[float] = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if normalize not in TRM_DENOMINATORS:
            raise ValueError(f"normalize must be one of {TRM_DENOMINATORS}, got {normalize!r}")
        if not 1.0 <= float(bound) < float("inf"):
            raise ValueError(f"bound must be a finite number >= 1, got {bound!r}")
        if normalize == "bounded":
            if expected_foreground is None:
                raise ValueError('normalize="bounded" needs expected_foreground (E, the mean foreground pixels of a '
                                 'batch: SourceRiskMaps.expected_foreground), or use normalize="batch" (TRM Eq. 7)')
            if not 0.0 <= float(expected_foreground) < float("inf"):
                raise ValueError(f"expected_foreground must be a finite number >= 0, got {expected_foreground!r}")
        self.normalize = normalize
        self.bound = float(bound)
        self.expected_foreground = None if expected_foreground is None else float(expected_foreground)
        self.ignore_index = int(ignore_index)
        # What ops.risk_weighted_ce takes: "bounded" is Eq. 7 over the batch with a floor.
        self._ops_normalize = "image" if normalize == "image" else "batch"
        self._min_foreground = (bounded_min_foreground(self.expected_foreground, self.bound)
                                if normalize == "bounded" else 1.0)

    @property
    def min_foreground(self) -> float:
        """The floor of the foreground count in the denominator (1 for Eq. 7 as published)."""
        return self._min_foreground

    def forward(self, logits: Tensor, labels: Tensor, risk: Tensor) -> Tensor:
        labels = as_label_tensor(labels, logits.dim())
        return ops.risk_weighted_ce(logits.float(), labels, risk, ignore_index=self.ignore_index,
                                    normalize=self._ops_normalize, min_foreground=self._min_foreground)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}, bound={self.bound}, min_foreground={self._min_foreground:.4g}"


def as_label_tensor(labels: Tensor, logits_dim: int) -> Tensor:
    """Labels ``[N, *spatial]`` int64 from ``[N, *spatial]`` or ``[N, 1, *spatial]``, integer or integral float."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch tensor, got {type(labels).__name__}")
    if labels.dim() == logits_dim and labels.shape[1] == 1:  # MONAI keeps a channel dim on labels
        labels = labels[:, 0]
    if labels.dtype.is_floating_point:
        rounded = labels.round()
        if not bool((rounded == labels).all()):
            raise ValueError("labels hold non-integer values; pass class indices (MONAI: not one-hot, "
                             "no interpolation other than nearest)")
        labels = rounded.long()
    return labels


def model_logits(output: Any) -> Tensor:
    """The full-resolution logits of a network's output: the tensor, or the first of a deep-supervision list."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise TypeError(f"the source model returned {type(output).__name__}, not logits (a tensor)")
    return output


def _split_batch(batch: Any, keys: Sequence[str]) -> Tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        missing = [key for key in keys if key not in batch]
        if missing:
            raise ValueError(f"a batch dict lacks {missing}; it has {sorted(batch)} (set keys=(image, label))")
        return batch[keys[0]], batch[keys[1]]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(f"a batch must be (image, label) or a dict with keys {tuple(keys)}, got {type(batch).__name__}")


@dataclass
class RiskMapBatch:
    """T and R of one batch of pass 2: float32 ``[N, *spatial]`` on the source's device.

    ``index``: position of the batch in the iterable; ``labels``: its labels as the ops took them.
    """

    index: int
    transferability: Tensor
    risk: Tensor
    labels: Tensor


class SourceRiskMaps:
    """LEEP joint of a source model over a dataset (pass 1), and the risk maps it gives (pass 2).

    Built by :func:`source_risk_maps`. Attributes after pass 1:
        joint: :class:`trmcore.ops.LeepJoint` over every valid pixel of the set.
        expected_foreground: mean foreground pixels (label not 0, not ignored) per batch:
            E of :class:`RiskWeightedCE` for a loader that draws batches like this one.
        batches: how many batches pass 1 saw.

    The source must stay as it was in pass 1 (frozen). The first batch's logits are kept
    (one batch, as pass 1 held anyway) and pass 2 reuses them when its first batch holds
    bitwise the same images and labels, so a set of one batch (one volume) costs one forward.
    """

    def __init__(self, source: nn.Module, batches: Iterable[Any], num_classes: int, *,
                 base: float = TrainConfig.risk_base, scope: str = TrainConfig.risk_scope,
                 scaling: str = TrainConfig.risk_scaling, quantile: float = TrainConfig.risk_quantile,
                 device: Optional[torch.device] = None, amp: bool = TrainConfig.amp,
                 ignore_index: int = IGNORE_INDEX, keys: Sequence[str] = ("image", "label")) -> None:
        if not isinstance(batches, IterableABC) or isinstance(batches, IteratorABC):  # iter() would start workers
            raise ValueError("batches must be re-iterable (a DataLoader, a list...), not a one-shot iterator: "
                             "the maps need a second pass over the same data")
        if scope not in ops.RISK_SCOPES:
            raise ValueError(f"scope must be one of {ops.RISK_SCOPES}, got {scope!r}")
        if scaling not in RISK_SCALINGS:
            raise ValueError(f"scaling must be one of {RISK_SCALINGS}, got {scaling!r}")
        self.source = source
        self.data = batches
        self.num_classes = num_classes
        self.base, self.scope, self.scaling, self.quantile = base, scope, scaling, quantile
        self.device = device if device is not None else _module_device(source)
        self.amp = amp
        self.ignore_index = ignore_index
        self.keys = tuple(keys)
        accumulator = ops.LeepAccumulator(num_classes, ignore_index=ignore_index)
        foreground, count = 0, 0
        # The first batch's images and logits stay for pass 2: a set of one batch (one volume) then
        # costs one forward pass, not two. Reused only where pass 2 yields bitwise the same images.
        self._first: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        for images, logits, labels in self._logits():
            accumulator.update(logits, labels)
            if count == 0:
                self._first = (images.detach().clone(), logits, labels)
            foreground += int(((labels != 0) & (labels != ignore_index)).sum())
            count += 1
        if count == 0:
            raise ValueError("batches is empty: no data to compute the LEEP joint over")
        self.joint = accumulator.all_reduce()
        self.batches = count
        self.expected_foreground = foreground / count

    def leep(self) -> float:
        """Dataset LEEP of the source on this set (<= 0, higher transfers better); runs pass 2 for the maps."""
        total = 0.0
        for item in self:
            total += float(item.transferability.double().sum())
        return total / self.joint.count

    @torch.no_grad()
    def maps(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        """(T, R) float32 ``[N, *spatial]`` of any batch, with the joint of the whole set (SPEC 2-3)."""
        logits, labels = self._forward(images, labels)
        return self._maps(logits, labels)

    def __iter__(self) -> Iterator[RiskMapBatch]:
        """Pass 2: T and R of every batch of the iterable, in order, one batch in memory at a time."""
        for index, (images, logits, labels) in enumerate(self._logits(reuse_first=True)):
            leep_map, risk = self._maps(logits, labels)
            yield RiskMapBatch(index, leep_map, risk, labels)
        ops.check_pending()

    def _maps(self, logits: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        leep_map = ops.pixel_leep(logits, labels, self.joint)
        risk = scaled_risk_map(leep_map, labels, base=self.base, scope=self.scope, scaling=self.scaling,
                               quantile=self.quantile, ignore_index=self.ignore_index)
        return leep_map, risk

    @torch.no_grad()
    def _forward(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        was_training = self.source.training
        self.source.eval()
        try:
            with autocast_for(self.device, self.amp):
                logits = model_logits(self.source(images.to(self.device))).float()
        finally:
            self.source.train(was_training)
        return logits, as_label_tensor(labels, logits.dim()).to(self.device)

    def _logits(self, reuse_first: bool = False) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        """(images, logits float32, labels int64) per batch, one batch at a time."""
        for index, batch in enumerate(self.data):
            images, labels = _split_batch(batch, self.keys)
            if reuse_first and index == 0 and self._first is not None and _same(images, self._first[0]):
                first_labels = as_label_tensor(labels, self._first[1].dim()).to(self.device)
                if torch.equal(first_labels, self._first[2]):
                    yield images, self._first[1], self._first[2]
                    continue
            yield (images, *self._forward(images, labels))


def _same(a: Tensor, b: Tensor) -> bool:
    return isinstance(a, Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.to(b.device), b)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def source_risk_maps(source: nn.Module, batches: Iterable[Any], num_classes: int, **options: Any) -> SourceRiskMaps:
    """Transfer risk maps of ``source`` over ``batches``, streaming (SPEC 2-3).

    Args:
        source: the frozen source segmenter; its output (or the first of a deep-supervision
            list) is logits ``[N, Z, *spatial]`` over its own Z classes.
        batches: a re-iterable of ``(image, label)`` pairs or dicts (``keys``, MONAI style):
            images as the source takes them, labels ``[N, *spatial]`` or ``[N, 1, *spatial]``
            in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: C, the target task's classes.
        options: ``base``, ``scope``, ``scaling``, ``quantile`` (defaults: TrainConfig's
            ``risk_*``), ``device`` (default: the source's), ``amp``, ``ignore_index``, ``keys``.

    Returns:
        A :class:`SourceRiskMaps` after pass 1 (the joint over the whole set); iterate it for
        pass 2 (:class:`RiskMapBatch` per batch), or call ``.maps(images, labels)`` per step.
    """
    return SourceRiskMaps(source, batches, num_classes, **options)

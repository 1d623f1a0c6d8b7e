"""Per-pixel loss weights of the fine-tuning methods (SPEC section 5).

Every method trains with the same loss, :func:`trmcore.ops.risk_weighted_ce`;
a method only chooses the weight map and the normalisation:

=============  =========================================  ===========
method         weight of pixel (i, h, w)                  normalize
=============  =========================================  ===========
vanilla        1                                          "valid"
class-weight   w[y], w_c = M / (C * M_c)                  "valid"
trs-map        exp(-LEEP of the pixel's stride block)     "valid"
trm            risk_map(pixel_leep(source logits))        "batch"
=============  =========================================  ===========

The LEEP statistics use the frozen source model's own head (Z outputs), even
when the target head was re-initialised for C classes. They are accumulated
batch by batch under ``no_grad`` over this rank's shard of the training
slices and summed across ranks.

Each method is an entry of :data:`trmcore.training.methods.METHODS` naming its
class here; :func:`create_weighting` builds it from the run's TrainConfig
(and the model's UNetConfig) through ``Class.from_config``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from trmcore import ops
from trmcore.models import UNet, UNetConfig
from trmcore.training.distributed import DistContext
from trmcore.training.methods import get_method
from trmcore.training.precision import autocast_for
from trmcore.training.shards import TrainingSlices

if TYPE_CHECKING:
    from trmcore.training.config import TrainConfig
from trmcore.training.risk_scaling import (anneal_weights, balance_risk, class_means, class_risk_sums,
                                           scaled_risk_map)

IGNORE_INDEX = -100
# SPEC 5: trs-map blocks with fewer valid pixels keep weight 1.
TRS_MIN_PIXELS = 5


@torch.no_grad()
def _shard_logits(model: nn.Module, data: TrainingSlices, batch_size: int,
                  device: torch.device, amp: bool) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, logits float32 [B, K, H, W], labels [B, H, W]) over this rank's shard, in order."""
    was_training = model.training
    model.eval()
    try:
        for index in data.shard_batches(batch_size):
            images = data.images[index].to(device, non_blocking=True)
            labels = data.labels[index].to(device, non_blocking=True)
            with autocast_for(device, amp):
                logits = model(images)
            yield index, logits.float(), labels
    finally:
        model.train(was_training)


def leep_statistics(model: nn.Module, data: TrainingSlices, num_classes: int, ctx: DistContext,
                    batch_size: int = 16, amp: bool = True) -> ops.LeepJoint:
    """The LEEP joint of ``model``'s outputs and the target labels over the whole training set.

    Each rank accumulates its shard with :class:`trmcore.ops.LeepAccumulator`;
    ``all_reduce`` then sums the joints across ranks.
    """
    accumulator = ops.LeepAccumulator(num_classes, ignore_index=IGNORE_INDEX)
    for _, logits, labels in _shard_logits(model, data, batch_size, ctx.device, amp):
        accumulator.update(logits, labels)
    return accumulator.all_reduce()


def leep_maps(model: nn.Module, data: TrainingSlices, num_classes: int, ctx: DistContext,
              batch_size: int = 16, amp: bool = True,
              source_classes: Optional[list] = None) -> Tuple[torch.Tensor, ops.LeepJoint]:
    """Transferability maps T (SPEC 2) of this rank's shard: float32 ``[len(shard), H, W]`` on CPU.

    ``source_classes``: a list that receives the model's argmax class per pixel, int16 ``[B, H, W]``
    per batch (for the diagnostics: which source class a pixel's risk comes from).
    """
    joint = leep_statistics(model, data, num_classes, ctx, batch_size, amp)
    maps = []
    for _, logits, labels in _shard_logits(model, data, batch_size, ctx.device, amp):
        maps.append(ops.pixel_leep(logits, labels, joint).float().cpu())
        if source_classes is not None:
            source_classes.append(logits.argmax(dim=1).to(torch.int16).cpu())
    ops.check_pending()
    return torch.cat(maps), joint


def leep_batch_size(config: "TrainConfig") -> int:
    """Slices per no-grad forward pass of the LEEP statistics (at least 8: no gradients to hold)."""
    return max(config.batch_size, 8)


class LossWeighting:
    """Vanilla cross-entropy: every valid pixel weighs 1, mean over valid pixels.

    Subclasses override :meth:`from_config` (how the method builds itself from the run's
    settings), :meth:`weights` and, when they change during training, the refresh and state hooks.
    """

    normalize = "valid"

    @classmethod
    def from_config(cls, config: "TrainConfig", model_config: UNetConfig, data: TrainingSlices, num_classes: int,
                    ctx: DistContext, source: Optional[nn.Module] = None) -> "LossWeighting":
        """The weighting of a run with ``config`` training a ``model_config`` network on ``data``.

        Args:
            config: the run's TrainConfig (the method's own settings: ``config.method_settings_of()``;
                shared ones: amp, batch_size, iterations).
            model_config: the trained network's shape (after any head reset).
            data: training slices and this rank's shard; num_classes: C of the target task.
            ctx: device and ranks; source: the frozen source model (methods with ``needs_source``).
        """
        return cls()

    def weights(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-pixel weights float32 ``[B, H, W]`` for the slices ``index`` with labels ``labels``."""
        return torch.ones(labels.shape, dtype=torch.float32, device=labels.device)

    def maybe_refresh(self, model: nn.Module, iteration: int) -> bool:
        """Recompute model-dependent weights before ``iteration``; True when it did."""
        return False

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on --resume)."""
        return None


class ClassWeighting(LossWeighting):
    """Inverse class frequency: w_c = M / (C * M_c) over the target training pixels."""

    normalize = "valid"

    def __init__(self, data: TrainingSlices, num_classes: int, ctx: DistContext) -> None:
        labels = data.labels[data.shard]
        valid = labels[labels != IGNORE_INDEX]
        counts = torch.bincount(valid.flatten(), minlength=num_classes)[:num_classes].double()
        counts = ctx.all_reduce_sum(counts)
        total = counts.sum()
        # An absent class never occurs in a label, so its weight is never used.
        self.class_weights = torch.where(counts > 0, total / (num_classes * counts.clamp_min(1)),
                                         torch.ones_like(counts)).float()

    @classmethod
    def from_config(cls, config, model_config, data, num_classes, ctx, source=None) -> "ClassWeighting":
        return cls(data, num_classes, ctx)

    def weights(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        table = self.class_weights.to(labels.device)
        safe = torch.where(labels == IGNORE_INDEX, torch.zeros_like(labels), labels)
        return table[safe]


class TrsMapWeighting(LossWeighting):
    """[TRS] block-local LEEP: one weight exp(-LEEP_block) per stride x stride block, shared by all images."""

    normalize = "valid"

    def __init__(self, source: nn.Module, data: TrainingSlices, num_classes: int, ctx: DistContext,
                 stride: int = 4, batch_size: int = 16, amp: bool = True) -> None:
        height, width = data.labels.shape[-2:]
        grid_h, grid_w = math.ceil(height / stride), math.ceil(width / stride)
        rows = torch.arange(height) // stride
        cols = torch.arange(width) // stride
        block_of_pixel = (rows[:, None] * grid_w + cols[None, :]).to(ctx.device)  # [H, W]
        num_blocks = grid_h * grid_w

        # Pass 1: one joint per block, via the combined label block * C + y.
        accumulator = ops.LeepAccumulator(num_blocks * num_classes, ignore_index=IGNORE_INDEX)
        for _, logits, labels in _shard_logits(source, data, batch_size, ctx.device, amp):
            accumulator.update(logits, self._combined(labels, block_of_pixel, num_classes))
        joint = accumulator.all_reduce()
        sums = torch.as_tensor(joint.sums).to(ctx.device).view(num_blocks, num_classes, -1)  # [B, C, Z]
        column = sums.sum(dim=1, keepdim=True)
        conditional = torch.where(column > 0, sums / column.clamp_min(1e-300), torch.zeros_like(sums))

        # Pass 2: mean log EEP per block, each pixel scored with its own block's P(y | z).
        leep_sum = torch.zeros(num_blocks, dtype=torch.float64, device=ctx.device)
        count = torch.zeros(num_blocks, dtype=torch.float64, device=ctx.device)
        floor = torch.finfo(torch.float32).tiny
        for _, logits, labels in _shard_logits(source, data, batch_size, ctx.device, amp):
            theta = torch.softmax(logits.double(), dim=1).permute(0, 2, 3, 1)  # [N, H, W, Z]
            valid = labels != IGNORE_INDEX
            blocks = block_of_pixel.expand_as(labels)[valid]
            eep = (conditional[blocks, labels[valid]] * theta[valid]).sum(dim=-1)
            leep_sum.index_add_(0, blocks, torch.log(eep.clamp_min(floor)))
            count.index_add_(0, blocks, torch.ones_like(eep))
        leep_sum = ctx.all_reduce_sum(leep_sum)
        count = ctx.all_reduce_sum(count)
        block_leep = leep_sum / count.clamp_min(1)
        block_weight = torch.where(count >= TRS_MIN_PIXELS, torch.exp(-block_leep), torch.ones_like(block_leep))
        self.weight_map = block_weight[block_of_pixel].float()  # [H, W], nearest-neighbour expansion
        self.block_leep = torch.where(count >= TRS_MIN_PIXELS, block_leep, torch.zeros_like(block_leep))

    @classmethod
    def from_config(cls, config, model_config, data, num_classes, ctx, source=None) -> "TrsMapWeighting":
        settings = config.method_settings_of("trs-map")
        return cls(source, data, num_classes, ctx, stride=settings.trs_stride, batch_size=leep_batch_size(config),
                   amp=config.amp)

    @staticmethod
    def _combined(labels: torch.Tensor, block_of_pixel: torch.Tensor, num_classes: int) -> torch.Tensor:
        combined = block_of_pixel * num_classes + labels
        return torch.where(labels == IGNORE_INDEX, labels, combined)

    def weights(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.weight_map.to(labels.device).expand(labels.shape)
        return torch.where(labels == IGNORE_INDEX, torch.zeros_like(weights), weights)


class RiskMapWeighting(LossWeighting):
    """[TRM] transfer risk maps from pixel-level LEEP, foreground-normalised loss (TRM Eq. 7).

    The transferability maps come from the frozen source model before training
    (static). With ``refresh_every = K > 0`` they are recomputed from the
    current model every K iterations. ``scaling`` / ``quantile``: how T becomes
    R (trmcore.training.risk_scaling; "minmax" is TRM Eq. 5). ``normalize = "batch"``
    asks for Eq. 7; trmcore.training.loss_denominator picks its form (bounded by default).
    ``balance``: the loss weight is R ("none", TRM Eq. 7) or R divided by its class's mean over the
    training pixels ("per-class"; "foreground": on foreground classes, background weighs 1), see
    :func:`trmcore.training.risk_scaling.balance_risk`. ``anneal_over = T > 0``: the weights move
    linearly to 1 over T iterations.
    """

    normalize = "batch"

    def __init__(self, source: nn.Module, data: TrainingSlices, num_classes: int, ctx: DistContext,
                 base: float = ops.RISK_BASE, scope: str = ops.RISK_SCOPE, refresh_every: int = 0, batch_size: int = 16,
                 amp: bool = True, model_config: Optional[UNetConfig] = None, scaling: str = "minmax",
                 quantile: float = 0.05, balance: str = "none", anneal_over: int = 0) -> None:
        self.data = data
        self.balance = balance
        self.anneal_over = anneal_over
        self.iteration = 0
        self.model_config = model_config  # shape of the refreshed model, to rebuild it on --resume
        self.scaling = scaling
        self.quantile = quantile
        self.num_classes = num_classes
        self.ctx = ctx
        self.base = base
        self.scope = scope
        self.refresh_every = refresh_every
        self.batch_size = batch_size
        self.amp = amp
        # Global slice index -> row of self.maps (this rank's shard only).
        self.row_of = torch.full((len(data.labels),), -1, dtype=torch.int64)
        self.row_of[data.shard] = torch.arange(len(data.shard))
        argmax: list = []
        self.maps, self.joint = leep_maps(source, data, num_classes, ctx, batch_size, amp, argmax)
        # The frozen source model's class per pixel of this rank's shard, int16 [len(shard), H, W].
        self.source_classes = torch.cat(argmax)
        self.class_mean_risk = self._class_means()
        self.refreshed_at: Optional[int] = None
        self.refresh_state: Optional[Dict[str, torch.Tensor]] = None

    @classmethod
    def from_config(cls, config, model_config, data, num_classes, ctx, source=None) -> "RiskMapWeighting":
        settings = config.method_settings_of("trm")
        return cls(source, data, num_classes, ctx, base=settings.risk_base, scope=settings.risk_scope,
                   refresh_every=settings.risk_refresh, batch_size=leep_batch_size(config), amp=config.amp,
                   model_config=model_config, scaling=settings.risk_scaling, quantile=settings.risk_quantile,
                   balance=settings.risk_balance, anneal_over=config.iterations if settings.risk_anneal else 0)

    def risk(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """R of TRM Eq. 6 (with the run's scaling) for the slices ``index``, float32 ``[B, H, W]``."""
        rows = self.row_of[index.cpu()]
        if bool((rows < 0).any()):
            raise ValueError("risk map requested for a slice outside this rank's shard")
        leep_map = self.maps[rows].to(labels.device)
        return scaled_risk_map(leep_map, labels, self.base, self.scope, self.scaling, self.quantile, IGNORE_INDEX)

    def weights(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = balance_risk(self.risk(index, labels), labels, self.class_mean_risk, self.balance, IGNORE_INDEX)
        if self.anneal_over > 0:
            weights = anneal_weights(weights, labels, self.iteration, self.anneal_over, IGNORE_INDEX)
        return weights

    def _class_means(self) -> torch.Tensor:
        """Mean R per target class over the training pixels (all ranks), float32 ``[C]``."""
        sums = torch.zeros(self.num_classes, 2, dtype=torch.float64)
        for index in self.data.shard_batches(self.batch_size):
            labels = self.data.labels[index]
            sums += class_risk_sums(self.risk(index, labels.to(self.ctx.device)), labels, self.num_classes,
                                    IGNORE_INDEX)
        return class_means(self.ctx.all_reduce_sum(sums))

    def maybe_refresh(self, model: nn.Module, iteration: int) -> bool:
        self.iteration = iteration  # called before every step: the annealing's clock
        if self.refresh_every <= 0 or iteration == 0 or iteration % self.refresh_every:
            return False
        self._refresh(model, iteration)
        return True

    def _refresh(self, model: nn.Module, iteration: int) -> None:
        self.maps, self.joint = leep_maps(model, self.data, self.num_classes, self.ctx, self.batch_size, self.amp)
        self.class_mean_risk = self._class_means()
        self.refreshed_at = iteration
        # The weights the maps came from: enough to rebuild them exactly on --resume.
        self.refresh_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> Dict[str, Any]:
        if self.refreshed_at is None:
            return {}
        return {"refreshed_at": self.refreshed_at, "model_state": self.refresh_state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if not state:
            return
        if self.model_config is None:
            raise ValueError("RiskMapWeighting needs model_config to restore refreshed risk maps")
        model = UNet(self.model_config)
        model.load_state_dict(state["model_state"])
        model.to(self.ctx.device)
        self._refresh(model, int(state["refreshed_at"]))


def create_weighting(config: "TrainConfig", model_config: UNetConfig, data: TrainingSlices, num_classes: int,
                     ctx: DistContext, source: Optional[nn.Module] = None) -> LossWeighting:
    """The LossWeighting of ``config.method``, from the METHODS registry.

    Raises:
        ValueError: an unregistered method, or one that needs the source model without ``source``.
    """
    entry = get_method(config.method)
    if entry.needs_source and source is None:
        raise ValueError(f"method {entry.name!r} needs the source model")
    return entry.load().from_config(config, model_config, data, num_classes, ctx, source)

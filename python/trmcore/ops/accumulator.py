"""LeepAccumulator: the LEEP joint over a dataset seen batch by batch, across processes."""

from __future__ import annotations

from typing import Any, Optional

from .joint import LeepJoint


class LeepAccumulator:
    """Sum :func:`trmcore.ops.leep_joint` over batches, then all-reduce across ranks.

    Example::

        acc = LeepAccumulator(num_classes=2)
        with torch.no_grad():
            for images, labels in loader:
                acc.update(source_model(images), labels)
        acc.all_reduce()            # under torch.distributed; a no-op otherwise
        cond = acc.conditional()    # P(y | z), float64 [C, Z]

    The sums are float64, so the result does not depend on how the data was
    split into batches or ranks beyond float64 rounding.
    """

    def __init__(self, num_classes: int, ignore_index: int = -100):
        from . import _validate as V

        self.num_classes = V.check_num_classes(num_classes)
        self.ignore_index = V.check_ignore_index(ignore_index)
        self._joint: Optional[LeepJoint] = None
        self._reduced = False

    def update(self, logits: Any, labels: Any) -> LeepJoint:
        """Add one batch (logits ``[N, Z, *spatial]``, labels ``[N, *spatial]``); returns its joint."""
        from . import leep_joint

        if self._reduced:
            raise RuntimeError("update() after all_reduce(): the sums are already global; call reset() first")
        batch = leep_joint(logits, labels, self.num_classes, self.ignore_index)
        if self._joint is not None and type(batch.sums) is not type(self._joint.sums):
            raise TypeError("mixing torch tensors and NumPy arrays across updates")
        if self._joint is not None and batch.sums.shape != self._joint.sums.shape:
            raise ValueError(f"logits have {batch.num_source_classes} source classes, earlier batches had "
                             f"{self._joint.num_source_classes}")
        if self._joint is not None and getattr(batch.sums, "device", None) != getattr(self._joint.sums, "device", None):
            batch = LeepJoint(batch.sums.to(self._joint.sums.device), batch.count, batch.ignore_index)
        self._joint = batch if self._joint is None else self._joint + batch
        return batch

    @property
    def joint(self) -> LeepJoint:
        """The accumulated :class:`LeepJoint`."""
        if self._joint is None or self._joint.count == 0:
            raise ValueError("LeepAccumulator has no valid pixels yet: call update() with data first")
        return self._joint

    def conditional(self) -> Any:
        """P(y | z), float64 ``[C, Z]``."""
        return self.joint.conditional()

    def reset(self) -> None:
        self._joint = None
        self._reduced = False

    def all_reduce(self, group: Any = None) -> LeepJoint:
        """Sum the joint over the ranks of ``group`` (torch.distributed); call once, after all updates.

        Without an initialised process group this is a no-op, so the same
        script runs single-process. With NCCL the sums travel on the current
        CUDA device.
        """
        import torch
        import torch.distributed as dist

        if self._reduced:
            raise RuntimeError("all_reduce() was already called; call reset() before accumulating again")
        if not (dist.is_available() and dist.is_initialized()):
            return self.joint
        local = self._joint
        if local is None:
            raise ValueError("all_reduce() before any update(): every rank must accumulate some data")
        sums = torch.as_tensor(local.sums, dtype=torch.float64)
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else sums.device
        packed = torch.cat([sums.flatten(), torch.tensor([float(local.count)], dtype=torch.float64)]).to(device)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        reduced_sums = packed[:-1].reshape(sums.shape).to(sums.device)
        if not isinstance(local.sums, torch.Tensor):
            reduced_sums = reduced_sums.numpy()
        self._joint = LeepJoint(reduced_sums, int(packed[-1].item()), self.ignore_index)
        self._reduced = True
        return self._joint

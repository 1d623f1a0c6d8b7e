"""Torch backend of :mod:`trmcore.ops`: ``torch.library`` custom ops over the kernels.

Each kernel is a custom op (``torch.ops.trmcore.*``) with a fake (meta)
implementation, so the ops trace under ``torch.compile`` and pass
``torch.library.opcheck``; ``rwce_forward`` carries its backward through
``register_autograd``. CPU tensors run the CPU kernels with torch's thread
count, CUDA tensors the CUDA kernels on the current stream.

Value checks that need the data (labels in range, finite logits, finite and
non-negative weights) happen inside the ops, where the kernels count them in the
same pass; the Python wrappers check only shapes, dtypes and devices.

Reading those counts on the host would stall the GPU once per call (the loss is
called every training step), so on CUDA they are checked lazily: each call queues
its status tensor with an event, and the error is raised by a later call once the
event has completed, or by :func:`check_pending` (the trainer calls it where it
reads the loss anyway). ``set_check_mode("eager")`` (or TRM_OPS_CHECKS=eager)
checks every call at once, for debugging; CPU calls are always checked at once
(no device to wait for).
"""

import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _validate as V
from ._native import DTYPE_CODES, built_with_cuda, launch
from ._reduce import reduce_loss
from .joint import LeepJoint

_LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- plumbing

def _device_params(tensor: Tensor) -> Dict[str, object]:
    if tensor.is_cuda:
        return {"cuda": True, "stream": torch.cuda.current_stream(tensor.device).cuda_stream, "num_threads": 0}
    return {"cuda": False, "stream": 0, "num_threads": torch.get_num_threads()}


def _sizes(logits: Tensor) -> Tuple[int, int, int]:
    """(N, K, S) of ``[N, K, *spatial]`` logits; the kernels see a C-contiguous buffer as ``[N, K, S]``."""
    return logits.shape[0], logits.shape[1], math.prod(logits.shape[2:])


def _dtype_code(tensor: Tensor) -> int:
    return DTYPE_CODES[str(tensor.dtype).replace("torch.", "")]


def _check_device(tensor: Tensor, name: str) -> None:
    if tensor.device.type == "cuda":
        if not built_with_cuda():
            raise ValueError(f"{name} is a CUDA tensor but this trmcore build has no CUDA kernels "
                             "(it was compiled without a CUDA compiler); move the tensors to the CPU "
                             "or install a CUDA build")
    elif tensor.device.type != "cpu":
        raise ValueError(f"{name} is on device {tensor.device}; trmcore runs on CPU and CUDA tensors")


# ---------------------------------------------------------------- lazy value checks

CHECK_MODES = ("auto", "eager", "deferred")
_check_mode = os.environ.get("TRM_OPS_CHECKS", "auto")
if _check_mode not in CHECK_MODES:
    raise ValueError(f"TRM_OPS_CHECKS must be one of {CHECK_MODES}, got {_check_mode!r}")
# (status tensor, completion event or None, raises for bad counts, op name), in stream order.
_pending: List[Tuple[Tensor, Optional[object], Callable[[Sequence[int]], None], str]] = []


def set_check_mode(mode: str) -> None:
    """How ops check their data: "auto" (CPU at once, CUDA lazily), "eager" (every call at once: one host
    sync per call on CUDA, for debugging) or "deferred" (lazily on every device, used by the tests)."""
    global _check_mode
    if mode not in CHECK_MODES:
        raise ValueError(f"check mode must be one of {CHECK_MODES}, got {mode!r}")
    check_pending()
    _check_mode = mode


def _defer_check(status: Tensor, check: Callable[[Sequence[int]], None], op: str) -> None:
    """Raise ``check(status)`` now (CPU, eager mode) or from a later call once the GPU has got there."""
    if _check_mode == "eager" or (_check_mode == "auto" and not status.is_cuda):
        check(status.tolist())
        return
    _raise_finished(block=False)
    event = None
    if status.is_cuda:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(status.device))
    _pending.append((status, event, check, op))


def _raise_finished(block: bool) -> None:
    while _pending:
        status, event, check, op = _pending[0]
        if event is not None and not block and not event.query():
            return  # the GPU has not reached it yet; later ones are behind it on the stream
        _pending.pop(0)
        try:
            check(status.tolist())
        except ValueError as err:
            _pending.clear()
            raise ValueError(f"{err} (in an earlier {op} call; set TRM_OPS_CHECKS=eager to stop at the call itself)") \
                from None


def check_pending() -> None:
    """Wait for the queued value checks of earlier op calls and raise the first failure (one host sync)."""
    _raise_finished(block=True)


def _check_status(status: Tensor, num_classes: int, ignore_index: int, op: str) -> None:
    _defer_check(status, lambda counts: V.raise_for_status(counts, num_classes, ignore_index), op)


def _check_risk_inputs(counts: Sequence[int], ignore_index: int) -> None:
    nonfinite, valid = (int(v) for v in counts)
    if nonfinite:
        raise ValueError("leep_map contains non-finite values (NaN or inf)")
    if valid == 0:
        raise ValueError(f"labels: every pixel is ignore_index ({ignore_index}); nothing to compute")


class _DeviceGuard:
    """``torch.cuda.device(t.device)`` for CUDA tensors, nothing for CPU ones."""

    def __init__(self, tensor: Tensor):
        self._guard = torch.cuda.device(tensor.device) if tensor.is_cuda else None

    def __enter__(self):
        if self._guard is not None:
            self._guard.__enter__()

    def __exit__(self, *exc):
        if self._guard is not None:
            self._guard.__exit__(*exc)


# ---------------------------------------------------------------- custom ops

@torch.library.custom_op("trmcore::leep_joint", mutates_args=())
def _leep_joint_op(logits: Tensor, labels: Tensor, num_classes: int, ignore_index: int) -> Tuple[Tensor, Tensor]:
    n, z, pixels = _sizes(logits)
    logits, labels = logits.contiguous(), labels.contiguous()
    sums = torch.empty((num_classes, z), dtype=torch.float64, device=logits.device)
    status = torch.zeros(V.STATUS_SIZE, dtype=torch.int64, device=logits.device)
    with _DeviceGuard(logits):
        launch("leep_joint", logits=logits.data_ptr(), dtype=_dtype_code(logits), labels=labels.data_ptr(),
               n=n, z=z, hw=pixels, c=num_classes, ignore_index=ignore_index, joint=sums.data_ptr(),
               status=status.data_ptr(), **_device_params(logits))
    # Eager whatever the mode: the wrapper reads the valid count from the status at once anyway.
    V.raise_for_status(status.tolist(), num_classes, ignore_index)
    return sums, status


@_leep_joint_op.register_fake
def _(logits: Tensor, labels: Tensor, num_classes: int, ignore_index: int) -> Tuple[Tensor, Tensor]:
    return (logits.new_empty((num_classes, logits.shape[1]), dtype=torch.float64),
            logits.new_empty((V.STATUS_SIZE,), dtype=torch.int64))


@torch.library.custom_op("trmcore::pixel_leep", mutates_args=())
def _pixel_leep_op(logits: Tensor, labels: Tensor, conditional: Tensor, ignore_index: int) -> Tensor:
    n, z, pixels = _sizes(logits)
    logits, labels, conditional = logits.contiguous(), labels.contiguous(), conditional.contiguous()
    num_classes = conditional.shape[0]
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    status = torch.zeros(V.STATUS_SIZE, dtype=torch.int64, device=logits.device)
    with _DeviceGuard(logits):
        launch("pixel_leep", logits=logits.data_ptr(), dtype=_dtype_code(logits), labels=labels.data_ptr(),
               conditional=conditional.data_ptr(), n=n, z=z, hw=pixels, c=num_classes, ignore_index=ignore_index,
               out=out.data_ptr(), status=status.data_ptr(), **_device_params(logits))
    _check_status(status, num_classes, ignore_index, "pixel_leep")
    return out


@_pixel_leep_op.register_fake
def _(logits: Tensor, labels: Tensor, conditional: Tensor, ignore_index: int) -> Tensor:
    return logits.new_empty(labels.shape, dtype=torch.float32)


@torch.library.custom_op("trmcore::risk_map", mutates_args=())
def _risk_map_op(leep_map: Tensor, labels: Tensor, base: float, per_image: bool, ignore_index: int) -> Tensor:
    n, pixels = leep_map.shape[0], math.prod(leep_map.shape[1:])
    leep_map, labels = leep_map.contiguous(), labels.contiguous()
    counts = torch.stack([(~torch.isfinite(leep_map)).sum(), (labels != ignore_index).sum()])
    _defer_check(counts, lambda values: _check_risk_inputs(values, ignore_index), "risk_map")
    risk = torch.empty_like(leep_map)
    with _DeviceGuard(leep_map):
        launch("risk_map", leep_map=leep_map.data_ptr(), labels=labels.data_ptr(), n=n, hw=pixels,
               ignore_index=ignore_index, base=base, per_image=per_image, risk=risk.data_ptr(),
               **_device_params(leep_map))
    return risk


@_risk_map_op.register_fake
def _(leep_map: Tensor, labels: Tensor, base: float, per_image: bool, ignore_index: int) -> Tensor:
    return torch.empty_like(leep_map)


@torch.library.custom_op("trmcore::rwce_forward", mutates_args=())
def _rwce_forward_op(logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int,
                     normalize: str, min_foreground: float) -> Tuple[Tensor, Tensor]:
    n, c, pixels = _sizes(logits)
    logits, labels, weights = logits.contiguous(), labels.contiguous(), weights.contiguous()
    per_image = torch.empty((n, 3), dtype=torch.float64, device=logits.device)
    status = torch.zeros(V.STATUS_SIZE, dtype=torch.int64, device=logits.device)
    with _DeviceGuard(logits):
        launch("rwce_forward", logits=logits.data_ptr(), dtype=_dtype_code(logits), labels=labels.data_ptr(),
               weights=weights.data_ptr(), n=n, c=c, hw=pixels, ignore_index=ignore_index,
               per_image=per_image.data_ptr(), status=status.data_ptr(), **_device_params(logits))
    _check_status(status, c, ignore_index, "risk_weighted_ce")
    loss, inv_denominator = reduce_loss(per_image, normalize, torch, min_foreground)
    return loss.float(), inv_denominator.float()


@_rwce_forward_op.register_fake
def _(logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int, normalize: str,
      min_foreground: float) -> Tuple[Tensor, Tensor]:
    return logits.new_empty((), dtype=torch.float32), logits.new_empty((logits.shape[0],), dtype=torch.float32)


@torch.library.custom_op("trmcore::rwce_backward", mutates_args=())
def _rwce_backward_op(logits: Tensor, labels: Tensor, weights: Tensor, scale: Tensor, ignore_index: int) -> Tensor:
    n, c, pixels = _sizes(logits)
    logits, labels, weights, scale = logits.contiguous(), labels.contiguous(), weights.contiguous(), scale.contiguous()
    grad = torch.empty_like(logits)
    with _DeviceGuard(logits):
        launch("rwce_backward", logits=logits.data_ptr(), dtype=_dtype_code(logits), labels=labels.data_ptr(),
               weights=weights.data_ptr(), scale=scale.data_ptr(), n=n, c=c, hw=pixels, ignore_index=ignore_index,
               grad=grad.data_ptr(), **_device_params(logits))
    return grad


@_rwce_backward_op.register_fake
def _(logits: Tensor, labels: Tensor, weights: Tensor, scale: Tensor, ignore_index: int) -> Tensor:
    return torch.empty_like(logits)


def _rwce_setup_context(ctx, inputs, output) -> None:
    logits, labels, weights, ignore_index, _normalize, _min_foreground = inputs
    _loss, inv_denominator = output
    ctx.save_for_backward(logits, labels, weights, inv_denominator)
    ctx.ignore_index = ignore_index


def _rwce_backward(ctx, grad_loss: Tensor, _grad_inv: Tensor):
    logits, labels, weights, inv_denominator = ctx.saved_tensors
    scale = (inv_denominator * grad_loss).float()
    grad = _rwce_backward_op(logits, labels, weights, scale, ctx.ignore_index)
    return grad, None, None, None, None, None


_rwce_forward_op.register_autograd(_rwce_backward, setup_context=_rwce_setup_context)


# ---------------------------------------------------------------- public wrappers

def _logits_tensor(logits: Tensor, name: str = "logits") -> Tensor:
    if not logits.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    _check_device(logits, name)
    if logits.dtype not in _LOGIT_DTYPES:
        logits = logits.float()  # float64 in: the kernels compute in float32
    return logits.contiguous()


def _labels_tensor(labels: Tensor, like: Tensor) -> Tensor:
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.device != like.device:
        raise ValueError(f"labels are on {labels.device} but the other inputs on {like.device}: "
                         "put them on one device")
    return labels.to(torch.int64).contiguous()


def _map_tensor(values: Tensor, name: str, like: Tensor) -> Tensor:
    if not values.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {values.dtype}")
    if values.device != like.device:
        raise ValueError(f"{name} is on {values.device} but the other inputs on {like.device}: "
                         "put them on one device")
    return values.detach().to(torch.float32).contiguous()


def leep_joint(logits: Tensor, labels: Tensor, num_classes: int, ignore_index: int) -> LeepJoint:
    V.check_logits_labels(logits.shape, labels.shape)
    logits = _logits_tensor(logits.detach())
    labels = _labels_tensor(labels, logits)
    sums, status = _leep_joint_op(logits, labels, num_classes, ignore_index)
    return LeepJoint(sums, int(status[V.STATUS_VALID]), ignore_index)


def pixel_leep(logits: Tensor, labels: Tensor, conditional: Tensor, ignore_index: int) -> Tensor:
    V.check_logits_labels(logits.shape, labels.shape)
    logits = _logits_tensor(logits.detach())
    labels = _labels_tensor(labels, logits)
    conditional = conditional.to(device=logits.device, dtype=torch.float64)
    return _pixel_leep_op(logits, labels, conditional, ignore_index)


def risk_map(leep_map: Tensor, labels: Tensor, base: float, per_image: bool, ignore_index: int) -> Tensor:
    V.check_map_labels(leep_map.shape, labels.shape, "leep_map")
    _check_device(leep_map, "leep_map")
    leep_map = _map_tensor(leep_map, "leep_map", leep_map)
    labels = _labels_tensor(labels, leep_map)
    return _risk_map_op(leep_map, labels, base, per_image, ignore_index)


def risk_weighted_ce(logits: Tensor, labels: Tensor, weights: Tensor, ignore_index: int, normalize: str,
                     min_foreground: float = 1.0) -> Tensor:
    V.check_logits_labels(logits.shape, labels.shape)
    V.check_map_labels(weights.shape, labels.shape, "weights")
    logits = _logits_tensor(logits)
    labels = _labels_tensor(labels, logits)
    weights = _map_tensor(weights, "weights", logits)
    loss, _ = _rwce_forward_op(logits, labels, weights, ignore_index, normalize, float(min_foreground))
    return loss

"""Saving and loading runs: RUN/model.safetensors + RUN/run.json, written atomically.

The resumable training state (optimizer, RNG states, iteration, metric
history) lives next to them in RUN/train_state.pt so ``--resume`` continues a
run exactly. It holds only tensors and plain values (NumPy arrays are stored
as tensors) and is read with ``torch.load(weights_only=True)``: a file planted
in a run folder cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np
import torch

from trmcore.errors import UnsafeFileError
from trmcore.fileio import atomic_write_bytes, check_readable, make_folder
from trmcore.models.unet import UNet
from trmcore.training.runinfo import RUN_INFO_FILE, WEIGHTS_FILE, RunInfo, read_run_info, write_run_info

TRAIN_STATE_FILE = "train_state.pt"

__all__ = ["RunInfo", "save_run", "load_run", "save_train_state", "load_train_state", "read_run_info",
           "RUN_INFO_FILE", "WEIGHTS_FILE", "TRAIN_STATE_FILE"]


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}


def save_run(run_dir: Union[str, Path], model: UNet, info: RunInfo) -> Path:
    """Write ``model``'s weights (safetensors) and ``info`` (JSON) into ``run_dir``.

    Both files are written to a temporary name and moved into place, weights
    first, so a reader never sees a half-written file.

    Example:
        >>> save_run("runs/t1-csf", model, info)  # doctest: +SKIP
    """
    from safetensors.torch import save

    if model.config != info.model:
        raise ValueError(f"model config {model.config} does not match run info {info.model}")
    run_dir = Path(run_dir)
    make_folder(run_dir)
    data = save(_state_dict_cpu(model), metadata={"format": "pt", "trmcore_version": info.trmcore_version})
    atomic_write_bytes(run_dir / WEIGHTS_FILE, data, overwrite=True)
    write_run_info(run_dir, info)
    return run_dir


def load_run(run_dir: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[UNet, RunInfo]:
    """Load ``(model, info)`` from a run folder; the model is in eval mode on ``device``.

    A run fine-tuned from an nnU-Net or MONAI source (run.json ``network``) gives a
    :class:`trmcore.models.foreign.ForeignNet` with the same interface.
    """

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir}: run folder has no {WEIGHTS_FILE}")
    if info.network is not None:  # fine-tuned from an nnU-Net or MONAI source: that network, rebuilt without code
        from trmcore.models.foreign import ForeignNet

        model = ForeignNet.from_record(info.network, info.model, run_dir / RUN_INFO_FILE)
    else:
        model = UNet(info.model)
    state = load_weights(check_readable(weights))  # safetensors words "permission denied" as "No such file"
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not match the model in {RUN_INFO_FILE}: {err}") from err
    return model.to(device).eval(), info


def load_weights(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; UnsafeFileError naming it when it is not one (e.g. a renamed pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{path}: not a readable safetensors file ({detail})") from None
    check_finite_weights(state, path)
    return state


def check_finite_weights(state: dict[str, torch.Tensor], path: Union[str, Path]) -> None:
    """ValueError naming ``path`` and the first tensor when a floating-point weight is NaN or infinite.

    A diverged run (or a damaged file) would otherwise predict garbage: all background, Dice 0, exit 0.
    """
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{path}: weight tensor {name!r} holds {bad} NaN or infinite value(s) of "
                             f"{tensor.numel()}: the run diverged or the file is damaged; retrain or restore it")


_NDARRAY = "__ndarray__"


def _plain(value: Any) -> Any:
    """``value`` with NumPy arrays and scalars turned into tensors / Python numbers (weights_only-loadable)."""
    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(value.astype(np.int64) if value.dtype.kind in "iu" else value.copy()),
                "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict):
        if _NDARRAY in value and set(value) == {_NDARRAY, "dtype"}:
            return value[_NDARRAY].numpy().astype(np.dtype(value["dtype"]))
        return {k: _from_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_from_plain(v) for v in value)
    return value


def save_train_state(run_dir: Union[str, Path], state: dict[str, Any]) -> Path:
    """Atomically write the resumable training state (tensors, NumPy arrays and plain values)."""
    buffer = io.BytesIO()
    torch.save(_plain(state), buffer)
    path = Path(run_dir) / TRAIN_STATE_FILE
    atomic_write_bytes(path, buffer.getvalue(), overwrite=True)
    return path


def load_train_state(run_dir: Union[str, Path]) -> dict[str, Any]:
    """The state :func:`save_train_state` wrote, loaded without running code (``weights_only=True``).

    UnsafeFileError naming the file when it holds anything but tensors and plain values, or is damaged.
    """
    path = Path(run_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no {TRAIN_STATE_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UnsafeFileError(f"{path}: refused: it holds objects other than tensors and plain values "
                              "(loading it could run code); it was not written by trmcore") from None
    except Exception as err:  # torch raises many types for damaged files
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnsafeFileError(f"{path}: cannot read the resume state ({type(err).__name__}: {detail})") from None
    if not isinstance(state, dict) or "iteration" not in state:
        raise UnsafeFileError(f"{path}: not a trmcore resume state")
    return _from_plain(state)


def remove_train_state(run_dir: Union[str, Path]) -> None:
    path = Path(run_dir) / TRAIN_STATE_FILE
    if path.exists():
        os.unlink(path)

"""Saving and loading runs: RUN/model.safetensors + RUN/run.json, written atomically.

The resumable training state (optimizer, RNG states, iteration, metric
history) lives next to them in RUN/train_state.pt so ``--resume`` continues a
run exactly.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Tuple, Union

import torch

from trmcore.models.unet import UNet
from trmcore.training.runinfo import (RUN_INFO_FILE, WEIGHTS_FILE, RunInfo, atomic_write_bytes, read_run_info,
                                      write_run_info)

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
    run_dir.mkdir(parents=True, exist_ok=True)
    data = save(_state_dict_cpu(model), metadata={"format": "pt", "trmcore_version": info.trmcore_version})
    atomic_write_bytes(run_dir / WEIGHTS_FILE, data)
    write_run_info(run_dir, info)
    return run_dir


def load_run(run_dir: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[UNet, RunInfo]:
    """Load ``(model, info)`` from a run folder; the model is in eval mode on ``device``."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{run_dir}: run folder has no {WEIGHTS_FILE}")
    model = UNet(info.model)
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not match the model in {RUN_INFO_FILE}: {err}") from err
    return model.to(device).eval(), info


def save_train_state(run_dir: Union[str, Path], state: dict[str, Any]) -> Path:
    """Atomically write the resumable training state (any torch.save-able dict)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / TRAIN_STATE_FILE
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_train_state(run_dir: Union[str, Path]) -> dict[str, Any]:
    path = Path(run_dir) / TRAIN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no {TRAIN_STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_train_state(run_dir: Union[str, Path]) -> None:
    path = Path(run_dir) / TRAIN_STATE_FILE
    if path.exists():
        os.unlink(path)

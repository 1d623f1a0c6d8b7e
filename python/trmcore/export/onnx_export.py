"""Export a trained run's network to ONNX with the metadata inference needs.

The graph is the network only (``image [N, Cin, H, W] -> logits [N, C, H, W]``,
batch, height and width dynamic); normalisation, slicing, padding and argmax
stay in :mod:`trmcore.infer`, driven by the metadata embedded in the file.

The export uses the torch.export-based exporter (``torch.onnx.export(...,
dynamo=True)``). Only if that raises does it fall back to the legacy
TorchScript exporter; the result records which one was used.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
import torch

from trmcore import __version__
from trmcore.extras import MissingExtraError, missing_message, missing_modules
from trmcore.fileio import atomic_write_bytes, check_output_file
from trmcore.infer.metadata import (DEFAULT_OPSET, MIN_OPSET, REFERENCE_PRECISION, ModelMetadata, PrecisionEntry,
                                    Provenance)
from trmcore.export.precision import DEFAULT_MIN_DICE, Agreement, BuildContext, precision_entry, reduce_precision
from trmcore.training.checkpoint import load_run
from trmcore.training.runinfo import RUN_INFO_FILE, WEIGHTS_FILE, RunInfo

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# The default tolerance of each precision is its registry entry's (trmcore.infer.metadata.PRECISIONS).
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}

logger = logging.getLogger(__name__)


class ExportVerificationError(RuntimeError):
    """onnxruntime's logits differ from torch's by more than the tolerance."""


@dataclass
class ExportResult:
    """What ``export_run`` wrote and how well it matched torch."""

    path: Path
    metadata: ModelMetadata
    exporter: str
    opset: int
    max_abs_diff: float
    tolerance: float
    checked_shapes: List[Tuple[int, int, int, int]]
    precision: str = REFERENCE_PRECISION
    agreement: Optional[Agreement] = None  # labels against float32 (reduced precisions only)
    # False when onnxruntime is not installed (a float32 export from `trmcore[train]` alone): the graph passed
    # onnx's checker but its logits were not compared with torch's (max_abs_diff and tolerance are NaN then).
    verified: bool = True


def metadata_from_run(info: RunInfo, run_dir: Union[str, Path], exporter: str,
                      precision: str = REFERENCE_PRECISION) -> ModelMetadata:
    """The :class:`ModelMetadata` of a run (channels, labels, preprocessing, provenance)."""
    if info.divisor % info.model.divisor:
        raise ValueError(f"run {run_dir}: size divisor {info.divisor} is not a multiple of the U-Net's "
                         f"2**depth = {info.model.divisor}")
    return ModelMetadata(
        channels=list(info.channels), label_names=list(info.label_names),
        label_values=[int(v) for v in info.label_values], normalization=info.normalization,
        orientation=info.orientation, spacing=info.spacing,
        axis=int(info.axis), divisor=int(info.divisor), dtype=precision_entry(precision).dtype, precision=precision,
        mirror_axes=None if info.mirror_axes is None else [int(a) for a in info.mirror_axes],
        preprocessing=info.pipeline().record() if info.orientation is not None else None,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        provenance=Provenance(
            run=Path(run_dir).resolve().name, source_model=info.source, method=info.method,
            trmcore_version=info.trmcore_version or __version__, exporter=exporter,
            exported_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))


def export_run(run_dir: Union[str, Path], out_path: Union[str, Path],
               opset: int = DEFAULT_OPSET, tolerance: Optional[float] = None, overwrite: bool = False,
               seed: int = 0, precision: str = REFERENCE_PRECISION, min_dice: float = DEFAULT_MIN_DICE,
               data_dir: Optional[Union[str, Path]] = None) -> ExportResult:
    """Export ``run_dir``'s model to ``out_path`` (.onnx), verified against torch.

    Args:
        run_dir: a run folder (``model.safetensors`` + ``run.json``).
        out_path: the ONNX file to write (atomically; refused if it exists
            unless ``overwrite``).
        precision: a name of :data:`trmcore.infer.metadata.PRECISIONS`: ``"fp32"``
            (default), ``"fp16"`` (network, inputs and outputs in float16;
            :class:`trmcore.infer.Segmenter` casts) or ``"int8"`` (onnxruntime
            static quantisation calibrated on the run's training slices). A
            reduced precision is written only if its labels agree with the
            float32 model's on the run's validation cases (per-class Dice >=
            ``min_dice``); see :mod:`trmcore.export.precision`.
        min_dice: the agreement threshold (default 0.99).
        data_dir: the run's dataset folder when it moved (default: run.json's ``data``).
        opset: ONNX opset, >= 17.
        tolerance: max allowed |onnxruntime - torch float32| on the logits,
            relative to max(1, max |logit|); default: the precision's entry (1e-4 float32, 2e-2 float16).
        seed: seed of the random verification inputs.

    Without onnxruntime (``trmcore[train]`` alone) a float32 export is
    written unverified (``ExportResult.verified`` False; the graph still
    passes onnx's checker); a reduced precision needs onnxruntime.

    Raises:
        ExportVerificationError: onnxruntime and torch disagree beyond the tolerance
            (nothing is written then).
        MissingExtraError: a reduced precision without onnxruntime (before any work).
        PrecisionAgreementError: the reduced-precision labels disagree with
            float32 below ``min_dice`` (nothing is written then).

    Example:
        >>> result = export_run("runs/t1-csf", "t1-csf.onnx")   # doctest: +SKIP
        >>> result.max_abs_diff < result.tolerance              # doctest: +SKIP
        True
    """
    out_path = Path(out_path)
    entry = precision_entry(precision)
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET}, got {opset}")
    if tolerance is not None and not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    if out_path.suffix != ".onnx":
        raise ValueError(f"output must be an .onnx file, got {out_path}")
    no_runtime = missing_modules("cpu")  # onnxruntime: verifies the export, quantises and checks reduced precisions
    if no_runtime and not entry.is_reference:
        raise MissingExtraError(missing_message("cpu", no_runtime, f"precision {precision}"))
    inputs = [Path(run_dir) / RUN_INFO_FILE, Path(run_dir) / WEIGHTS_FILE]
    check_output_file(out_path, overwrite=overwrite, inputs=inputs)
    model, info = load_run(run_dir, device="cpu")
    model.eval()
    divisor = info.divisor
    example = _random_input(2, info.model.in_channels, 4 * divisor, 3 * divisor, seed)

    dtype = _TORCH_DTYPES[entry.dtype]
    network = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    proto, exporter = _export_proto(network, example.to(dtype), opset)
    metadata = metadata_from_run(info, run_dir, exporter, precision)
    _name_dynamic_dims(proto)
    _label(proto, metadata)

    if tolerance is None:
        tolerance = entry.tolerance
    shapes = [(3, info.model.in_channels, 5 * divisor, 2 * divisor), (1, info.model.in_channels, 2 * divisor, 7 * divisor)]
    data = proto.SerializeToString()
    if no_runtime:  # nothing to run the graph with: write it unverified, the caller says so
        atomic_write_bytes(out_path, data, overwrite=overwrite, inputs=inputs)
        return ExportResult(out_path, metadata, exporter, opset, float("nan"), float("nan"), [], precision,
                            verified=False)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / "model.onnx"
        candidate.write_bytes(data)
        max_diff, scale = _compare_with_torch(model, candidate, shapes, entry, seed + 1)
    allowed = tolerance * max(1.0, scale)
    if not max_diff <= allowed:
        raise ExportVerificationError(
            f"onnxruntime logits differ from torch by {max_diff:.3g} (allowed {allowed:.3g}); "
            f"nothing written to {out_path}")
    agreement = None
    if not entry.is_reference:
        # the float32 graph the reduced one must agree with (a build function makes its graph from it)
        reference = proto if dtype == torch.float32 else _export_proto(model, example, opset)[0]
        reduced, agreement = reduce_precision(reference.SerializeToString(), entry,
                                              BuildContext(data, info, run_dir, data_dir, INPUT_NAME), min_dice)
        if entry.build is not None:
            built = onnx.load_from_string(reduced)
            _label(built, metadata)
            data = built.SerializeToString()
    atomic_write_bytes(out_path, data, overwrite=overwrite, inputs=inputs)
    return ExportResult(out_path, metadata, exporter, opset, max_diff, allowed, shapes, precision, agreement)


def _label(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Embed ``metadata`` (replacing any props the graph carries) and check the model."""
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"trmcore 2D U-Net ({metadata.precision}): {','.join(metadata.channels)} -> "
                        f"{','.join(metadata.label_names)}; run with trmcore.infer.Segmenter or `trm predict`")
    onnx.checker.check_model(proto)


def _random_input(n: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, height, width, generator=generator)


def _export_proto(network: torch.nn.Module, example: torch.Tensor, opset: int) -> Tuple[onnx.ModelProto, str]:
    """(ModelProto, exporter description); dynamo exporter first, legacy only if it fails."""
    dim = torch.export.Dim.DYNAMIC
    try:
        with _quiet():
            program = torch.onnx.export(
                network, (example,), dynamo=True, opset_version=opset, external_data=False,
                dynamic_shapes={"x": {0: dim, 2: dim, 3: dim}}, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], verbose=False, optimize=True)
        return program.model_proto, f"torch {torch.__version__} torch.onnx.export(dynamo=True)"
    except Exception as err:  # the exporter raises many types; the fallback below says why
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    warnings.warn(f"the torch.export-based ONNX exporter failed ({reason}); "
                  "falling back to the legacy TorchScript exporter", RuntimeWarning)
    buffer = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            network, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                                                      OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}})
    return onnx.load_from_string(buffer.getvalue()), f"torch {torch.__version__} legacy TorchScript exporter"


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and registry warnings (errors still raise)."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _name_dynamic_dims(proto: onnx.ModelProto) -> None:
    """Give the exporter's symbolic dims (``s53``) readable names: batch, height, width."""
    renames = {}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for index, name in ((0, "batch"), (2, "height"), (3, "width")):
            if index < len(dims) and dims[index].dim_param:
                renames.setdefault(dims[index].dim_param, name)
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _compare_with_torch(model: torch.nn.Module, onnx_path: Path, shapes: Sequence[Tuple[int, int, int, int]],
                        entry: PrecisionEntry, seed: int) -> Tuple[float, float]:
    """(max |onnxruntime - torch float32| over ``shapes``, max |torch logit|)."""
    from trmcore.infer.runtime import create_session  # onnxruntime: only when it is installed

    session = create_session(onnx_path, providers="cpu")
    input_dtype = np.dtype(entry.dtype)
    max_diff, scale = 0.0, 0.0
    for i, shape in enumerate(shapes):
        x = _random_input(*shape, seed=seed + i)
        with torch.inference_mode():
            expected = model(x).numpy()
        (got,) = session.run(None, {INPUT_NAME: x.numpy().astype(input_dtype)})
        if got.shape != expected.shape:
            raise ExportVerificationError(f"onnxruntime output shape {got.shape} != torch {expected.shape} "
                                          f"for input {shape}")
        diff = np.abs(got.astype(np.float32) - expected)
        max_diff = max(max_diff, float(np.nanmax(diff)) if np.isfinite(diff).all() else float("inf"))
        scale = max(scale, float(np.abs(expected).max()))
    return max_diff, scale

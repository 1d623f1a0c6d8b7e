"""Reduced-precision exports: the build functions of the precisions, and the label-agreement gate.

The precisions themselves are entries of :data:`trmcore.infer.metadata.PRECISIONS`
(dtype, tolerance, build function): adding one is one entry there, plus its
build function here when the exported graph is not the final one (int8).

A reduced-precision model is written only if its labels agree with the
float32 model's on the run's own data: Dice of the argmax labels, per
foreground class, over every voxel of the non-empty slices of the run's
validation cases (its training cases when it has none), each class's Dice
at least ``min_dice``.

int8 is onnxruntime's static quantisation (``quantize_static``, QDQ format,
uint8 activations, int8 per-channel weights, MinMax calibration) after its
pre-processing (BatchNorm folded into the convolutions), calibrated on the
run's own training slices. The graph keeps float32 inputs and outputs, and
its first and last convolutions stay float32 (see :func:`_edge_nodes`).
"""

from __future__ import annotations

import importlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from trmcore.infer.metadata import DEFAULT_MIN_DICE, PRECISIONS, PrecisionEntry

__all__ = ["DEFAULT_MIN_DICE", "Agreement", "BuildContext", "PrecisionAgreementError", "reduce_precision",
           "quantize_int8", "build_int8", "label_agreement", "precision_entry"]
#: Training slices used to calibrate int8 activation ranges (evenly spread over the run's slices).
CALIBRATION_SLICES = 64
_BATCH = 8


class PrecisionAgreementError(RuntimeError):
    """The reduced-precision model's labels disagree with the float32 model's beyond the threshold."""


@dataclass
class Agreement:
    """Label agreement of a reduced-precision model with the float32 model.

    ``dice[name]``: Dice of class ``name``'s voxels (both models' argmax);
    classes neither model predicts are left out. ``voxels``: voxels compared;
    ``equal``: share of them with the same label.
    """

    cases: List[str]
    voxels: int
    equal: float
    dice: Dict[str, float] = field(default_factory=dict)
    on_validation: bool = True

    @property
    def min_dice(self) -> float:
        return min(self.dice.values()) if self.dice else 1.0

    def describe(self) -> str:
        where = "validation" if self.on_validation else "training (the run has no validation cases)"
        per_class = ", ".join(f"{name} {value:.4f}" for name, value in self.dice.items())
        return (f"labels against float32 on {len(self.cases)} {where} case(s), {self.voxels} voxels: "
                f"Dice {per_class}; min {self.min_dice:.4f}; equal labels {self.equal:.5f}")


def precision_entry(precision: str) -> PrecisionEntry:
    """The registry entry of ``precision``; ValueError naming the known ones for any other."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@dataclass
class BuildContext:
    """What a precision's build function may use besides the float32 graph.

    ``exported``: the bytes of the graph exported in the precision's dtype; ``info``/``run_dir``:
    the run (RunInfo and folder); ``data``: its dataset folder when it moved (None: run.json's);
    ``input_name``: the graph's input.
    """

    exported: bytes
    info: Any
    run_dir: Union[str, Path]
    data: Optional[Union[str, Path]]
    input_name: str


def build_int8(reference: bytes, context: BuildContext) -> bytes:
    """The int8 graph: ``reference`` quantised, calibrated on the run's training slices."""
    train = run_volumes(context.info, context.run_dir, context.data, "train")
    return quantize_int8(reference, calibration_slices(train, context.info.axis, context.info.divisor),
                         context.input_name)


def run_volumes(info, run_dir: Union[str, Path], data: Optional[Union[str, Path]], which: str):
    """The run's ``which`` ("train" or "val") cases as normalised volumes, loaded from its dataset.

    ``data`` overrides the dataset folder recorded in run.json (a moved dataset).
    """
    from trmcore.data import load_task_volumes, parse_task

    cases = list(info.train_cases if which == "train" else info.val_cases)
    root = data if data is not None else info.data
    if root is None or not cases:
        raise ValueError(f"run {run_dir} records no dataset or no {'training' if which == 'train' else 'validation'} "
                         "cases (run.json 'data', 'train_cases', 'val_cases'); a reduced-precision export needs the "
                         "run's data to calibrate and to check agreement with float32: export a run made by "
                         "`trm train`/`trm finetune`, or pass --data")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset {root} of run {run_dir} not found; pass --data DATASET")
    task = parse_task(list(info.channels), list(info.label_names[1:]))
    # On the run's own grid and normalisation, as training and `trm predict` see them (not the defaults:
    # the median spacing of these cases and zscore-foreground could differ from the run's).
    volumes, _ = load_task_volumes(root, task, cases=cases, progress=False, geometry=info.geometry(f"run {run_dir}"),
                                   normalization=info.normalization, axis=info.axis)
    return volumes


def calibration_slices(volumes, axis: int, divisor: int, count: int = CALIBRATION_SLICES) -> np.ndarray:
    """float32 ``[N, Cin, H, W]``: up to ``count`` non-empty training slices, evenly spread, padded."""
    from trmcore.data import volumes_to_slices

    images = volumes_to_slices(volumes, axis=axis, divisor=divisor, skip_empty=True).images
    pick = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(np.int64))
    return np.ascontiguousarray(images[pick], dtype=np.float32)


def quantize_int8(fp32_model: bytes, slices: np.ndarray, input_name: str) -> bytes:
    """An int8 (QDQ) version of the float32 ONNX model ``fp32_model``, calibrated on ``slices``."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: slices[i:i + _BATCH]} for i in range(0, len(slices), _BATCH)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(fp32_model)
        # symbolic shape inference cannot resolve the dynamic height/width; onnx's own inference suffices
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=_edge_nodes(prepared))
        return quantized.read_bytes()


def _edge_nodes(model_path: Path) -> List[str]:
    """The nodes reading the graph input and writing its output: they stay float32.

    The first convolution sees the z-scored intensities (8 bits would round them
    to ~0.04 standard deviations) and the head writes the logits (8 bits would
    make near ties of the argmax exact ties); both are cheap (few channels).
    Measured on a phantom model: per-class Dice against float32 0.73 -> 0.90
    for the thinnest class.
    """
    import onnx

    graph = onnx.load(str(model_path)).graph
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    return [node.name for node in graph.node if inputs & set(node.input) or outputs & set(node.output)]


def label_agreement(reference: bytes, candidate: bytes, volumes, label_names: Sequence[str], axis: int,
                    divisor: int, on_validation: bool = True) -> Agreement:
    """Compare the argmax labels of two ONNX models (bytes) on the non-empty slices of ``volumes``."""
    from trmcore.data import unpad, volumes_to_slices
    from trmcore.infer.runtime import create_session  # onnxruntime, imported only by reduced precisions

    num_classes = len(label_names)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = []
        for name, data in (("reference.onnx", reference), ("candidate.onnx", candidate)):
            (Path(tmp) / name).write_bytes(data)
            sessions.append(create_session(Path(tmp) / name, providers="cpu"))
        dtypes = [np.float16 if s.get_inputs()[0].type == "tensor(float16)" else np.float32 for s in sessions]
        for volume in volumes:
            slice_set = volumes_to_slices([volume], axis=axis, divisor=divisor, skip_empty=True)
            pad = slice_set.pads[0]
            for start in range(0, len(slice_set.images), _BATCH):
                batch = slice_set.images[start:start + _BATCH]
                labels = [unpad(s.run(None, {s.get_inputs()[0].name: batch.astype(d)})[0], pad).argmax(axis=1)
                          for s, d in zip(sessions, dtypes)]
                confusion += np.bincount(labels[0].ravel() * num_classes + labels[1].ravel(),
                                         minlength=num_classes ** 2).reshape(num_classes, num_classes)
    total = int(confusion.sum())
    dice = {}
    for k in range(1, num_classes):
        both = confusion[k, :].sum() + confusion[:, k].sum()
        if both:
            dice[label_names[k]] = float(2 * confusion[k, k] / both)
    return Agreement([v.case_id for v in volumes], total, float(np.trace(confusion) / max(1, total)), dice,
                     on_validation)


def reduce_precision(fp32_model: bytes, entry: PrecisionEntry, context: BuildContext,
                     min_dice: float) -> Tuple[bytes, Agreement]:
    """The ``entry`` model's bytes and its agreement with ``fp32_model``; raises if below ``min_dice``.

    The model is ``entry.build(fp32_model, context)``, or the exported graph ``context.exported``
    when the precision has no build function.
    """
    if not 0 < min_dice <= 1:
        raise ValueError(f"min_dice must be in (0, 1], got {min_dice!r}")
    candidate = context.exported
    if entry.build is not None:
        module, _, function = entry.build.partition(":")
        candidate = getattr(importlib.import_module(module), function)(fp32_model, context)
    info, precision = context.info, entry.name
    volumes = run_volumes(info, context.run_dir, context.data, "val" if bool(info.val_cases) else "train")
    on_validation = bool(info.val_cases)
    agreement = label_agreement(fp32_model, candidate, volumes, info.label_names, info.axis, info.divisor,
                                on_validation)
    if agreement.min_dice < min_dice:
        raise PrecisionAgreementError(f"{precision}: {agreement.describe()} -- below the required Dice {min_dice}")
    return candidate, agreement

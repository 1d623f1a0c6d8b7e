"""One preprocessing pipeline: what a 2D model's input is made of, for training and serving alike.

A volume (``[Cin, X, Y, Z]`` channels read as float32 and an affine) goes through small steps:

============  ===============================================  =======================================
step          does                                             inverse (maps back to the stored grid)
============  ===============================================  =======================================
``reorient``  permutes and flips the voxel axes to the model's  the reverse permutation (lossless)
              axis codes (``RAS``)
``resample``  resamples the two in-plane axes to the model's    resampling back (``linear`` for maps,
              spacing (images linearly, labels as one-hot)      ``label`` for labels)
``crop``      plans the slices and the in-plane window with     voxels outside the window get background
              foreground (``trm predict``; not recorded)        (:func:`trmcore.infer.crop.outside_logits`)
``normalize`` z-scores each channel (``trmcore.data.preprocess``) none: maps are not intensities
``slice``     cuts 2D slices along the model's axis, zero-pads  unpads and stacks the slices back
              them to a multiple of the divisor
============  ===============================================  =======================================

The *recorded* steps (all but ``crop``, a serving option) with their
parameters are the model's preprocessing: ``run.json`` and the ONNX metadata
keep them as a list (``"preprocessing": [{"step": "reorient", "orientation":
"RAS"}, ...]``, :meth:`Pipeline.record`) and every user rebuilds the pipeline
from it (:meth:`Pipeline.from_record`); records from before the list are
built from their ``orientation``, ``spacing``, ``axis``, ``normalization`` and
``divisor`` fields (:meth:`Pipeline.standard`). Training, evaluation and risk
maps (:func:`trmcore.data.volumes.load_task_volumes`, :func:`trmcore.data.slices.volumes_to_slices`)
and prediction (:class:`trmcore.infer.Segmenter`, :func:`trmcore.infer.predict_case`)
run the same step objects, so the network sees bit-identical inputs
(tests/deploy/test_train_serve_identity.py).

A step is a small frozen dataclass registered in :data:`STEPS` (``name ->
class``) with ``apply(sample)`` (which changes the :class:`Sample` and
returns what its inverse needs), ``invert(data, context, mode)`` and
``to_dict()``. NumPy + nibabel only: inference imports it, never torch.

Example:
    >>> import numpy as np
    >>> from trmcore.data.geometry import Geometry
    >>> pipeline = Pipeline.standard(Geometry("RAS", (1.0, 1.0, 3.0)), "zscore-foreground", divisor=16)
    >>> [step["step"] for step in pipeline.record()]
    ['reorient', 'resample', 'normalize', 'slice']
    >>> las = np.diag([-0.5, 1.0, 3.0, 1.0])
    >>> sample = pipeline.apply(Sample.of(np.ones((1, 8, 5, 3), np.float32), las))
    >>> sample.image.shape, sample.grid.working_shape                 # x: 8 voxels of 0.5 mm -> 4 of 1 mm
    ((1, 4, 5, 3), (4, 5, 3))
    >>> pipeline.invert(np.zeros((2, 4, 5, 3), np.float32), sample).shape   # class maps back on the stored grid
    (2, 8, 5, 3)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Type

import numpy as np

from trmcore.limits import check_divisor
from trmcore.schema import Build, List as JsonList, Object, Str, dataclass_schema, validate

from .crop import CropPlan, crop_margin_or_none, plan_crop, plan_full, volume_foreground
from .geometry import (GRID_BYTES_PER_VOXEL, NATIVE, SPACING_RTOL, Geometry, GridMap, check_affine, plan_reorient,
                       plan_resample)
from .preprocess import DEFAULT_NORMALIZATION, NORMALIZATIONS, Pad, apply_pad, normalize, padding_for

#: The registry of steps: ``name -> Step subclass`` (:func:`register_step`).
STEPS: Dict[str, Type["Step"]] = {}
#: Most steps a recorded pipeline may hold (a bound for records read from files).
MAX_STEPS = 16


def register_step(cls: Type["Step"]) -> Type["Step"]:
    """Class decorator: add a :class:`Step` subclass to :data:`STEPS` under its ``name``."""
    if not cls.name or cls.name in STEPS:
        raise ValueError(f"step name {cls.name!r} is empty or already registered")
    STEPS[cls.name] = cls
    return cls


@dataclass
class Sample:
    """One volume on its way through a pipeline.

    Attributes:
        image: float32 ``[Cin, X, Y, Z]`` on the current grid.
        affine: float64 ``[4, 4]`` voxel-to-world of the current grid.
        label: integer ``[X, Y, Z]`` on the current grid, or None.
        source: names the volume in errors (a file, a case).
        grid: the stored grid -> current grid map so far (identity at first).
        crop: where the network runs (the ``crop`` step), None for every slice whole.
        bytes_per_voxel: the memory budget of a resampled voxel (:func:`trmcore.data.geometry.plan_grid`).
        applied: ``(step, context)`` for each step applied, in order (what :meth:`Pipeline.invert` undoes).
    """

    image: np.ndarray
    affine: np.ndarray
    label: Optional[np.ndarray] = None
    source: object = "volume"
    grid: Optional[GridMap] = None
    crop: Optional[CropPlan] = None
    bytes_per_voxel: int = GRID_BYTES_PER_VOXEL
    applied: List[Tuple["Step", Any]] = field(default_factory=list)

    @classmethod
    def of(cls, image: np.ndarray, affine: np.ndarray, label: Optional[np.ndarray] = None, source: object = "volume",
           bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> "Sample":
        """A sample on its stored grid: ``image`` float32 ``[Cin, X, Y, Z]`` (cast if needed), ``affine`` checked."""
        image = np.asarray(image)
        if image.ndim != 4:
            raise ValueError(f"{source}: expected channels [Cin, X, Y, Z], got shape {image.shape}")
        image = image.astype(np.float32, copy=False)
        affine = check_affine(affine, source)
        shape = tuple(int(n) for n in image.shape[1:])
        return cls(image, affine, label, source, GridMap(shape, affine, None, shape, shape, affine),
                   None, int(bytes_per_voxel))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape[1:])


class Step:
    """One preprocessing step (a frozen dataclass subclass registered with :func:`register_step`).

    ``geometric``: the step changes the grid (its inverse maps outputs back);
    ``recorded``: the step is part of a model's preprocessing (run.json, ONNX metadata), not a
    choice of the one running it.
    """

    name: ClassVar[str] = ""
    geometric: ClassVar[bool] = False
    recorded: ClassVar[bool] = True

    def apply(self, sample: Sample) -> Any:
        """Change ``sample`` in place; return what :meth:`invert` needs (None when nothing)."""
        raise NotImplementedError

    def invert(self, data: np.ndarray, context: Any, mode: str = "linear") -> np.ndarray:
        """Map ``data`` ``[..., X', Y', Z']`` on the step's output grid back to its input grid (identity here)."""
        return data

    def to_dict(self) -> Dict[str, Any]:
        """``{"step": name, **parameters}``: JSON-ready (lists, not tuples)."""
        out: Dict[str, Any] = {"step": self.name}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def step_from_dict(record: Dict[str, Any]) -> Step:
    """The step a :meth:`Step.to_dict` record describes; ValueError for an unknown step or bad parameters."""
    record = dict(record)
    name = record.pop("step", None)
    if name not in STEPS:
        raise ValueError(f"unknown preprocessing step {name!r}; known: {', '.join(STEPS)}")
    cls = STEPS[name]
    if not cls.recorded:
        raise ValueError(f"preprocessing step {name!r} is chosen when running a model, it is never recorded")
    names = [f.name for f in dataclasses.fields(cls)]
    return validate(record, dataclass_schema(cls, required=names, extra="forbid"), f"step {name!r}")


@register_step
@dataclass(frozen=True)
class Reorient(Step):
    """Permute and flip the voxel axes to ``orientation`` (axis codes such as ``RAS``): lossless."""

    name: ClassVar[str] = "reorient"
    geometric: ClassVar[bool] = True
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        codes = Geometry(self.orientation).orientation  # the one check of axis codes
        if codes == NATIVE:
            raise ValueError("reorient needs axis codes such as RAS; 'native' is a pipeline without this step")
        object.__setattr__(self, "orientation", codes)

    def plan(self, shape: Sequence[int], affine: np.ndarray, source: object = "volume",
             bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> GridMap:
        return plan_reorient(shape, affine, self.orientation, source)

    def apply(self, sample: Sample) -> GridMap:
        return _apply_grid(sample, self.plan(sample.shape, sample.affine, sample.source), "nearest")

    def invert(self, data: np.ndarray, context: GridMap, mode: str = "linear") -> np.ndarray:
        return context.to_native(data, mode)


@register_step
@dataclass(frozen=True)
class Resample(Step):
    """Resample the in-plane axes (all but ``axis``) to ``spacing`` mm where they differ by more than ``tolerance``.

    Images linearly, labels through interpolated one-hot maps; the slice axis is never resampled.
    """

    name: ClassVar[str] = "resample"
    geometric: ClassVar[bool] = True
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    axis: int = 2
    tolerance: float = SPACING_RTOL

    def __post_init__(self) -> None:
        checked = Geometry("RAS", self.spacing, self.axis, self.tolerance)  # the one check of these values
        object.__setattr__(self, "spacing", checked.spacing)
        object.__setattr__(self, "tolerance", float(self.tolerance))

    def plan(self, shape: Sequence[int], affine: np.ndarray, source: object = "volume",
             bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> GridMap:
        return plan_resample(shape, affine, self.spacing, self.axis, self.tolerance, source, bytes_per_voxel)

    def apply(self, sample: Sample) -> GridMap:
        grid = self.plan(sample.shape, sample.affine, sample.source, sample.bytes_per_voxel)
        return _apply_grid(sample, grid, "label")

    def invert(self, data: np.ndarray, context: GridMap, mode: str = "linear") -> np.ndarray:
        return context.to_native(data, mode)


@register_step
@dataclass(frozen=True)
class Crop(Step):
    """Plan where the network runs: the slices with foreground and an aligned in-plane window (+ ``margin``).

    Foreground is what ``normalization`` computes its statistics over, on the raw intensities (so
    this step runs before ``normalize``). Not recorded: ``trm predict --crop-margin`` chooses it.
    Its inverse is in the slice step: :meth:`Slice.paste` writes only the window, the rest keeps what the
    caller filled it with (background: :func:`trmcore.infer.crop.outside_logits`).
    """

    name: ClassVar[str] = "crop"
    recorded: ClassVar[bool] = False
    margin: int = 8
    normalization: str = DEFAULT_NORMALIZATION
    axis: int = 2
    divisor: int = 16

    def __post_init__(self) -> None:
        crop_margin_or_none(self.margin)
        Normalize(self.normalization)
        Slice(self.axis, self.divisor)

    def apply(self, sample: Sample) -> CropPlan:
        sample.crop = plan_crop(volume_foreground(sample.image, self.normalization), self.axis, self.divisor,
                                self.margin)
        return sample.crop


@register_step
@dataclass(frozen=True)
class Normalize(Step):
    """Normalise each channel (``method``, one of :data:`trmcore.data.preprocess.NORMALIZATIONS`): float32."""

    name: ClassVar[str] = "normalize"
    method: str = DEFAULT_NORMALIZATION

    def __post_init__(self) -> None:
        if self.method not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {self.method!r}; known: {', '.join(NORMALIZATIONS)}")

    def apply(self, sample: Sample) -> None:
        sample.image = np.stack([normalize(channel, self.method) for channel in sample.image]).astype(
            np.float32, copy=False)


@register_step
@dataclass(frozen=True)
class Slice(Step):
    """Cut 2D slices along ``axis`` (a slice is the volume with that axis removed), zero-padded to ``divisor``.

    The padding is centred, the odd pixel after (:func:`trmcore.data.preprocess.padding_for`).
    ``apply`` plans the slices (every one, or the crop's); :meth:`cut` makes them, batch by batch.
    """

    name: ClassVar[str] = "slice"
    axis: int = 2
    divisor: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.axis, bool) or self.axis not in (0, 1, 2):
            raise ValueError(f"slice axis must be 0, 1 or 2, got {self.axis!r}")
        object.__setattr__(self, "divisor", check_divisor(self.divisor, "size divisor"))

    def plan(self, shape: Sequence[int]) -> CropPlan:
        """Every slice, the whole plane."""
        return plan_full(shape, self.axis, self.divisor)

    def padding(self, plane: Tuple[int, int], target: Optional[Tuple[int, int]] = None) -> Pad:
        """The padding of an (H, W) plane (``target``: a common size for planes of several volumes)."""
        return padding_for(plane, self.divisor, target)

    def apply(self, sample: Sample) -> CropPlan:
        if sample.crop is None:
            sample.crop = self.plan(sample.shape)
        return sample.crop

    def cut(self, image: np.ndarray, plan: CropPlan, index: Optional[np.ndarray] = None) -> np.ndarray:
        """Padded slices ``[S, ..., H', W']`` of ``image`` ``[..., X, Y, Z]`` (leading axes carried along)
        for ``index`` (default: the plan's slices), inside the plan's window."""
        index = plan.slices if index is None else index
        lead = image.ndim - 3
        rows, cols = plan.plane()
        slices = np.moveaxis(image, lead + self.axis, 0)  # [S, ..., H, W], a view
        return apply_pad(np.ascontiguousarray(slices[index][..., rows, cols]), plan.pad)

    def paste(self, out: np.ndarray, values: np.ndarray, plan: CropPlan, index: np.ndarray) -> None:
        """Write unpadded slice values ``[B, ..., h, w]`` of ``index`` into ``out`` ``[..., X, Y, Z]`` (in place)."""
        lead = out.ndim - 3
        rows, cols = plan.plane()
        selector = [rows, cols]
        selector.insert(self.axis, index)
        out[(slice(None),) * lead + tuple(selector)] = np.moveaxis(values, 0, lead + self.axis)


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of steps; applied to a :class:`Sample`, inverted on maps, recorded as a list."""

    steps: Tuple[Step, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if len(self.steps) > MAX_STEPS:
            raise ValueError(f"a preprocessing pipeline holds at most {MAX_STEPS} steps, got {len(self.steps)}")
        names = [s.name for s in self.steps]
        for unique in ("reorient", "resample", "crop", "normalize", "slice"):
            if names.count(unique) > 1:
                raise ValueError(f"preprocessing step {unique!r} appears {names.count(unique)} times")
        if "slice" in names and names.index("slice") != len(names) - 1:
            raise ValueError("the slice step must come last")
        if "crop" in names and "normalize" in names and names.index("crop") > names.index("normalize"):
            raise ValueError("the crop step must come before normalize (it reads the raw intensities)")

    # -- building ---------------------------------------------------------------

    @classmethod
    def standard(cls, geometry: Optional[Geometry], normalization: str = DEFAULT_NORMALIZATION,
                 divisor: Optional[int] = 16, axis: Optional[int] = None) -> "Pipeline":
        """The pipeline of a run or model that records ``geometry`` and ``normalization`` as fields.

        ``geometry`` None or native: no reorient, no resample; ``spacing`` None: no resample.
        ``divisor`` None: no slice step (volumes only). ``axis`` defaults to the geometry's.
        """
        steps: List[Step] = []
        if axis is None:
            axis = 2 if geometry is None else geometry.axis
        if geometry is not None and not geometry.native:
            steps.append(Reorient(geometry.orientation))
            if geometry.spacing is not None:
                steps.append(Resample(geometry.spacing, geometry.axis, geometry.tolerance))
        steps.append(Normalize(normalization))
        if divisor is not None:
            steps.append(Slice(axis, divisor))
        return cls(tuple(steps))

    @classmethod
    def from_record(cls, record: Sequence[Dict[str, Any]]) -> "Pipeline":
        """The pipeline of a ``preprocessing`` list (:meth:`record`); ValueError naming the bad step."""
        if not isinstance(record, (list, tuple)):
            raise ValueError(f"preprocessing must be a list of steps, got {type(record).__name__}")
        steps = []
        for k, item in enumerate(record):
            if not isinstance(item, dict):
                raise ValueError(f"preprocessing[{k}] must be an object with a 'step' key")
            try:
                steps.append(step_from_dict(item))
            except ValueError as err:
                raise ValueError(f"preprocessing[{k}]: {err}") from None
        return cls(tuple(steps))

    def record(self) -> List[Dict[str, Any]]:
        """The recorded steps as JSON-ready dicts (what run.json and the ONNX metadata keep)."""
        return [step.to_dict() for step in self.steps if step.recorded]

    def step(self, name: str) -> Optional[Step]:
        """The step called ``name``, or None."""
        return next((s for s in self.steps if s.name == name), None)

    def geometric(self) -> "Pipeline":
        """The steps that change the grid (reorient, resample)."""
        return Pipeline(tuple(s for s in self.steps if s.geometric))

    def on_working_grid(self) -> "Pipeline":
        """The steps after the grid is reached (crop, normalize, slice): a model's own input preparation."""
        return Pipeline(tuple(s for s in self.steps if not s.geometric))

    def with_crop(self, margin: Optional[int]) -> "Pipeline":
        """This pipeline with a ``crop`` step of ``margin`` before ``normalize`` (None: unchanged)."""
        if crop_margin_or_none(margin) is None:
            return self
        normalize_step, slice_step = self.step("normalize"), self.step("slice")
        if normalize_step is None or slice_step is None:
            raise ValueError("cropping needs a pipeline with normalize and slice steps")
        crop = Crop(int(margin), normalize_step.method, slice_step.axis, slice_step.divisor)
        steps = [s for s in self.steps if s.name != "crop"]
        at = next(k for k, s in enumerate(steps) if s.name == "normalize")
        return Pipeline(tuple(steps[:at]) + (crop,) + tuple(steps[at:]))

    def geometry(self) -> Geometry:
        """The :class:`~trmcore.data.geometry.Geometry` the geometric steps bring volumes to."""
        reorient, resample, slicer = self.step("reorient"), self.step("resample"), self.step("slice")
        axis = slicer.axis if slicer is not None else (resample.axis if resample is not None else 2)
        if reorient is None:
            return Geometry(NATIVE, None, axis)
        if resample is None:
            return Geometry(reorient.orientation, None, axis)
        return Geometry(reorient.orientation, resample.spacing, resample.axis, resample.tolerance)

    # -- running ----------------------------------------------------------------

    def grid(self, shape: Sequence[int], affine: np.ndarray, source: object = "volume",
             bytes_per_voxel: int = GRID_BYTES_PER_VOXEL) -> GridMap:
        """The stored -> working grid map of a volume of ``shape`` with ``affine`` (planned, no data touched)."""
        shape = tuple(int(n) for n in shape[:3])
        affine = check_affine(affine, source)
        grid = GridMap(shape, affine, None, shape, shape, affine)
        for step in self.steps:
            if step.geometric:
                grid = grid.then(step.plan(grid.working_shape, grid.working_affine, source, bytes_per_voxel))
        return grid

    def apply(self, sample: Sample) -> Sample:
        """Run the steps ``sample`` has not been through yet (its ``applied`` must be a prefix of them)."""
        done = [step for step, _ in sample.applied]
        if done != list(self.steps[:len(done)]):
            raise ValueError(f"{sample.source}: went through steps {[s.name for s in done]} that do not begin the "
                             f"pipeline {[s.name for s in self.steps]}")
        for step in self.steps[len(done):]:
            sample.applied.append((step, step.apply(sample)))
        return sample

    def invert(self, data: np.ndarray, sample: Sample, mode: str = "linear") -> np.ndarray:
        """Map ``data`` ``[..., X', Y', Z']`` on ``sample``'s working grid back to its stored grid.

        ``mode``: ``"linear"`` (probabilities, maps), ``"label"`` or ``"nearest"`` (labels).
        The geometric steps' inverses run in reverse order (the others have none on maps).
        """
        for step, context in reversed(sample.applied):
            data = step.invert(data, context, mode)
        return data

    def batches(self, sample: Sample, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Yield ``(slice indices, padded slices float32 [B, Cin, H', W'])`` of a sample through ``slice``."""
        slicer = self.step("slice")
        plan = sample.crop if sample.crop is not None else slicer.plan(sample.shape)
        for start in range(0, plan.slices.size, int(batch_size)):
            index = plan.slices[start:start + int(batch_size)]
            yield index, slicer.cut(sample.image, plan, index)


def recorded_pipeline(record: Optional[Sequence[Dict[str, Any]]], orientation: Optional[str],
                      spacing: Optional[Sequence[float]], axis: int, normalization: str, divisor: int,
                      what: str = "record") -> Pipeline:
    """The pipeline a run.json or model metadata records: its ``preprocessing`` list, or (None, older
    records) the one its fields describe. A list that disagrees with the fields is a ValueError naming
    ``what``. ``orientation`` None (from before trmcore recorded geometry) or ``"native"``: no geometric steps.
    """
    geometry = (Geometry(NATIVE, None, axis) if orientation in (None, NATIVE)
                else Geometry(orientation, None if spacing is None else tuple(spacing), axis))
    fields = Pipeline.standard(geometry, normalization, divisor, axis)
    if record is None:
        return fields
    recorded = Pipeline.from_record(record)
    if recorded != fields:
        raise ValueError(f"{what}: preprocessing {recorded.record()} disagrees with its normalization, orientation, "
                         f"spacing, axis and divisor ({fields.record()}); the file was altered")
    return recorded


def _apply_grid(sample: Sample, grid: GridMap, label_mode: str) -> GridMap:
    sample.image = grid.to_working(sample.image, "linear")
    if sample.label is not None:
        sample.label = grid.to_working(sample.label, label_mode)
    sample.affine = grid.working_affine
    sample.grid = grid if sample.grid is None else sample.grid.then(grid)
    return grid


def _check_record(value: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    Pipeline.from_record(value)  # raises ValueError naming the step
    return value


#: The schema of a recorded ``preprocessing`` list (run.json, ONNX metadata): checked by building it, kept as JSON.
PIPELINE_JSON = Build(JsonList(Object({"step": Str(nonempty=True, max_len=64)}, required=("step",), extra="keep"),
                               max_len=MAX_STEPS), _check_record)

__all__ = ["MAX_STEPS", "PIPELINE_JSON", "STEPS", "Crop", "Normalize", "Pipeline", "Reorient", "Resample", "Sample",
           "Slice", "Step", "recorded_pipeline", "register_step", "step_from_dict"]

"""RunInfo: everything needed to reuse a trained model, stored as RUN/run.json.

Torch-free so that deployment and ``trm`` subcommands can read a run's
metadata without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional, Union

from trmcore import __version__
from trmcore.data.pipeline import PIPELINE_JSON, Pipeline, recorded_pipeline
from trmcore.data.preprocess import DEFAULT_NORMALIZATION, NORMALIZATIONS
from trmcore.fileio import atomic_write_bytes
from trmcore.limits import check_divisor
from trmcore.models.config import UNetConfig
from trmcore.schema import AnyJson, Build, Float, Int, List as JsonList, Map, Maybe, OneOf, Str, dataclass_schema, \
    parse_json, read_json, validate
from trmcore.training.config import AXES, TrainConfig, read_method
from trmcore.training.methods import PLAIN_METHOD

RUN_INFO_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class RunInfo:
    """Metadata of a trained model.

    ``label_names[k]`` / ``label_values[k]`` are class ``k``'s name and its value in
    the dataset's label files (a list of values for a region label) (class 0 = background, value 0). ``divisor`` is the
    padding multiple of the inputs (``2**depth``), ``axis`` the slicing axis.
    ``method`` is the loss weighting it trained with (``"vanilla"``: plain cross-entropy; run.json files
    from before that name record a plain-CE source model as null); ``source`` the run it was fine-tuned
    from (None for a model trained from scratch).
    ``orientation`` (axis codes such as ``"RAS"``, or ``"native"`` for a run
    trained with ``--no-resample``) and ``spacing`` (mm per voxel axis of that
    orientation) are the working grid the volumes were brought to; both None
    for runs from before trmcore recorded them (see :meth:`geometry`).
    ``normalization`` names the intensity normalisation
    (``trmcore.data.preprocess.NORMALIZATIONS``).
    ``loss_normalization``: the loss denominator used (normalize, min_foreground, expected_foreground;
    see trmcore.training.loss_denominator); ``risk_diagnostics``: per-class statistics of trm's risk maps
    and warnings (trmcore.training.risk_diagnostics).
    ``data_fingerprint`` is a digest of the training slices and case split,
    ``source_fingerprint`` of the source weights: ``--resume`` checks both.
    ``lr_schedule``: the learning-rate schedule as run (trmcore.training.schedule.LRSchedule.to_dict:
    kind, lr, warm-up, exponent and the segments an extended run added).
    ``augmentation``: the AugmentConfig a run trained with (trmcore.training.augment), None without;
    ``mirror_axes``: the in-plane slice axes (0, 1) the model saw flipped in training, [] for none,
    None for runs from before trmcore recorded it (they trained without flips): test-time
    mirroring (``trm predict --mirror``) uses only these.
    ``split``: how train_cases / val_cases were chosen: ``{"kind": "fold", "fold", "folds", "file"}``
    (splits_final.json, trmcore.data.splits) or ``{"kind": "val_fraction", "val_fraction", "seed"}``.
    ``preprocessing``: the recorded steps of the preprocessing pipeline with their parameters
    (trmcore.data.pipeline: reorient, resample, normalize, slice), the list export copies into the model's
    metadata; None for runs from before it, whose pipeline is built from ``normalization``,
    ``orientation``, ``spacing``, ``axis`` and ``divisor`` (:meth:`pipeline`). When present it must
    agree with those fields.
    ``network``: None for trmcore's U-Net; for a run fine-tuned from an nnU-Net or MONAI source, the
    record its network is rebuilt from (trmcore.models.foreign), and ``model`` then holds only the
    channels, classes and padding multiple of that network.
    """

    model: UNetConfig
    channels: List[str]
    label_names: List[str]
    label_values: List[Any]
    axis: int = 2
    divisor: int = 16
    normalization: str = DEFAULT_NORMALIZATION
    orientation: Optional[str] = None
    spacing: Optional[List[float]] = None
    method: str = PLAIN_METHOD
    source: Optional[str] = None
    trmcore_version: str = __version__
    site: Optional[str] = None
    data: Optional[str] = None
    training: Optional[TrainConfig] = None
    train_cases: List[str] = field(default_factory=list)
    val_cases: List[str] = field(default_factory=list)
    iterations_done: int = 0
    val_dice: Optional[float] = None
    loss_normalization: Optional[dict] = None
    risk_diagnostics: Optional[dict] = None
    data_fingerprint: Optional[str] = None
    source_fingerprint: Optional[str] = None
    lr_schedule: Optional[dict] = None
    augmentation: Optional[dict] = None
    mirror_axes: Optional[List[int]] = None
    split: Optional[dict] = None
    preprocessing: Optional[List[dict]] = None
    network: Optional[dict] = None

    def __post_init__(self) -> None:
        # A region label is several dataset values (a list); JSON has no tuples.
        self.label_values = [list(v) if isinstance(v, (list, tuple)) else int(v) for v in self.label_values]
        self.channels = list(self.channels)
        if self.spacing is not None:
            self.spacing = [float(v) for v in self.spacing]
        self.label_names = list(self.label_names)
        if len(self.label_names) != len(self.label_values):
            raise ValueError(
                f"label_names ({len(self.label_names)}) and label_values ({len(self.label_values)}) differ in length")
        if len(self.label_names) != self.model.num_classes:
            raise ValueError(
                f"{len(self.label_names)} label names for a model with {self.model.num_classes} classes")
        if len(self.channels) != self.model.in_channels:
            raise ValueError(f"{len(self.channels)} channels for a model with {self.model.in_channels} inputs")
        self.divisor = check_divisor(self.divisor, "divisor")  # slices are padded to a multiple of it
        self.pipeline()  # a recorded list must agree with the fields

    def pipeline(self) -> Pipeline:
        """The run's preprocessing (:mod:`trmcore.data.pipeline`): from ``preprocessing`` when recorded, else
        from the fields (a run without a recorded orientation: volumes as stored, as :meth:`geometry` warns)."""
        return recorded_pipeline(self.preprocessing, self.orientation, self.spacing, self.axis, self.normalization,
                                 self.divisor, "run info")

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def geometry(self, what: str = "run", resample: bool = True):
        """The :class:`trmcore.data.geometry.Geometry` volumes are brought to (a warning for old runs)."""
        from trmcore.data.geometry import recorded_geometry

        return recorded_geometry(self.orientation, self.spacing, self.axis, what, resample)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (UNetConfig, TrainConfig)):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "run info") -> "RunInfo":
        """A RunInfo from the parsed run.json ``data``, checked against :data:`RUN_JSON`."""
        return validate(data, RUN_JSON, source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "run info") -> "RunInfo":
        """A RunInfo from run.json's text; one ValueError ``"{source}: {field}: {problem}"`` when malformed."""
        return parse_json(text, source, RUN_JSON)


_LABEL_VALUE = OneOf(Int(minimum=0), JsonList(Int(minimum=0), min_len=1),
                     expected="a label value (an integer >= 0, or a non-empty list of them for a region)")
# A method name; null (run.json from before plain cross-entropy had one name) reads as "vanilla".
_METHOD = Build(Maybe(Str(nonempty=True)), read_method)
#: The schema of run.json (trmcore.schema). Field types come from the dataclasses; the bounds of the
#: model and training settings are UNetConfig's and TrainConfig's own checks, quoted with the field.
RUN_JSON = dataclass_schema(RunInfo, required=("model", "channels", "label_names", "label_values"), overrides={
    "channels": JsonList(Str(nonempty=True), min_len=1),
    "label_names": JsonList(Str(nonempty=True), min_len=2),
    "label_values": JsonList(_LABEL_VALUE, min_len=2),
    "axis": Int(min(AXES), max(AXES)),
    "divisor": Int(minimum=1),
    "normalization": Str(choices=NORMALIZATIONS),
    "orientation": Maybe(Str(nonempty=True, max_len=16)),
    "spacing": Maybe(JsonList(Float(minimum=0, exclusive_min=True), min_len=3, max_len=3)),
    "iterations_done": Int(minimum=0),
    "method": _METHOD,
    "training": Maybe(dataclass_schema(TrainConfig, overrides={"method": _METHOD})),
    "val_dice": Maybe(Float(0.0, 1.0, allow_nan=True)),  # NaN: no validation case held a class
    "train_cases": JsonList(Str()),
    "val_cases": JsonList(Str()),
    "loss_normalization": Maybe(Map(AnyJson(finite=False))),
    "risk_diagnostics": Maybe(Map(AnyJson(finite=False))),
    "preprocessing": Maybe(PIPELINE_JSON),
    "network": Maybe(Map(AnyJson())),
})


def write_run_info(run_dir: Union[str, Path], info: RunInfo) -> Path:
    path = Path(run_dir) / RUN_INFO_FILE
    atomic_write_bytes(path, (info.to_json() + "\n").encode("utf-8"), overwrite=True)
    return path


def read_run_info(run_dir: Union[str, Path]) -> RunInfo:
    """RunInfo of ``run_dir`` (torch-free). FileNotFoundError when it is not a run folder; ValueError naming
    run.json and the field when it is malformed; other OSErrors (permission denied ...) keep their cause."""
    path = Path(run_dir) / RUN_INFO_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir}: not a trmcore run folder (no {RUN_INFO_FILE})")
    try:
        return read_json(path, RUN_JSON)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: not a trmcore run folder (no {RUN_INFO_FILE})") from None


# What defines a run: a --resume must match all of these (the training settings are checked separately,
# some of them may change on resume).
RUN_IDENTITY_FIELDS = ("model", "channels", "label_names", "label_values", "site", "axis", "divisor",
                       "normalization", "orientation", "spacing", "method", "source_fingerprint",
                       "data_fingerprint", "augmentation", "network")
# Fields older run.json files lack (None there): not compared.
_RECORDED_LATER = ("orientation", "spacing", "source_fingerprint", "data_fingerprint", "augmentation", "network")


def resume_differences(saved: RunInfo, new: RunInfo) -> List[str]:
    """``"field saved -> new"`` for every identity field in which ``new`` differs from the interrupted run.

    A field the saved run.json lacks (an older trmcore) is not compared.
    """
    old_dict, new_dict = saved.to_dict(), new.to_dict()
    differing = []
    for name in RUN_IDENTITY_FIELDS:
        before, after = old_dict.get(name), new_dict.get(name)
        if before is None and name in _RECORDED_LATER:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after)):
                if before.get(key) != after.get(key):
                    differing.append(f"{name}.{key} {before.get(key)!r} -> {after.get(key)!r}")
        elif before != after:
            differing.append(f"{name} {before!r} -> {after!r}")
    return differing

"""The metadata a deployed model carries: what inference needs besides the weights.

An exported ONNX model stores one :class:`ModelMetadata` in its
``metadata_props``: the key ``"trmcore"`` holds the whole record as JSON (the
one inference reads), and a few plain keys (``channels``, ``labels``,
``slice_axis`` ...) repeat the essentials so that a person inspecting the file
with Netron or ``onnx`` sees them without parsing JSON.

Torch-free and onnx-free: the record is read through onnxruntime's
``custom_metadata_map`` (see :func:`read_model_metadata`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from trmcore.schema import Float, Int, List as JsonList, Maybe, Object, Str, dataclass_schema, parse_json, validate
from trmcore.data.pipeline import PIPELINE_JSON, Pipeline, recorded_pipeline
from trmcore.data.preprocess import NORMALIZATIONS
from trmcore.limits import check_divisor
from trmcore.registry import Registry

METADATA_KEY = "trmcore"
# 2: orientation and spacing (version 1 records have neither and are read as "use volumes as stored").
# 3: ``precision`` (older records are read as fp32 or fp16 by their dtype).
# 4: ``mirror_axes`` (older records: None, "not recorded": those models trained without flips).
# 5: ``preprocessing``, the list of steps (older records: built from normalization, orientation, spacing, axis
#    and divisor, trmcore.data.pipeline.Pipeline.standard).
SCHEMA_VERSION = 5


@dataclass(frozen=True)
class PrecisionEntry:
    """One numeric precision of an exported network (``trm export --precision``, metadata ``precision``).

    Attributes:
        name: the ``--precision`` value and the metadata ``precision``.
        dtype: the graph's input and output dtype, also the dtype the network is exported in
            (``"float32"`` or ``"float16"``).
        tolerance: the default max |onnxruntime - torch float32| on the logits of the exported graph,
            relative to max(1, max |logit|) (``trm export --tolerance``).
        build: ``"module:function"`` making the final graph after export (imported only by the export,
            which needs torch): ``function(reference, context) -> bytes`` with ``reference`` the float32
            graph's bytes and ``context`` a :class:`trmcore.export.precision.BuildContext`; None: the
            exported graph as it is.
        summary: one line for ``--help``.

    Every precision but the reference float32 is written only if its labels agree with float32's
    (:mod:`trmcore.export.precision`).
    """

    name: str
    dtype: str
    tolerance: float
    build: Optional[str] = None
    summary: str = ""

    @property
    def is_reference(self) -> bool:
        return self.name == REFERENCE_PRECISION


#: The precision every other is checked against, and the default.
REFERENCE_PRECISION = "fp32"
#: Numeric precisions of the network's weights and arithmetic, name -> entry: adding one is one entry here
#: (plus its build function in trmcore.export.precision when the exported graph is not the final one).
PRECISIONS: Registry[PrecisionEntry] = Registry("precision")
# Float32 graphs differ from torch only by summation order; float16 keeps ~3 significant digits.
PRECISIONS.add("fp32", PrecisionEntry("fp32", "float32", 1e-4, summary="float32 (the default)"))
PRECISIONS.add("fp16", PrecisionEntry("fp16", "float16", 2e-2, summary="float16 network, inputs and outputs: for GPUs "
                                                                     "(slower than fp32 on CPUs)"))
# int8 graphs quantise inside, at float32 edges: the exported graph is float32, compared with torch as such.
PRECISIONS.add("int8", PrecisionEntry("int8", "float32", 1e-4, build="trmcore.export.precision:build_int8",
                                      summary="onnxruntime static quantisation calibrated on the run's training "
                                              "slices, about 2x faster on CPUs with VNNI"))


def precision_dtypes() -> tuple:
    """The graph dtypes the registered precisions use (read when needed: a precision may be added later)."""
    return tuple(dict.fromkeys(entry.dtype for entry in PRECISIONS.values()))
#: A reduced precision is exported only if each class's Dice against the float32 labels
#: reaches this (``trm export --min-dice``); here so the torch-free CLI can show it.
DEFAULT_MIN_DICE = 0.99
#: ONNX opset of ``trm export`` and the oldest it accepts (here so the torch-free CLI can show them).
DEFAULT_OPSET = 18
MIN_OPSET = 17


@dataclass
class Provenance:
    """Where a deployed model came from.

    ``source_model`` names the model the run started from (None for a model
    trained from scratch), ``method`` the loss weighting it trained with (None
    when not recorded: models exported before trmcore named plain cross-entropy
    "vanilla" left it out for source models), ``run`` the run folder's name.
    """

    run: Optional[str] = None
    source_model: Optional[str] = None
    method: Optional[str] = None
    trmcore_version: str = ""
    exporter: str = ""
    exported_at: str = ""


@dataclass
class ModelMetadata:
    """Everything inference needs to turn a NIfTI volume into a label volume.

    - ``channels``: input channel names in the order the network expects them
      (``["T1", "T2"]``); the input tensor is ``[N, len(channels), H, W]``.
    - ``label_names`` / ``label_values``: one per output class, class 0 is
      background; ``label_values[k]`` is the value written for class ``k``
      (the dataset's own label value, e.g. 150 for iSeg GM).
    - ``normalization``: per-channel intensity normalisation applied before
      the network (``"zscore-foreground"``: z-score over
      ``trmcore.data.preprocess.foreground_mask``; ``"zscore-nonzero"``:
      over the non-zero voxels, models from before).
    - ``orientation``: axis codes of the grid the model was trained on
      (``"RAS"``), ``"native"`` (trained on volumes as stored), or None
      (exported before trmcore recorded it).
    - ``spacing``: voxel size in mm per axis of that grid (None: not recorded).
    - ``axis``: the volume axis the 2D slices are taken along (2 = axial for
      RAS-ish volumes); a slice is the volume with that axis removed.
    - ``divisor``: slices are zero-padded so height and width are multiples of it.
    - ``dtype``: the network's input and output dtype (``float32`` or ``float16``).
    - ``precision``: the arithmetic inside the network: ``fp32``, ``fp16`` or
      ``int8`` (static quantisation, float32 inputs and outputs).
    - ``mirror_axes``: the in-plane slice axes (0: the slice's first, 1: its
      second) the model saw flipped in training; test-time mirroring uses only
      these. ``[]``: trained without flips; None: not recorded (older models).
    - ``preprocessing``: the recorded steps of :mod:`trmcore.data.pipeline` with their parameters
      (``[{"step": "reorient", "orientation": "RAS"}, {"step": "resample", ...}, {"step": "normalize", ...},
      {"step": "slice", ...}]``), run.json's list; inference rebuilds its pipeline from it
      (:meth:`pipeline`). None: not recorded (older models), built from the fields above.
      When present it must agree with them (they stay for older readers and for people).
    """

    channels: List[str]
    label_names: List[str]
    label_values: List[int]
    normalization: str = "zscore-nonzero"
    orientation: Optional[str] = None
    spacing: Optional[List[float]] = None
    axis: int = 2
    divisor: int = 16
    dtype: str = "float32"
    precision: str = "fp32"
    input_name: str = "image"
    output_name: str = "logits"
    provenance: Provenance = field(default_factory=Provenance)
    schema_version: int = SCHEMA_VERSION
    mirror_axes: Optional[List[int]] = None
    preprocessing: Optional[List[Dict[str, Any]]] = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def validate(self) -> None:
        """Raise ValueError when the record is inconsistent."""
        if not self.channels or not all(isinstance(c, str) and c for c in self.channels):
            raise ValueError(f"metadata channels must be a non-empty list of names, got {self.channels!r}")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"metadata channels must be distinct, got {self.channels!r}")
        if len(self.label_names) < 2:
            raise ValueError(f"metadata needs at least two label names (background + one), got {self.label_names!r}")
        if len(self.label_values) != len(self.label_names):
            raise ValueError(
                f"metadata has {len(self.label_names)} label names but {len(self.label_values)} label values"
            )
        if any(int(v) != v or v < 0 or v > 65535 for v in self.label_values):
            raise ValueError(f"metadata label values must be integers in [0, 65535], got {self.label_values!r}")
        if len(set(self.label_values)) != len(self.label_values):
            raise ValueError(f"metadata label values must be distinct, got {self.label_values!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalisation {self.normalization!r}; known: {', '.join(NORMALIZATIONS)}")
        if self.axis not in (0, 1, 2):
            raise ValueError(f"metadata slice axis must be 0, 1 or 2, got {self.axis!r}")
        check_divisor(self.divisor, "metadata size divisor")  # bounded: slices are padded to a multiple of it
        if self.orientation is not None or self.spacing is not None:
            from trmcore.data.geometry import recorded_geometry

            recorded_geometry(self.orientation or "native", self.spacing, self.axis, "metadata")  # raises if invalid
        if self.dtype not in precision_dtypes():
            raise ValueError(f"metadata dtype must be {' or '.join(precision_dtypes())}, got {self.dtype!r}")
        if self.mirror_axes is not None and (not isinstance(self.mirror_axes, list) or not set(self.mirror_axes) <= {0, 1}
                                             or len(set(self.mirror_axes)) != len(self.mirror_axes)):
            raise ValueError(f"metadata mirror_axes must be a list of distinct in-plane axes 0 and 1, "
                             f"got {self.mirror_axes!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown model precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        if PRECISIONS[self.precision].dtype != self.dtype:
            raise ValueError(f"metadata precision {self.precision} needs dtype {PRECISIONS[self.precision].dtype}, "
                             f"got {self.dtype}")
        self.pipeline()  # a recorded list must agree with the fields

    def pipeline(self) -> Pipeline:
        """The model's preprocessing (:mod:`trmcore.data.pipeline`): rebuilt from ``preprocessing`` when
        recorded, else from the fields (a model without a recorded orientation: no reorient/resample steps,
        volumes as stored, as :meth:`geometry` warns)."""
        return recorded_pipeline(self.preprocessing, self.orientation, self.spacing, self.axis, self.normalization,
                                 self.divisor, "metadata")

    # -- serialisation -------------------------------------------------------

    def geometry(self, what: str = "model", resample: bool = True):
        """The :class:`trmcore.data.geometry.Geometry` inputs are brought to (a warning for old models)."""
        from trmcore.data.geometry import recorded_geometry

        return recorded_geometry(self.orientation, self.spacing, self.axis, what, resample)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "trmcore metadata") -> "ModelMetadata":
        """The record from its JSON text, checked against :data:`METADATA_JSON`; ValueError
        ``"{source}: {field}: {problem}"`` when malformed."""
        record = parse_json(text, source, _VERSIONED)
        version = record.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"model metadata schema version {version} is newer than this trmcore understands "
                f"({SCHEMA_VERSION}); upgrade trmcore"
            )
        record = validate(record, METADATA_JSON, source)
        provenance = record.pop("provenance", None) or Provenance()
        if version < 3 and "precision" not in record:
            record["precision"] = "fp16" if record.get("dtype") == "float16" else "fp32"
        try:
            return cls(provenance=provenance, **record)
        except ValueError as err:  # its own type kept (a resource limit stays one), the model named
            raise type(err)(f"{source}: {err}") from None

    def to_props(self) -> Dict[str, str]:
        """The ONNX ``metadata_props``: the JSON record plus readable copies."""
        props = {
            METADATA_KEY: self.to_json(),
            "channels": ",".join(self.channels),
            "labels": ",".join(f"{n}={v}" for n, v in zip(self.label_names, self.label_values)),
            "normalization": self.normalization,
            "slice_axis": str(self.axis),
            "size_divisor": str(self.divisor),
            "orientation": str(self.orientation),
            "spacing": "x".join(f"{v:g}" for v in self.spacing) if self.spacing else "None",
            "precision": self.precision,
            "mirror_axes": "not recorded" if self.mirror_axes is None else ",".join(map(str, self.mirror_axes)),
            "trmcore_version": self.provenance.trmcore_version,
        }
        if self.provenance.source_model:
            props["source_model"] = self.provenance.source_model
        if self.provenance.method:
            props["method"] = self.provenance.method
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], model_path: str = "model") -> "ModelMetadata":
        """Parse the record from ONNX metadata props; ValueError naming the model when absent."""
        if METADATA_KEY not in props:
            raise ValueError(
                f"{model_path} has no trmcore metadata (metadata_props key {METADATA_KEY!r}); "
                "export the model with `trm export RUN -o model.onnx`"
            )
        return cls.from_json(props[METADATA_KEY], f"{model_path}: invalid trmcore metadata")


# The version is read first: a newer record may hold keys this trmcore does not know.
_VERSIONED = Object({"schema_version": Int(minimum=1)}, extra="keep")
#: The schema of the ``trmcore`` metadata record (trmcore.schema): types from the dataclasses, unknown keys
#: refused; the rules between fields (distinct values, precision and dtype ...) are ModelMetadata.validate.
METADATA_JSON = dataclass_schema(
    ModelMetadata, required=("channels", "label_names", "label_values"), extra="forbid", build=False,
    overrides={"channels": JsonList(Str(nonempty=True), min_len=1),
               "label_names": JsonList(Str(nonempty=True), min_len=1),
               "label_values": JsonList(Int(minimum=0), min_len=1),
               "normalization": Str(choices=NORMALIZATIONS),
               "orientation": Maybe(Str(nonempty=True, max_len=16)),
               "spacing": Maybe(JsonList(Float(minimum=0, exclusive_min=True), min_len=3, max_len=3)),
               # checked against the PRECISIONS registry by ModelMetadata.validate (entries may be added later)
               "precision": Str(nonempty=True, max_len=64),
               "dtype": Str(nonempty=True, max_len=64),
               "provenance": Maybe(dataclass_schema(Provenance)),
               "preprocessing": Maybe(PIPELINE_JSON)})


def check_graph_shapes(metadata: ModelMetadata, input_shape: Sequence[Any], output_shape: Sequence[Any],
                       model_path: str = "model") -> None:
    """ValueError naming the model when its metadata disagrees with the graph.

    ``input_shape`` / ``output_shape`` are onnxruntime's ``NodeArg.shape`` (ints or symbolic names):
    the input must be ``[N, channels, H, W]`` and the output ``[N, classes, H, W]``; a symbolic
    channel or class dimension is not checked here.
    """
    for what, shape, expected, name in (("input", input_shape, metadata.num_channels, "channels"),
                                        ("output", output_shape, metadata.num_classes, "classes")):
        shape = list(shape or [])
        if len(shape) != 4:
            raise ValueError(f"{model_path}: the graph's {what} has rank {len(shape)} ({shape}); "
                             "a trmcore model takes and gives [N, C, H, W]")
        if isinstance(shape[1], int) and shape[1] != expected:
            raise ValueError(f"{model_path}: metadata names {expected} {name} but the graph's {what} has "
                             f"{shape[1]}; the model file was altered or mislabelled")

"""DICOM Segmentation objects of predicted label volumes (highdicom), and their label codes.

Torch-free; needs ``pydicom`` and ``highdicom`` (the ``dicom`` extra), imported inside the functions.

One Segmentation per input series (:func:`write_dicom_seg`):

- it references every source instance (one frame per source slice, in the
  source's slice order); **empty frames are kept** (``omit_empty_frames=False``),
  since some viewers mis-place a segmentation whose frames skip slices;
- one segment per foreground class of the model, labelled with the class
  name, segment number = class index (1..C-1); BINARY type;
- each segment carries a coded property category and type: from a label-code
  file (:func:`read_label_codes`), else the documented default
  :data:`DEFAULT_CATEGORY` / :data:`DEFAULT_TYPE` (SNOMED-CT "Anatomical
  Structure" / "Tissue": true of every class, specific to none);
- algorithm identification: name ``trmcore``, family "Artificial
  Intelligence" (DCM 123110), version = trmcore's, parameters = the model
  file name(s) and SHA-256;
- patient and study identifiers come from the source (highdicom copies the
  Patient and General Study modules: name, ID, birth date, sex, study UID,
  date, time, ID, accession number, referring physician); nothing else of the
  source's header is copied (:data:`COPIED_ATTRIBUTES` lists what the tests check).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

Code3 = Tuple[str, str, str]  # (code value, coding scheme designator, code meaning)

DEFAULT_CATEGORY: Code3 = ("91723000", "SCT", "Anatomical Structure")
DEFAULT_TYPE: Code3 = ("85756007", "SCT", "Tissue")
SEG_SUFFIX = ".seg.dcm"
# What `trm predict --output-format` writes (here, not in dicom_predict: the parser reads it without onnxruntime).
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")
DEFAULT_OUTPUT_FORMAT = "nifti"
# What a Segmentation carries of the source's patient and study (highdicom's Patient and Study modules).
COPIED_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                     "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName")
# The Segmentation's own attributes that may equal the source's (kept by :func:`strip_source_details`).
OWN_ATTRIBUTES = ("SpecificCharacterSet", "SOPClassUID", "Modality", "ImageType", "FrameOfReferenceUID",
                  "PositionReferenceIndicator", "InstanceNumber", "SeriesNumber", "ContentDate", "ContentTime",
                  "InstanceCreationDate", "InstanceCreationTime", "Manufacturer", "ManufacturerModelName",
                  "SoftwareVersions", "DeviceSerialNumber", "ContentLabel", "ContentDescription")
# Patient, (retired) study and visit groups: only COPIED_ATTRIBUTES of them stay.
PATIENT_GROUPS = (0x0010, 0x0032, 0x0038)


@dataclass(frozen=True)
class LabelCode:
    """The coded meaning of one class: property category and property type."""

    category: Code3 = DEFAULT_CATEGORY
    type: Code3 = DEFAULT_TYPE


def read_label_codes(path: Path) -> Dict[str, LabelCode]:
    """Label name -> :class:`LabelCode` from a JSON file.

    Either a label-code file ``{"CSF": {"category": [...], "type": [...]}, ...}``
    or a ``dataset.json`` holding that mapping under ``"label_codes"``. A code
    is ``["value", "scheme", "meaning"]`` or ``{"value", "scheme", "meaning"}``;
    a missing category takes :data:`DEFAULT_CATEGORY`.
    """
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"label-code file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read label-code file {path}: {err}") from None
    if isinstance(record, dict) and "label_codes" in record:
        record = record["label_codes"]
    elif isinstance(record, dict) and "labels" in record and "channel_names" in record:
        raise ValueError(f"{path} is a dataset.json without a \"label_codes\" entry (see docs/deploy.md)")
    if not isinstance(record, dict):
        raise ValueError(f"label-code file {path}: expected an object mapping label names to codes")
    codes = {}
    for name, entry in record.items():
        if not isinstance(entry, dict) or "type" not in entry:
            raise ValueError(f"label-code file {path}: label {name!r} needs a \"type\" code "
                             "([value, scheme, meaning]) and optionally a \"category\"")
        codes[str(name)] = LabelCode(_code(entry.get("category", DEFAULT_CATEGORY), path, name, "category"),
                                     _code(entry["type"], path, name, "type"))
    return codes


def _code(value, path: Path, name: str, what: str) -> Code3:
    if isinstance(value, dict):
        value = [value.get("value"), value.get("scheme"), value.get("meaning")]
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"label-code file {path}: {what} of label {name!r} must be [value, scheme, meaning] "
                         f"strings, got {value!r}")
    return tuple(value)  # type: ignore[return-value]


def codes_for(label_names: Sequence[str], codes: Optional[Dict[str, LabelCode]]) -> List[Tuple[LabelCode, bool]]:
    """(code, from the file?) per foreground class name; names compare case-insensitively."""
    lowered = {k.lower(): v for k, v in (codes or {}).items()}
    return [(lowered[n.lower()], True) if n.lower() in lowered else (LabelCode(), False) for n in label_names]


def build_dicom_seg(source_datasets: Sequence, labels: np.ndarray, label_names: Sequence[str],
                    codes: Optional[Dict[str, LabelCode]], model_files: Sequence[Tuple[str, str]],
                    series_number: int = 300):
    """A highdicom Segmentation of class indices ``labels`` int ``[X, Y, Z]`` on the source's grid.

    Args:
        source_datasets: the source series' datasets in the volume's slice order (``Z``).
        labels: class indices 0..C-1 (0 = background), ``[column, row, slice]`` as the reader builds volumes.
        label_names: names of classes 1..C-1.
        codes: label name -> :class:`LabelCode` (others get the default codes).
        model_files: (file name, SHA-256) of each model that produced the labels.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dcm_codes

    from trmcore import __version__

    labels = np.asarray(labels)
    if labels.shape[2] != len(source_datasets):
        raise ValueError(f"labels have {labels.shape[2]} slices, the source series {len(source_datasets)}")
    parameters = {"model": ",".join(name for name, _ in model_files),
                  "model_sha256": ",".join(digest for _, digest in model_files)}
    algorithm = hd.AlgorithmIdentificationSequence(name="trmcore", family=dcm_codes.cid7162.ArtificialIntelligence,
                                                   version=str(__version__), parameters=parameters)
    descriptions = []
    for number, (name, (code, _)) in enumerate(zip(label_names, codes_for(label_names, codes)), start=1):
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(name)[:64],
            segmented_property_category=hd.sr.CodedConcept(*code.category),
            segmented_property_type=hd.sr.CodedConcept(*code.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    # highdicom takes frames [slice, row, column] in the order of source_images; values = segment numbers.
    frames = np.ascontiguousarray(np.transpose(labels, (2, 1, 0))).astype(np.uint16 if len(label_names) > 254
                                                                           else np.uint8)
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets), pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="trmcore", manufacturer_model_name="trmcore", software_versions=str(__version__),
        device_serial_number="none", content_description="trmcore automatic segmentation",
        content_label="TRMCORE", content_creator_name=None, omit_empty_frames=False)
    strip_source_details(seg, source_datasets[0])
    return seg


def strip_source_details(seg, source) -> None:
    """Remove what highdicom copied of the source beyond the identifiers (:data:`COPIED_ATTRIBUTES`).

    highdicom copies the whole Patient and General Study modules (e.g.
    PatientComments, PatientAge, StudyDescription); a segmentation needs the
    identifiers only. Removed: every element of the patient, study and visit
    groups (0010, 0032, 0038) and private elements, other than the copied
    identifiers; and every element of groups 0008/0020 that has the source's
    value and is neither an identifier nor the Segmentation's own.
    """
    keep = set(COPIED_ATTRIBUTES) | set(OWN_ATTRIBUTES)
    for element in list(seg):
        if element.keyword in keep:
            continue
        group = element.tag.group
        copied = bool(element.keyword) and element.keyword in source and source[element.keyword].value == element.value
        if group in PATIENT_GROUPS or element.tag.is_private or (group in (0x0008, 0x0020) and copied):
            del seg[element.tag]


def write_dicom_seg(path: Path, segmentation, *, overwrite: bool, inputs: Sequence[Path] = ()) -> Path:
    """Write a Segmentation through the atomic writer."""
    from trmcore.fileio import atomic_path

    with atomic_path(path, overwrite=overwrite, inputs=inputs) as tmp:
        segmentation.save_as(tmp, enforce_file_format=True)
    return Path(path)


def read_dicom_seg_labels(path: Path, source_datasets: Sequence, num_classes: int) -> np.ndarray:
    """Class indices uint8 ``[X, Y, Z]`` of a Segmentation on the grid of ``source_datasets`` (their order)."""
    from trmcore.data.dicom import read_seg_labels

    labels, _ = read_seg_labels(path, source_datasets, segment_numbers=list(range(1, num_classes)))
    return labels.astype(np.uint8)

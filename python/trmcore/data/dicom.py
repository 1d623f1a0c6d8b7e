"""Reading DICOM series as volumes: grouping, slice order, affine, intensities, refusals.

Torch-free; needs ``pydicom`` (the ``dicom`` extra), imported inside the functions.

A folder (searched recursively) is read header-only; files are grouped by
SeriesInstanceUID. :func:`load_series` builds one volume per series as
nibabel's DICOM reader lays it out (dcm2niix puts every voxel at the same
world position, with the row axis of its array flipped):

- slices are sorted by their position along the slice normal
  ``n = row direction x column direction`` (ImageOrientationPatient), not by
  file name or InstanceNumber;
- the array is ``[X, Y, Z]`` = ``[column, row, slice]`` (``pixel_array.T`` per
  slice), float32 ``stored * RescaleSlope + RescaleIntercept``;
- the affine maps ``(column, row, slice)`` to RAS millimetres (NIfTI's
  convention): in DICOM's LPS, column 0 is the row direction times the column
  spacing (``PixelSpacing[1]``), column 1 the column direction times the row
  spacing (``PixelSpacing[0]``), column 2 the step between consecutive
  slice positions, the origin the first slice's ImagePositionPatient; the
  first two rows are then negated (LPS -> RAS).

Refused with one line naming the series or file (ValueError): mixed
orientations or in-plane grids, slices off the slice normal (gantry tilt),
two slices at one position, missing slices (a gap that is a whole multiple
of the usual step), uneven spacing beyond :data:`SPACING_TOLERANCE`,
multi-frame objects, colour images, and compressed pixel data without a
decoder (the message names the package that decodes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

# Relative deviation of a slice step from the median step that is still one grid.
SPACING_TOLERANCE = 0.01
# Largest sideways drift of slice positions per mm along the slice normal (tan 0.57 degrees of gantry tilt).
TILT_TOLERANCE = 0.01
# Largest |cosine difference| between two slices' orientation vectors that is still one orientation.
ORIENTATION_TOLERANCE = 1e-4
DERIVED_MODALITIES = ("SEG", "SR", "PR", "RTSTRUCT", "KO", "REG", "DOC")
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Transfer syntaxes pydicom cannot decode by itself, and the package that does (pip name).
DECODERS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or pillow)",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or pillow)",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls (or pylibjpeg-libjpeg)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls (or pylibjpeg-libjpeg)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (or pillow)",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (or pillow)",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
}


@dataclass
class DicomSeries:
    """One series found in a folder (headers only): its identifiers and files (unsorted)."""

    series_uid: str
    study_uid: str
    description: str
    modality: str
    series_number: Optional[int]
    files: List[Path] = field(default_factory=list)

    def describe(self) -> str:
        """``'T1 MPRAGE' (MR, series 3, 1.2.3..., 176 files)``."""
        number = "" if self.series_number is None else f"series {self.series_number}, "
        return (f"{self.description!r} ({self.modality or 'no modality'}, {number}{self.series_uid}, "
                f"{len(self.files)} file(s))")


@dataclass
class SeriesVolume:
    """A series read as a volume: float32 ``[X, Y, Z]`` intensities, RAS affine, datasets in slice order.

    ``datasets`` are the pydicom datasets (with pixel data) sorted as the
    volume's ``Z`` axis; DICOM-SEG references them in that order.
    """

    series: DicomSeries
    data: np.ndarray
    affine: np.ndarray
    datasets: list
    files: List[Path]

    def nifti(self):
        """A nibabel image of the volume (what ``trm predict`` and the NIfTI writer take)."""
        import nibabel as nib

        image = nib.Nifti1Image(self.data, self.affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(self.affine, code=1)
        image.set_sform(self.affine, code=1)
        return image


def require_pydicom(what: str = "reading DICOM"):
    """The pydicom module, or MissingExtraError naming the ``dicom`` extra."""
    try:
        import pydicom
    except ImportError:
        from trmcore.extras import MissingExtraError, install_hint

        raise MissingExtraError(f"{what} needs pydicom, not installed: {install_hint('dicom')}") from None
    return pydicom


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files(folder: Path) -> List[Path]:
    """DICOM files under ``folder`` (recursively, hidden entries skipped), sorted by path."""
    found = []
    for path in sorted(Path(folder).rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_file() and not path.is_symlink() and is_dicom_file(path):
            found.append(path)
    return found


def is_dicom_input(path: Path) -> bool:
    """True when ``path`` is a DICOM file or a folder holding DICOM files and no NIfTI file at its top."""
    path = Path(path)
    if path.is_file():
        return is_dicom_file(path)
    if not path.is_dir():
        return False
    if any(p.name.endswith((".nii", ".nii.gz")) for p in path.iterdir()):
        return False
    for candidate in path.rglob("*"):
        if candidate.is_file() and is_dicom_file(candidate):
            return True
    return False


def find_series(path: Path) -> List[DicomSeries]:
    """Every series under ``path`` (a DICOM file: its series' files in its folder), by SeriesInstanceUID.

    Sorted by study, series number and UID. Objects without pixel data
    (structured reports, presentation states, segmentations) are skipped.
    """
    pydicom = require_pydicom()
    path = Path(path)
    files = dicom_files(path.parent) if path.is_file() else dicom_files(path)
    if not files:
        raise FileNotFoundError(f"no DICOM files (Part 10, 'DICM' header) under {path}")
    grouped: Dict[str, DicomSeries] = {}
    for file in files:
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=True)
        except Exception as err:  # pydicom raises many types for damaged files
            raise ValueError(f"cannot read DICOM file {file}: {type(err).__name__}: {err}") from None
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if sop_class == MEDIA_DIRECTORY or file.name.upper() == "DICOMDIR":
            continue  # the index of an exported medium, not an image
        if getattr(ds, "Modality", "") in DERIVED_MODALITIES:
            continue  # derived objects (segmentations, reports...), not images to segment
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            raise ValueError(f"DICOM file {file} has no SeriesInstanceUID")
        number = getattr(ds, "SeriesNumber", None)
        series = grouped.setdefault(uid, DicomSeries(
            uid, str(getattr(ds, "StudyInstanceUID", "") or ""), str(getattr(ds, "SeriesDescription", "") or ""),
            str(getattr(ds, "Modality", "") or ""), None if number in (None, "") else int(number)))
        series.files.append(file)
    if path.is_file():
        uid = str(pydicom.dcmread(str(path), stop_before_pixels=True).SeriesInstanceUID)
        return [grouped[uid]] if uid in grouped else []
    return sorted(grouped.values(), key=lambda s: (s.study_uid, s.series_number or 0, s.series_uid))


def load_series(series: DicomSeries) -> SeriesVolume:
    """Read a series as a :class:`SeriesVolume` (see the module docstring for the rules and refusals)."""
    pydicom = require_pydicom()
    name = f"series {series.series_uid} ({series.description!r})" if series.description else \
        f"series {series.series_uid}"
    headers = []
    for file in series.files:
        ds = pydicom.dcmread(str(file))
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames > 1:
            raise ValueError(f"{file} is a multi-frame DICOM object ({frames} frames, "
                             f"{getattr(ds, 'SOPClassUID', '?')!s}); trmcore reads single-frame series only: "
                             "convert it with dcm2niix and predict the NIfTI")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if getattr(ds, keyword, None) in (None, ""):
                raise ValueError(f"{file} ({name}) has no {keyword}: it cannot be placed in a volume")
        headers.append((file, ds))
    first_file, first = headers[0]
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient], np.float64)
    spacing = np.asarray([float(v) for v in first.PixelSpacing], np.float64)
    grid = (int(first.Rows), int(first.Columns))
    for file, ds in headers[1:]:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient], np.float64)
        if np.abs(other - orientation).max() > ORIENTATION_TOLERANCE:
            raise ValueError(f"{name} mixes slice orientations ({first_file.name}: {_fmt(orientation)}, "
                             f"{file.name}: {_fmt(other)}); it is not one volume (a localiser series?)")
        if (int(ds.Rows), int(ds.Columns)) != grid or \
                np.abs(np.asarray([float(v) for v in ds.PixelSpacing]) - spacing).max() > 1e-4:
            raise ValueError(f"{name} mixes in-plane grids ({first_file.name}: {grid[0]}x{grid[1]} at "
                             f"{_fmt(spacing)} mm, {file.name}: {int(ds.Rows)}x{int(ds.Columns)} at "
                             f"{_fmt([float(v) for v in ds.PixelSpacing])} mm)")
    # unit vectors: stored cosines are rounded to a few digits
    row_dir = orientation[:3] / np.linalg.norm(orientation[:3])
    col_dir = orientation[3:] / np.linalg.norm(orientation[3:])
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise ValueError(f"{name}: ImageOrientationPatient {_fmt(orientation)} has row and column directions "
                         "that are not perpendicular")
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers], np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    headers = [headers[i] for i in order]
    positions, along = positions[order], along[order]
    step = _slice_step(name, headers, positions, along, normal, first)
    data = np.empty((grid[1], grid[0], len(headers)), np.float32)
    for k, (file, ds) in enumerate(headers):
        data[:, :, k] = _intensities(file, ds, name).T
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return SeriesVolume(series, data, LPS_TO_RAS @ lps, [ds for _, ds in headers], [f for f, _ in headers])


def read_seg_labels(path: Path, source_datasets: Sequence,
                    segment_numbers: Optional[Sequence[int]] = None) -> "tuple[np.ndarray, Dict[int, str]]":
    """A DICOM Segmentation on the grid of ``source_datasets`` (in their order): (segment numbers ``[X, Y, Z]``,
    segment number -> label).

    Read with highdicom; every source instance gets its frame (0 where the
    Segmentation has none); overlapping segments are refused.
    """
    try:
        import highdicom as hd
    except ImportError:
        from trmcore.extras import MissingExtraError, install_hint

        raise MissingExtraError(f"reading DICOM-SEG needs highdicom, not installed: {install_hint('dicom')}") from None
    try:
        seg = hd.seg.segread(str(path))
    except Exception as err:
        raise ValueError(f"cannot read DICOM Segmentation {path}: {type(err).__name__}: {err}") from None
    names = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    numbers = sorted(names) if segment_numbers is None else list(segment_numbers)
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source_datasets],
            segment_numbers=numbers, combine_segments=True, relabel=False, assert_missing_frames_are_empty=True)
    except Exception as err:
        raise ValueError(f"DICOM Segmentation {path} does not fit its source series: {type(err).__name__}: "
                         f"{err}") from None
    return np.ascontiguousarray(np.transpose(pixels, (2, 1, 0))), {n: names[n] for n in numbers}


def _slice_step(name: str, headers, positions: np.ndarray, along: np.ndarray, normal: np.ndarray,
                first) -> np.ndarray:
    """The vector from one slice to the next (LPS mm); ValueError for what is not an even stack."""
    if len(headers) == 1:
        thickness = float(getattr(first, "SliceThickness", 0) or 0) or 1.0
        return normal * thickness
    gaps = np.diff(along)
    typical = float(np.median(gaps))
    same = np.flatnonzero(gaps < 1e-3 * max(typical, 1e-3))
    if same.size:
        a, b = headers[same[0]][0].name, headers[same[0] + 1][0].name
        raise ValueError(f"{name}: {a} and {b} lie at the same position ({along[same[0]]:.3f} mm along the "
                         "slice normal); the series holds several volumes (echoes, phases, repeats): "
                         "split it before predicting")
    offsets = positions - positions[0]
    # a stack must run along the normal: the sideways drift per mm along it is the tangent of a gantry tilt
    off_normal = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if (off_normal[1:] / np.abs(along[1:] - along[0])).max() > TILT_TOLERANCE:
        raise ValueError(f"{name}: slice positions leave the slice normal by up to {off_normal.max():.3g} mm "
                         "(gantry tilt or a sheared stack); resample it (dcm2niix) before predicting")
    deviation = np.abs(gaps - typical) / typical
    if deviation.max() > SPACING_TOLERANCE:
        worst = int(deviation.argmax())
        multiple = gaps[worst] / typical
        where = (f"between {headers[worst][0].name} ({along[worst]:.3f} mm) and {headers[worst + 1][0].name} "
                 f"({along[worst + 1]:.3f} mm)")
        if multiple > 1.5 and abs(multiple - round(multiple)) < 0.1:
            raise ValueError(f"{name}: {int(round(multiple)) - 1} slice(s) missing {where}: the usual step is "
                             f"{typical:.4g} mm, this gap {gaps[worst]:.4g} mm")
        raise ValueError(f"{name}: uneven slice spacing, steps from {gaps.min():.4g} to {gaps.max():.4g} mm "
                         f"(largest deviation {where}; tolerance {SPACING_TOLERANCE:.0%} of {typical:.4g} mm)")
    return (positions[-1] - positions[0]) / (len(headers) - 1)


def _intensities(file: Path, ds, name: str) -> np.ndarray:
    """Float32 ``[rows, columns]`` modality values (RescaleSlope/Intercept applied)."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        raise ValueError(f"{file} ({name}) is a {photometric} (colour) image; trmcore segments greyscale scans")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and getattr(syntax, "is_compressed", False) and not _decodable(syntax):
        package = DECODERS.get(str(syntax), "pylibjpeg with its plug-ins")
        raise ValueError(f"{file} ({name}) holds {syntax.name} compressed pixel data and no installed "
                         f"decoder reads it: pip install {package}")
    try:
        pixels = ds.pixel_array
    except Exception as err:
        raise ValueError(f"cannot decode the pixel data of {file} ({name}): {type(err).__name__}: {err}") from None
    if pixels.ndim != 2:
        raise ValueError(f"{file} ({name}) has pixel data of shape {pixels.shape}; expected one 2D frame")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _decodable(syntax) -> bool:
    """Whether pydicom has an available decoder (plug-in installed) for a compressed transfer syntax."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except Exception:  # pydicom < 3 or an unknown syntax: let decoding itself decide
        return True


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def series_table(series: Sequence[DicomSeries]) -> str:
    """One line per series, for messages that list what a folder holds."""
    return "; ".join(s.describe() for s in series)


def parse_series_map(items: Optional[Sequence[str]]) -> Optional[Dict[str, str]]:
    """``["T1=1.2.3", "T2=*t2*"]`` -> ``{"T1": "1.2.3", "T2": "*t2*"}`` (ValueError for a malformed item)."""
    if not items:
        return None
    mapping: Dict[str, str] = {}
    for item in items:
        name, sep, selector = item.partition("=")
        if not sep or not name.strip() or not selector.strip():
            raise ValueError(f"--series {item!r}: expected CHANNEL=SERIES_UID or CHANNEL=DESCRIPTION_PATTERN")
        if name.strip().lower() in {k.lower() for k in mapping}:
            raise ValueError(f"--series names channel {name.strip()!r} twice")
        mapping[name.strip()] = selector.strip()
    return mapping


__all__ = ["DicomSeries", "SeriesVolume", "find_series", "load_series", "is_dicom_input", "is_dicom_file",
           "require_pydicom", "series_table", "parse_series_map", "SPACING_TOLERANCE", "DECODERS"]

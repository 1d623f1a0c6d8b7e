"""Writing synthetic DICOM series from a NIfTI-style array and affine (pydicom), for the DICOM tests.

The writer is independent of trmcore's reader: it follows the DICOM standard
(C.7.6.2.1.1) directly, so a reader that swaps rows and columns, forgets
LPS -> RAS or sorts slices by file name fails the round trip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"

PATIENT = {"PatientName": "Test^Patient", "PatientID": "PID-0042", "PatientBirthDate": "19700101",
           "PatientSex": "O", "AccessionNumber": "ACC-7", "StudyID": "S1", "StudyDate": "20240102",
           "StudyTime": "101500", "ReferringPhysicianName": "Ref^Doc"}
# Patient details outside the identifiers a DICOM-SEG must carry: they must not leave the series.
PRIVATE = {"PatientAddress": "1 Secret Road", "OtherPatientIDs": "OTHER-99", "PatientComments": "do not copy",
           "PatientTelephoneNumbers": "555-0100", "PatientAge": "054Y", "PatientWeight": "71",
           "StudyDescription": "brain tumour follow-up", "AdmittingDiagnosesDescription": "glioma"}


def quantize(data: np.ndarray, slope: float = 0.01, intercept: float = -100.0):
    """(int16 stored values, float32 modality values) for float ``data``: what the DICOM and its NIfTI twin hold."""
    stored = np.clip(np.round((np.asarray(data, np.float64) - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, (stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))


def write_series(folder: Path, stored: np.ndarray, affine: np.ndarray, *, slope: float = 0.01,
                 intercept: float = -100.0, series_uid: Optional[str] = None, study_uid: Optional[str] = None,
                 frame_uid: Optional[str] = None, description: str = "T1", series_number: int = 1,
                 shuffle_names: bool = True, skip: Sequence[int] = (), seed: int = 0, extra: Optional[dict] = None):
    """Write ``stored`` int16 ``[X, Y, Z]`` (column, row, slice) with RAS ``affine`` as single-frame MR files.

    File names are shuffled (and InstanceNumber reversed) so that only the
    positions give the slice order. ``skip`` leaves slices out (to test
    missing-slice refusals). Returns the folder.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, np.float64)
    col_step, row_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = np.linalg.norm(col_step), np.linalg.norm(row_step)
    orientation = list(col_step / dc) + list(row_step / dr)
    nz = stored.shape[2]
    names = np.random.default_rng(seed).permutation(nz) if shuffle_names else np.arange(nz)
    for k in range(nz):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        for key, value in {**PATIENT, **PRIVATE, **(extra or {})}.items():
            setattr(ds, key, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "MR", description, series_number
        ds.InstanceNumber = nz - k  # reversed on purpose: position, not InstanceNumber, orders slices
        ds.Manufacturer, ds.PositionReferenceIndicator = "trmcore-tests", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * slice_step]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [f"{dr:.6f}", f"{dc:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(slice_step):.6f}"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<i2").tobytes()
        pydicom.dcmwrite(str(folder / f"IM{names[k]:05d}.dcm"), ds, enforce_file_format=True)
    return folder


def oblique_affine(spacing=(1.1, 0.9, 2.5), angles=(0.3, -0.2, 0.15), origin=(-20.0, 35.0, 12.0)) -> np.ndarray:
    """A RAS affine rotated about all three axes (an oblique acquisition)."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def sagittal_affine(spacing=(1.0, 1.2, 2.0)) -> np.ndarray:
    """Array axes (column, row, slice) = (anterior->posterior, superior->inferior, left->right): a sagittal stack."""
    affine = np.zeros((4, 4))
    affine[:3, 0] = [0, -spacing[0], 0]
    affine[:3, 1] = [0, 0, -spacing[1]]
    affine[:3, 2] = [spacing[2], 0, 0]
    affine[:, 3] = [-30.0, 40.0, 50.0, 1.0]
    return affine

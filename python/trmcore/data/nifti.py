"""Reading image and label files with the checks every case gets.

Every error names the case and the file, so a bad volume among hundreds can be
found and fixed.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterable, Tuple

import nibabel as nib
import numpy as np

from trmcore.limits import check_allocation, product, shape_text

# Affines of channel and label files are compared with this tolerance (mm):
# converters round differently, but a real mismatch is at least a voxel off.
AFFINE_ATOL = 1e-3
#: Float32 copies of a volume a training or scoring read makes (the data as stored, the
#: float32 copy, the reoriented and resampled working copies, the normalised image).
LOAD_COPIES = 5


def load_image(path: Path, case: str, what: str = "image") -> Tuple[np.ndarray, np.ndarray, object]:
    """Load a 3D image file as float32.

    Returns:
        (data float32 [X, Y, Z], affine float64 [4, 4], header).
    Raises:
        FileNotFoundError: missing file. ValueError: not 3D, unreadable, or
        holding NaN/inf values.
    """
    img = _open(path, case, what)
    check_header(img, path, f"case {case}: {what} file ")
    data = _as_3d(_read_data(img, path, case, what), path, case, what)
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise ValueError(f"case {case}: {what} file {path} has non-real data type {data.dtype}")
    data = data.astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"case {case}: {what} file {path} holds NaN or infinite values")
    return data, np.asarray(img.affine, np.float64), img.header


def load_label(path: Path, case: str, declared: Iterable[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Load a 3D label file and check its values.

    Float-typed files are accepted when every value is within 1e-3 of a whole
    number (real datasets ship them, some with scaling); values are rounded. Every value must be one ``dataset.json`` declares.

    Returns:
        (labels int64 [X, Y, Z], affine float64 [4, 4]).
    """
    img = _open(path, case, "label")
    check_header(img, path, f"case {case}: label file ", copies=LOAD_COPIES + 2)  # + int64 labels
    data = _as_3d(_read_data(img, path, case, "label"), path, case, "label")
    labels = whole_number_labels(data, f"case {case}: label file {path}")
    present = np.unique(labels)
    unknown = sorted(set(present.tolist()) - set(int(v) for v in declared))
    if unknown:
        raise ValueError(
            f"case {case}: label file {path} holds values {unknown} that dataset.json 'labels' does not declare "
            f"(declared: {sorted(set(int(v) for v in declared))})"
        )
    return labels, np.asarray(img.affine, np.float64)


# Float label files written with scaling read back as e.g. 1.00000006; anything
# this close to a whole number is that number, anything further is not a label.
LABEL_ATOL = 1e-3


def whole_number_labels(data: np.ndarray, where: str) -> np.ndarray:
    """``data`` as int64, values within 1e-3 of a whole number rounded; else ValueError naming ``where``."""
    data = np.asarray(data)
    if data.dtype == np.bool_:
        return data.astype(np.int64)
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.int64, copy=False)
    if not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"{where} has data type {data.dtype}; labels must be integers")
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{where} holds NaN or infinite label values")
    rounded = np.rint(data)
    bad = np.abs(rounded - data) > LABEL_ATOL
    if bad.any():
        examples = np.unique(data[bad])[:5].tolist()
        raise ValueError(f"{where} holds label values that are not whole numbers (more than {LABEL_ATOL:g} "
                         f"from one), e.g. {examples}")
    return rounded.astype(np.int64)


def check_same_grid(case: str, ref_path: Path, ref_shape, ref_affine, path: Path, shape, affine, what: str) -> None:
    """ValueError naming the case and both files if shape or affine differ."""
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(
            f"case {case}: {what} file {path} has shape {tuple(shape)} but {ref_path} has {tuple(ref_shape)}"
        )
    if not np.allclose(affine, ref_affine, atol=AFFINE_ATOL, rtol=0):
        raise ValueError(
            f"case {case}: {what} file {path} has a different affine (voxel-to-world) than {ref_path}:\n"
            f"{np.array2string(np.asarray(affine), precision=4)}\nvs\n{np.array2string(np.asarray(ref_affine), precision=4)}"
        )


def check_header(img, path, prefix: str = "", copies: int = LOAD_COPIES) -> None:
    """Check what a NIfTI/Analyze header declares, before any voxel is read.

    - the shape: positive sizes, and ``voxels x copies`` float32 working
      copies (at least the stored data type's size) within the memory budget
      (:func:`trmcore.limits.check_allocation`): a 4 MB ``.nii.gz`` of
      compressed zeros that declares 1024^3 voxels is refused here;
    - the voxel sizes (``pixdim``): finite, and positive where the affine is
      built from them (no sform); nibabel would otherwise replace a 0 by 1 mm
      and a negative size by its absolute value without a word;
    - the affine (sform/qform): finite and not singular
      (:func:`trmcore.data.geometry.check_affine`).

    ``prefix`` starts the message (e.g. ``"case X: label file "``); the path follows it.
    Raises ValueError (:class:`trmcore.limits.ResourceLimitError` for the size).
    """
    from trmcore.data.geometry import check_affine

    where = f"{prefix}{path}"
    shape = tuple(int(s) for s in img.shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"{where}: the header declares shape {shape}; every size must be at least 1")
    try:
        itemsize = np.dtype(img.get_data_dtype()).itemsize
    except TypeError:
        itemsize = 8
    per_voxel = max(itemsize, 4)
    check_allocation(product(shape) * per_voxel * copies,
                     f"{shape_text(shape)} voxels as float32 working copies (x{copies})", where)
    raw = _raw_header(img, path)
    if raw is not None and "pixdim" in raw:
        zooms = np.asarray(raw["pixdim"][1:min(4, len(shape) + 1)], np.float64)
        if not np.isfinite(zooms).all():
            raise ValueError(f"{where}: the header's voxel sizes (pixdim) {zooms.tolist()} hold NaN or infinite "
                             "values: the header is damaged")
        nifti = "qform_code" in raw
        from_pixdim = not nifti or int(raw["sform_code"]) == 0
        # Analyze files may store a flip as a negative size (SPM): only a zero size is meaningless there.
        if from_pixdim and ((zooms <= 0).any() if nifti else (zooms == 0).any()):
            raise ValueError(f"{where}: the header's voxel sizes (pixdim) are {zooms.tolist()} and it has no "
                             "sform: a voxel size must be positive (nibabel would silently use 1 mm or drop the "
                             "sign); fix the header")
    try:
        affine = img.affine
    except Exception as err:  # nibabel fails on some damaged qforms while building the affine
        raise ValueError(f"{where}: cannot build the affine (voxel-to-world) from the header: {err}") from None
    check_affine(affine, where)


@contextlib.contextmanager
def quiet_nibabel():
    """Silence nibabel's header-fix log lines ("pixdim[1,2,3] should be non-zero; setting 0 dims to 1") while
    loading: :func:`check_header` reports what matters as one error, the rest would be a second line."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _raw_header(img, path):
    """The header exactly as stored (nibabel's load fixes pixdim quietly), or None when it cannot be re-read."""
    header = getattr(img, "header", None)
    klass = type(header)
    if header is None or not hasattr(klass, "from_fileobj"):
        return None
    try:
        from nibabel.openers import ImageOpener

        holder = img.file_map.get("header") or img.file_map.get("image")
        header_path = getattr(holder, "filename", None) or str(path)
        with ImageOpener(header_path) as handle:
            return klass.from_fileobj(handle, check=False)
    except Exception:  # the checked header is what the rest of the read uses; fall back to it
        return header


def _open(path: Path, case: str, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"case {case}: {what} file {path} not found")
    try:
        with quiet_nibabel():  # header fixes are checked (check_header), not logged
            return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for corrupt files
        from trmcore.fileio import check_readable

        check_readable(path)  # nibabel words "permission denied" as "Could not read file": name the real cause
        raise ValueError(f"case {case}: cannot read {what} file {path}: {err}") from None


def _read_data(img, path: Path, case: str, what: str) -> np.ndarray:
    # nibabel reads lazily: a truncated .nii.gz fails here (EOFError, zlib.error ...), not in nib.load.
    try:
        return np.asanyarray(img.dataobj)
    except Exception as err:
        raise ValueError(f"case {case}: cannot read {what} file {path} (damaged or truncated?): "
                         f"{type(err).__name__}: {err}") from None


def _as_3d(data: np.ndarray, path: Path, case: str, what: str) -> np.ndarray:
    # Trailing singleton axes (iSeg's Analyze files are [X, Y, Z, 1]) hold one
    # volume; anything with more than one volume along axis 4+ is a 4D series.
    shape = data.shape
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(
            f"case {case}: {what} file {path} has shape {shape}; expected one 3D volume "
            "(4D series are not supported: split them into one file per channel)"
        )
    return np.asarray(data)

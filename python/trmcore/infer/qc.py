"""Quality-control pictures of predictions: a PNG per case and a one-page HTML index (``trm predict --qc``).

Torch-free and matplotlib-free (the inference install has neither): PNGs are
written by :func:`png_bytes` (zlib + NumPy), contours by a 4-neighbour edge test.

Per case (:func:`render_case`), up to :data:`QC_SLICES` axial slices through
the predicted foreground (at its 25th, 50th and 75th percentile slice; the
middle slice when nothing was predicted), each as a row of panels: the image
(windowed to its 1st..99th percentile), the image with one coloured contour
per predicted class, and the risk map (blue = low, red = high) when the case
has one (``trm predict --qc-risk DIR``: ``DIR/CASE_risk.nii.gz`` as ``trm
riskmap`` writes it, on the case's grid). Volumes are first brought to the closest RAS orientation, so slices
are axial and shown in the neurological convention (patient's right on the
right, anterior up); pixels are repeated to keep the in-plane aspect ratio.
``index.html`` lists every case with its picture and predicted volume per
class in millilitres (voxel count times the voxel volume from the affine).
"""

from __future__ import annotations

import html
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

QC_SLICES = 3
TARGET_PIXELS = 256  # panels are enlarged (integer factors) to about this many pixels across
# Contour colours per foreground class (RGB), repeated when there are more classes.
PALETTE = ((255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 210, 0), (255, 0, 255), (0, 230, 230),
           (255, 140, 0), (160, 90, 255))


@dataclass
class QCCase:
    """One case to picture: image float ``[X, Y, Z]``, label values ``[X, Y, Z]``, its affine and the model's labels."""

    case_id: str
    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    label_names: Sequence[str]
    label_values: Sequence[int]
    risk: Optional[np.ndarray] = None

    def volumes_ml(self) -> dict:
        """Predicted volume per foreground class in mL (voxel count x voxel volume in mm^3 / 1000)."""
        voxel = abs(float(np.linalg.det(np.asarray(self.affine, np.float64)[:3, :3])))
        return {name: int(np.count_nonzero(self.labels == value)) * voxel / 1000.0
                for name, value in zip(self.label_names[1:], self.label_values[1:])}


def png_bytes(rgb: np.ndarray) -> bytes:
    """A PNG file of uint8 ``[H, W, 3]`` RGB pixels (8-bit truecolour, no interlace, filter 0)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"png_bytes takes [H, W, 3] uint8, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def contour(mask: np.ndarray) -> np.ndarray:
    """Boundary of a 2D boolean mask: pixels of the mask with a 4-neighbour outside it (or at the border)."""
    mask = np.asarray(mask, bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def foreground_slices(labels: np.ndarray, count: int = QC_SLICES) -> List[int]:
    """Indices along the last axis: the 25/50/75th percentile foreground slices (distinct), else the middle one."""
    with_fg = np.flatnonzero(np.asarray(labels).reshape(-1, labels.shape[-1]).any(axis=0))
    if with_fg.size == 0:
        return [labels.shape[-1] // 2]
    quantiles = np.linspace(0.25, 0.75, count) if count > 1 else [0.5]
    return sorted({int(with_fg[int(round(q * (with_fg.size - 1)))]) for q in quantiles})


def render_case(case: QCCase) -> np.ndarray:
    """The case's picture: uint8 ``[H, W, 3]`` (rows = slices; panels image | contours | risk)."""
    import nibabel as nib

    affine = np.asarray(case.affine, np.float64)
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                                nib.orientations.axcodes2ornt("RAS"))
    image = nib.orientations.apply_orientation(np.asarray(case.image, np.float32), transform)
    labels = nib.orientations.apply_orientation(np.asarray(case.labels), transform)
    risk = None if case.risk is None else nib.orientations.apply_orientation(np.asarray(case.risk, np.float32),
                                                                             transform)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))[np.argsort(nib.orientations.io_orientation(affine)[:, 0])]
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    scale = _repeats(image.shape[:2], spacing[:2])
    rows = []
    for k in foreground_slices(labels):
        grey = _display(np.clip((image[:, :, k] - low) / max(high - low, 1e-6), 0, 1) * 255)
        base = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
        overlay = base.copy()
        for index, value in enumerate(case.label_values[1:]):
            edge = contour(_display(labels[:, :, k] == value))
            overlay[edge] = PALETTE[index % len(PALETTE)]
        panels = [base, overlay]
        if risk is not None:
            panels.append(_heat(_display(risk[:, :, k])))
        rows.append(_hstack([_enlarge(p, scale) for p in panels]))
    return _vstack(rows)


def write_qc(folder: Path, cases: Sequence[QCCase], *, overwrite: bool) -> Path:
    """Write ``folder/CASE.png`` per case and ``folder/index.html``; returns the index path."""
    from trmcore.fileio import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    rows = []
    for case in cases:
        picture = folder / f"{case.case_id}.png"
        atomic_write_bytes(picture, png_bytes(render_case(case)), overwrite=overwrite)
        volumes = case.volumes_ml()
        cells = "".join(f"<td>{volumes[n]:.2f}</td>" for n in case.label_names[1:])
        rows.append(f"<tr><td>{html.escape(case.case_id)}</td>{cells}"
                    f"<td><a href=\"{html.escape(picture.name)}\"><img src=\"{html.escape(picture.name)}\" "
                    "height=\"160\"></a></td></tr>")
    names = cases[0].label_names[1:] if cases else []
    head = "".join(f"<th>{html.escape(n)} (mL)</th>" for n in names)
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>trmcore predictions</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 8px;border-bottom:1px solid #ccc}"
            "td{text-align:right}</style></head><body>\n"
            f"<h1>trmcore predictions: {len(cases)} case(s)</h1>\n"
            "<p>Predicted volume per class in millilitres. Pictures: axial slices through the predicted "
            "foreground (patient's right on the right); image, prediction contours"
            + (", risk map" if any(c.risk is not None for c in cases) else "") + ".</p>\n"
            f"<table><tr><th>case</th>{head}<th>slices</th></tr>\n" + "\n".join(rows) + "\n</table></body></html>\n")
    return atomic_write_text(folder / "index.html", page, overwrite=overwrite)


def load_risk(risk_dir: Optional[Path], case_id: str, shape) -> Optional[np.ndarray]:
    """``risk_dir/CASE_risk.nii.gz`` (as ``trm riskmap`` writes it) as float32, or None when there is none.

    ValueError when it exists on another grid (a risk map of another case or resampling).
    """
    if risk_dir is None:
        return None
    path = Path(risk_dir) / f"{case_id}_risk.nii.gz"
    if not path.is_file():
        return None
    from trmcore.infer.nifti_files import load_image

    data = np.asarray(load_image(path).get_fdata(dtype=np.float32))
    data = data.reshape(data.shape[:3])
    if data.shape != tuple(shape):
        raise ValueError(f"risk map {path} has shape {data.shape}, the case {tuple(shape)}: not the same grid")
    return data


def qc_from_files(results, segmenter, input_path, channels, folder: Path, *, overwrite: bool,
                  risk_dir: Optional[Path] = None) -> Path:
    """QC pictures of ``trm predict`` NIfTI results: the first model channel's image and the written labels
    (and ``risk_dir/CASE_risk.nii.gz`` where it exists)."""
    import nibabel as nib

    from trmcore.infer.nifti_files import declared_channel_names, find_cases, load_image
    from trmcore.infer.predict_files import channel_indices

    names = ([c.strip() for c in channels.split(",") if c.strip()] if isinstance(channels, str) else channels) \
        or declared_channel_names(Path(input_path))
    indices = None if names is None else channel_indices(names, segmenter.channels)
    files = {c.case_id: c for c in find_cases(Path(input_path), segmenter.metadata.num_channels, indices)}
    cases = []
    for result in results:
        image = load_image(files[result.case_id].channel_paths[0])
        labels = np.asarray(nib.load(str(result.labels_path)).dataobj)
        data = np.asarray(image.get_fdata(dtype=np.float32))
        cases.append(QCCase(result.case_id, data.reshape(data.shape[:3]), labels, image.affine,
                            segmenter.label_names, segmenter.label_values,
                            risk=load_risk(risk_dir, result.case_id, labels.shape)))
    return write_qc(folder, cases, overwrite=overwrite)


def _display(plane: np.ndarray) -> np.ndarray:
    """An ``[x, y]`` RAS plane as screen rows/columns: x left to right, y (anterior) up."""
    return np.asarray(plane).T[::-1]


def _repeats(shape, spacing) -> tuple:
    """Integer pixel repeats (rows, columns) that enlarge to about TARGET_PIXELS and keep the aspect ratio."""
    spacing = np.maximum(np.asarray(spacing, np.float64), 1e-6)
    base = max(1, int(TARGET_PIXELS // max(1, max(shape))))
    rel = spacing / spacing.min()
    return max(1, int(round(base * rel[1]))), max(1, int(round(base * rel[0])))  # screen rows are y


def _enlarge(panel: np.ndarray, scale) -> np.ndarray:
    return np.repeat(np.repeat(panel, scale[0], axis=0), scale[1], axis=1)


def _heat(values: np.ndarray) -> np.ndarray:
    """Blue (min) to red (max) RGB of a 2D array (constant: blue)."""
    values = np.nan_to_num(np.asarray(values, np.float64))
    span = values.max() - values.min() if values.size else 0.0
    t = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    return np.stack([255 * t, 64 * (1 - np.abs(2 * t - 1)), 255 * (1 - t)], axis=-1).astype(np.uint8)


def _hstack(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    out = []
    for p in panels:
        pad = np.zeros((height - p.shape[0], p.shape[1], 3), np.uint8)
        out += [np.concatenate([p, pad]), np.zeros((height, gap, 3), np.uint8)]
    return np.concatenate(out[:-1], axis=1)


def _vstack(rows: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        pad = np.zeros((r.shape[0], width - r.shape[1], 3), np.uint8)
        out += [np.concatenate([r, pad], axis=1), np.zeros((gap, width, 3), np.uint8)]
    return np.concatenate(out[:-1], axis=0)

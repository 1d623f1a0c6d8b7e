"""QC pictures of predictions: the PNG writer, contours, slice choice, and `trm predict --qc`."""

from __future__ import annotations

import re
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.infer.qc import QCCase, contour, foreground_slices, png_bytes, render_case


def _decode_png(data: bytes) -> np.ndarray:
    """A minimal independent reader for 8-bit RGB, filter-0 PNGs (checks signature, CRCs and IEND)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + length
    assert b"IEND" in chunks
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert not raw[:, 0].any()
    return raw[:, 1:].reshape(height, width, 3)


def test_png_round_trip():
    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_decode_png(png_bytes(rgb)), rgb)
    image = pytest.importorskip("PIL.Image")
    import io

    np.testing.assert_array_equal(np.asarray(image.open(io.BytesIO(png_bytes(rgb))).convert("RGB")), rgb)


def test_contour_and_slices():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True
    edge = contour(mask)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any()
    labels = np.zeros((4, 4, 20), np.uint8)
    labels[1, 1, 4:13] = 1  # foreground on slices 4..12
    assert foreground_slices(labels) == [6, 8, 10]
    assert foreground_slices(np.zeros((2, 2, 9))) == [4]


def test_render_draws_contours_in_class_colours():
    image = np.random.default_rng(1).random((20, 16, 6)).astype(np.float32)
    labels = np.zeros((20, 16, 6), np.uint8)
    labels[5:12, 4:10, 2:4] = 10
    picture = render_case(QCCase("c", image, labels, np.diag([1.0, 1.0, 3.0, 1.0]), ["bg", "A"], [0, 10],
                                 risk=image))
    assert picture.dtype == np.uint8 and picture.ndim == 3
    red = (picture[..., 0] == 255) & (picture[..., 1] == 64) & (picture[..., 2] == 64)
    assert red.sum() > 0  # class A's contour


def test_predict_qc_writes_pictures_and_index(phantom, onnx_model, tmp_path):
    out, qc = tmp_path / "labels", tmp_path / "qc"
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(out), "-q",
                 "--qc", str(qc)]) == 0
    cases = sorted(p.name[:-len(".nii.gz")] for p in out.glob("*.nii.gz"))
    assert cases and sorted(p.stem for p in qc.glob("*.png")) == cases
    for case in cases:
        _decode_png((qc / f"{case}.png").read_bytes())
    page = (qc / "index.html").read_text()
    first = nib.load(str(out / f"{cases[0]}.nii.gz"))
    csf_ml = (np.asarray(first.dataobj) == 10).sum() * abs(np.linalg.det(first.affine[:3, :3])) / 1000
    row = re.search(rf"<tr><td>{cases[0]}</td><td>([0-9.]+)</td>", page)
    assert row and float(row.group(1)) == pytest.approx(csf_ml, abs=0.005)
    assert "CSF (mL)" in page and "GM (mL)" in page
    # an existing QC folder needs --overwrite
    code = main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(tmp_path / "l2"),
                 "-q", "--qc", str(qc)])
    assert code == 2


def test_predict_qc_risk_panel(phantom, onnx_model, tmp_path):
    risk = tmp_path / "maps"
    risk.mkdir()
    reference = nib.load(str(phantom / "imagesTr" / "phantom_000_0000.nii.gz"))
    values = np.linspace(1, 10, int(np.prod(reference.shape[:3])), dtype=np.float32).reshape(reference.shape[:3])
    nib.save(nib.Nifti1Image(values, reference.affine), str(risk / "phantom_000_risk.nii.gz"))
    qc = tmp_path / "qc"
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(tmp_path / "l"), "-q",
                 "--qc", str(qc), "--qc-risk", str(risk)]) == 0
    with_risk = _decode_png((qc / "phantom_000.png").read_bytes())
    without = _decode_png((qc / "phantom_001.png").read_bytes())
    assert with_risk.shape[1] > 1.4 * without.shape[1]  # a third panel per row
    assert "risk map" in (qc / "index.html").read_text()
    nib.save(nib.Nifti1Image(values[:-1], reference.affine), str(risk / "phantom_001_risk.nii.gz"))
    assert main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(tmp_path / "l2"),
                 "-q", "--qc", str(tmp_path / "qc2"), "--qc-risk", str(risk)]) == 2

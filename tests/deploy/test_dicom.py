"""DICOM in (series -> volume, refusals, channel mapping) and DICOM-SEG out (highdicom), against NIfTI twins."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from trmcore.cli.main import main  # noqa: E402
from trmcore.data.dicom import find_series, is_dicom_input, load_series  # noqa: E402

from .conftest import case_files  # noqa: E402
from .dicom_helpers import (PATIENT, PRIVATE, oblique_affine, quantize, sagittal_affine,  # noqa: E402
                            write_series)


PHANTOM_SPACING = (100 / 18, 5.0, 16.0)


def _world_equal(volume, data: np.ndarray, affine: np.ndarray) -> None:
    """The read volume holds ``data`` at the same world positions (allowing a reversed slice order)."""
    transform = np.linalg.inv(volume.affine) @ affine  # original index -> read index
    assert np.allclose(transform, np.round(transform), atol=1e-4), transform
    transform = np.round(transform).astype(int)
    assert sorted(np.abs(transform[:3, :3]).sum(axis=0).tolist()) == [1, 1, 1]
    index = np.indices(data.shape).reshape(3, -1)
    read = transform[:3, :3] @ index + transform[:3, 3:4]
    np.testing.assert_array_equal(volume.data[tuple(read)], data[tuple(index)])


def _flip_slices(affine: np.ndarray, nz: int) -> np.ndarray:
    """The same grid listed from the last slice to the first (slice step against the normal)."""
    flipped = affine.copy()
    flipped[:3, 2] = -affine[:3, 2]
    flipped[:3, 3] = affine[:3, 3] + (nz - 1) * affine[:3, 2]
    return flipped


@pytest.mark.parametrize("kind", ["oblique", "sagittal", "oblique-reversed"])
def test_series_geometry_round_trip(tmp_path, kind):
    data = np.random.default_rng(1).normal(50, 20, (11, 8, 6))
    affine = {"oblique": oblique_affine(), "sagittal": sagittal_affine(),
              "oblique-reversed": _flip_slices(oblique_affine(), 6)}[kind]
    stored, values = quantize(data)
    write_series(tmp_path / "dcm", stored, affine)
    assert is_dicom_input(tmp_path / "dcm")
    (series,) = find_series(tmp_path / "dcm")
    volume = load_series(series)
    assert volume.data.dtype == np.float32 and volume.data.shape == data.shape
    _world_equal(volume, values, affine)
    if kind != "oblique-reversed":  # slices along the normal already: the very same array and affine
        np.testing.assert_allclose(volume.affine, affine, atol=1e-5)
        np.testing.assert_array_equal(volume.data, values)
    else:
        np.testing.assert_array_equal(volume.data, values[:, :, ::-1])
    # RescaleSlope/Intercept applied: the stored integers are not what comes back
    assert not np.allclose(volume.data, stored)


def _series(tmp_path, **kw):
    stored, _ = quantize(np.random.default_rng(2).normal(50, 20, (6, 5, 5)))
    return write_series(tmp_path / "dcm", stored, oblique_affine(), **kw)


def _load_only(folder):
    (series,) = find_series(folder)
    return load_series(series)


def test_refuses_missing_slice(tmp_path):
    with pytest.raises(ValueError, match=r"1 slice\(s\) missing between"):
        _load_only(_series(tmp_path, skip=(2,)))


def test_refuses_uneven_spacing(tmp_path):
    folder = _series(tmp_path)
    import pydicom

    files = sorted(folder.iterdir())
    moved = pydicom.dcmread(str(files[0]))
    moved.ImagePositionPatient = [float(v) + 0.4 * n for v, n in zip(
        moved.ImagePositionPatient, np.cross(np.asarray(moved.ImageOrientationPatient[:3], float),
                                             np.asarray(moved.ImageOrientationPatient[3:], float)))]
    moved.save_as(str(files[0]))
    with pytest.raises(ValueError, match="uneven slice spacing|lie at the same position"):
        _load_only(folder)


def test_refuses_mixed_orientation_and_duplicates(tmp_path):
    import pydicom

    folder = _series(tmp_path)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(str(files[1]))
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(str(files[1]))
    with pytest.raises(ValueError, match="mixes slice orientations"):
        _load_only(folder)
    other = tmp_path / "dup"
    stored, _ = quantize(np.ones((4, 4, 3)))
    write_series(other, stored, oblique_affine(), series_uid="1.2.3.4")
    write_series(other / "again", stored, oblique_affine(), series_uid="1.2.3.4", seed=5)
    with pytest.raises(ValueError, match="same position"):
        _load_only(other)


def test_refuses_multiframe_and_undecodable(tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate

    folder = _series(tmp_path)
    files = sorted(folder.iterdir())
    ds = pydicom.dcmread(str(files[0]))
    ds.NumberOfFrames = 2
    ds.save_as(str(files[0]))
    with pytest.raises(ValueError, match="multi-frame"):
        _load_only(folder)
    ds.NumberOfFrames = 1
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"  # HTJ2K: decoded by pylibjpeg-openjpeg only
    ds.PixelData = encapsulate([b"\x00" * 16])
    ds["PixelData"].VR = "OB"
    ds.save_as(str(files[0]), enforce_file_format=True)
    with pytest.raises(ValueError, match="pip install pylibjpeg-openjpeg"):
        _load_only(folder)


def _twins(tmp_path, phantom, affine, case="phantom_001"):
    """A two-series DICOM study (T1, T2) and its NIfTI twin (same values and affine)."""
    from pydicom.uid import generate_uid

    study, frame = generate_uid(), generate_uid()
    twin = tmp_path / "nifti"
    twin.mkdir()
    uids = []
    for k, (path, description) in enumerate(zip(case_files(phantom, case), ("T1 mprage", "T2 space"))):
        stored, values = quantize(nib.load(str(path)).get_fdata(), slope=0.05, intercept=-5.0)
        uid = generate_uid()
        write_series(tmp_path / "dicom" / description.split()[0], stored, affine, slope=0.05, intercept=-5.0,
                     series_uid=uid, study_uid=study, frame_uid=frame, description=description,
                     series_number=k + 1, seed=k)
        nib.save(nib.Nifti1Image(values, affine), str(twin / f"{case}_{k:04d}.nii.gz"))
        uids.append(uid)
    return tmp_path / "dicom", twin, uids


@pytest.mark.parametrize("orientation", ["oblique", "sagittal"])
def test_dicom_and_nifti_twin_predict_the_same_and_seg_reads_back(phantom, onnx_model, tmp_path, capsys,
                                                                  orientation):
    import highdicom as hd
    import pydicom

    # the phantom's own voxel size (5.6 x 5 x 16 mm), which the model was trained on
    affine = oblique_affine(spacing=PHANTOM_SPACING) if orientation == "oblique" else sagittal_affine(PHANTOM_SPACING)
    dicom, twin, uids = _twins(tmp_path, phantom, affine)
    assert main(["predict", "-m", str(onnx_model), "-i", str(twin), "-o", str(tmp_path / "from-nifti"), "-q"]) == 0
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"CSF": {"category": ["91723000", "SCT", "Anatomical Structure"],
                                         "type": ["65216001", "SCT", "Cerebrospinal fluid"]}}))
    assert main(["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(tmp_path / "from-dicom"), "-q",
                 "--series", f"T1={uids[0]}", "--series", "T2=*t2*", "--output-format", "both",
                 "--label-codes", str(codes)]) == 0
    err = capsys.readouterr().err
    assert f"T1 <- 'T1 mprage'" in err and "T2 <- 'T2 space'" in err  # says what was matched
    expected = np.asarray(nib.load(str(tmp_path / "from-nifti" / "phantom_001.nii.gz")).dataobj)
    got_image = nib.load(str(tmp_path / "from-dicom" / f"{uids[0]}.nii.gz"))
    got = np.asarray(got_image.dataobj)
    assert set(np.unique(expected)) > {0}  # the model predicts foreground here
    assert got.shape == expected.shape and (got == expected).mean() >= 0.999
    np.testing.assert_allclose(got_image.affine, affine, atol=1e-4)

    # DICOM-SEG: reads back with highdicom onto the same voxels
    seg_path = tmp_path / "from-dicom" / f"{uids[0]}.seg.dcm"
    (series,) = [s for s in find_series(dicom) if s.series_uid == uids[0]]
    source = load_series(series)
    seg = hd.seg.segread(str(seg_path))
    pixels = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in source.datasets],
                                               combine_segments=True)
    classes = np.transpose(pixels, (2, 1, 0))
    values = np.asarray([0, 10, 150], np.uint8)[classes]
    np.testing.assert_array_equal(values, got)
    raw = pydicom.dcmread(str(seg_path))
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.SegmentationType == "BINARY"
    assert int(raw.NumberOfFrames) == 2 * source.data.shape[2]  # every slice of both segments, empty ones too
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == uids[0]
    segments = {s.SegmentLabel: s for s in raw.SegmentSequence}
    assert list(segments) == ["CSF", "GM"]
    assert segments["CSF"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "65216001"
    assert segments["GM"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"  # the default
    algorithm = segments["CSF"].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "trmcore"
    from trmcore.infer.predict_files import file_sha256

    assert file_sha256(onnx_model) in str(algorithm.AlgorithmParameters)
    for key, value in PATIENT.items():  # identifiers copied, never invented
        assert str(raw.get(key)) == value, key
    assert raw.StudyInstanceUID == source.datasets[0].StudyInstanceUID
    for key in PRIVATE:  # nothing else of the patient
        assert key not in raw, key


def test_multichannel_needs_series_mapping(phantom, onnx_model, tmp_path, capsys):
    dicom, _, _ = _twins(tmp_path, phantom, oblique_affine(PHANTOM_SPACING))
    code = main(["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(tmp_path / "out"), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--series" in err and "T1 mprage" in err
    code = main(["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(tmp_path / "out"), "-q",
                 "--series", "T1=*", "--series", "T2=*t2*"])
    assert code == 2 and "matches 2 series" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dicom_seg_needs_dicom_input(phantom, onnx_model, tmp_path, capsys):
    code = main(["predict", "-m", str(onnx_model), "-i", str(phantom / "imagesTr"), "-o", str(tmp_path / "o"),
                 "--output-format", "dicom-seg", "-q"])
    assert code == 2 and "needs DICOM input" in capsys.readouterr().err


def test_label_code_file_errors(tmp_path):
    from trmcore.infer.dicom_seg import read_label_codes

    bad = tmp_path / "codes.json"
    bad.write_text(json.dumps({"CSF": {"type": ["1", "SCT"]}}))
    with pytest.raises(ValueError, match="must be \\[value, scheme, meaning\\]"):
        read_label_codes(bad)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0},
                                   "label_codes": {"CSF": {"type": {"value": "65216001", "scheme": "SCT",
                                                                    "meaning": "Cerebrospinal fluid"}}}}))
    codes = read_label_codes(dataset)
    assert codes["CSF"].type == ("65216001", "SCT", "Cerebrospinal fluid")
    assert codes["CSF"].category == ("91723000", "SCT", "Anatomical Structure")


def test_dicom_predict_without_torch(phantom, onnx_model, tmp_path):
    from .test_torch_free import TRAIN_EXTRA, _run_without_torch

    dicom, _, uids = _twins(tmp_path, phantom, oblique_affine(PHANTOM_SPACING))
    out = tmp_path / "out"
    result = _run_without_torch(tmp_path, f"""
        import sys
        from trmcore.cli.main import main
        code = main(["predict", "-m", {str(onnx_model)!r}, "-i", {str(dicom)!r}, "-o", {str(out)!r}, "-q",
                     "--series", "T1=*t1*", "--series", "T2=*t2*", "--output-format", "dicom-seg"])
        assert not {{n for n, m in sys.modules.items() if m is not None}} & {set(TRAIN_EXTRA)!r}  # blocked: None
        sys.exit(code)
    """, TRAIN_EXTRA)
    assert result.returncode == 0, result.stderr
    assert (out / f"{uids[0]}.seg.dcm").is_file() and not (out / f"{uids[0]}.nii.gz").exists()


def test_label_codes_must_name_model_classes(phantom, onnx_model, tmp_path, capsys):
    dicom, _, uids = _twins(tmp_path, phantom, oblique_affine(PHANTOM_SPACING))
    codes = tmp_path / "codes.json"
    codes.write_text(json.dumps({"CFS": {"type": ["65216001", "SCT", "Cerebrospinal fluid"]}}))  # a typo
    code = main(["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(tmp_path / "out"), "-q",
                 "--series", "T1=*t1*", "--series", "T2=*t2*", "--output-format", "dicom-seg",
                 "--label-codes", str(codes)])
    assert code == 2 and "['cfs']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dicom_extra_in_pyproject_matches_the_table():
    tomllib = pytest.importorskip("tomllib")
    from trmcore import extras

    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        pytest.skip("no source tree")
    optional = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {req.split(">")[0].strip() for req in optional["dicom"]} == set(extras.EXTRA_MODULES["dicom"])
    assert not {"torch", "scipy", "matplotlib"} & {req.split(">")[0] for req in optional["dicom"]}


def test_without_the_dicom_extra_one_line_names_it(onnx_model, tmp_path):
    from .test_torch_free import _run_without_torch

    stored, _ = quantize(np.ones((6, 5, 3)))
    write_series(tmp_path / "dcm", stored, oblique_affine())
    result = _run_without_torch(tmp_path, f"""
        import sys
        from trmcore.cli.main import main
        codes = [main(["predict", "-m", {str(onnx_model)!r}, "-i", {str(tmp_path / "dcm")!r},
                       "-o", {str(tmp_path / "out")!r}, "-q"]),
                 main(["import", "dicom", {str(tmp_path / "dcm")!r}, {str(tmp_path / "ds")!r}, "-q"])]
        sys.exit(0 if codes == [2, 2] else 1)
    """, ("torch", "pydicom", "highdicom"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 2 and all("pip install 'trmcore[dicom]'" in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr


def test_dicomdir_and_derived_objects_are_skipped(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    stored, values = quantize(np.arange(60, dtype=float).reshape(5, 4, 3))
    write_series(tmp_path / "export" / "S1", stored, sagittal_affine())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    directory = Dataset()
    directory.file_meta = meta
    directory.FileSetID = "EXPORT"
    pydicom.dcmwrite(str(tmp_path / "export" / "DICOMDIR"), directory, enforce_file_format=True)
    (series,) = find_series(tmp_path / "export")
    np.testing.assert_array_equal(load_series(series).data, values)


def test_refuses_gantry_tilt(tmp_path):
    tilted = oblique_affine()
    tilted[:3, 2] += 0.05 * tilted[:3, 0]  # slices drift sideways 5 % of a column step per slice: a sheared stack
    stored, _ = quantize(np.ones((6, 5, 5)))
    write_series(tmp_path / "dcm", stored, tilted)
    with pytest.raises(ValueError, match="gantry tilt"):
        _load_only(tmp_path / "dcm")


def test_continue_keeps_complete_outputs_and_redoes_the_rest(phantom, onnx_model, tmp_path, capsys):
    dicom, _, uids = _twins(tmp_path, phantom, oblique_affine(PHANTOM_SPACING))
    out = tmp_path / "out"
    command = ["predict", "-m", str(onnx_model), "-i", str(dicom), "-o", str(out), "-q", "--series", "T1=*t1*",
               "--series", "T2=*t2*", "--output-format", "both"]
    assert main(command) == 0
    nifti, seg = out / f"{uids[0]}.nii.gz", out / f"{uids[0]}.seg.dcm"
    first = seg.read_bytes()
    assert main(command) == 2  # existing outputs: refused without --overwrite / --continue
    capsys.readouterr()
    assert main(command + ["--continue"]) == 0
    assert "kept complete" in capsys.readouterr().out and seg.read_bytes() == first
    seg.write_bytes(first[: len(first) // 2])  # a truncated Segmentation is redone
    assert main(command + ["--continue", "--qc", str(tmp_path / "qc")]) == 0
    assert "wrote" in capsys.readouterr().out
    import pydicom

    assert int(pydicom.dcmread(str(seg)).NumberOfFrames) == int(pydicom.dcmread(pydicom.filebase.DicomBytesIO(
        first)).NumberOfFrames)
    assert nifti.is_file() and (tmp_path / "qc" / f"{uids[0]}.png").is_file()

"""Bad input to trm predict / Segmenter: a clear error naming the problem, never a crash or an overwrite."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import onnx
import pytest

from trmcore.cli.main import main
from trmcore.infer import ModelMetadata, Segmenter

from .conftest import case_files, file_digest


def _predict(capsys, *args):
    code = main(["predict", "-q", *map(str, args)])
    return code, capsys.readouterr().err


def _copy_case(phantom, folder, case="phantom_000", channels=(0, 1)):
    folder.mkdir(parents=True, exist_ok=True)
    for k, src in zip(channels, case_files(phantom, case, channels)):
        shutil.copy(src, folder / f"{case}_{k:04d}.nii.gz")
    return folder


def test_channel_count_mismatch(phantom, onnx_model, tmp_path, capsys):
    folder = _copy_case(phantom, tmp_path / "one", channels=(0,))  # a T1-only case, no dataset.json
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "phantom_000" in err and "_0001" in err
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder / "phantom_000_0000.nii.gz",
                         "-o", tmp_path / "out.nii.gz")
    assert code == 2 and "phantom_000_0001.nii.gz is missing" in err
    three = _copy_case(phantom, tmp_path / "three", channels=(0, 1, 2))  # three files, no names
    code, err = _predict(capsys, "-m", onnx_model, "-i", three, "-o", tmp_path / "out")
    assert code == 2 and "expects 2 channel(s)" in err


def test_channel_name_mismatch(phantom, onnx_model, tmp_path, capsys):
    folder = _copy_case(phantom, tmp_path / "in")
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "out", "--channels", "T1,FLAIR")
    assert code == 2 and "missing T2" in err
    (folder / "dataset.json").write_text('{"channel_names": {"0": "T1", "1": "PD"}}')
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "missing T2" in err
    assert not (tmp_path / "out").exists()


def _save(data, path):
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("shape, kind", [((20, 24), "2D"), ((20, 24, 6, 2), "4D")])
def test_wrong_dimensionality(onnx_model, tmp_path, capsys, shape, kind):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    _save(data, tmp_path / "x_0000.nii.gz")
    _save(data, tmp_path / "x_0001.nii.gz")
    code, err = _predict(capsys, "-m", onnx_model, "-i", tmp_path / "x_0000.nii.gz", "-o", tmp_path / "o.nii.gz")
    assert code == 2 and f"{kind} image" in err and "x_0000.nii.gz" in err
    segmenter = Segmenter(onnx_model, providers="cpu")
    with pytest.raises(ValueError, match="3D"):
        segmenter.predict_volume([data, data])


def test_missing_and_corrupt_input(phantom, onnx_model, tmp_path, capsys):
    code, err = _predict(capsys, "-m", onnx_model, "-i", tmp_path / "nope_0000.nii.gz", "-o", tmp_path / "o")
    assert code == 2 and "not found" in err
    folder = _copy_case(phantom, tmp_path / "in")
    victim = folder / "phantom_000_0001.nii.gz"
    victim.write_bytes(victim.read_bytes()[:300])  # truncated gzip
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "cannot read" in err and victim.name in err
    assert not (tmp_path / "out" / "phantom_000.nii.gz").exists()


def test_missing_corrupt_and_foreign_models(phantom, onnx_model, tmp_path, capsys):
    folder = _copy_case(phantom, tmp_path / "in")
    code, err = _predict(capsys, "-m", tmp_path / "absent.onnx", "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "model file not found" in err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    code, err = _predict(capsys, "-m", junk, "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "cannot load ONNX model" in err
    plain = onnx.load(str(onnx_model))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    code, err = _predict(capsys, "-m", tmp_path / "plain.onnx", "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "no trmcore metadata" in err
    broken = onnx.load(str(onnx_model))
    for prop in broken.metadata_props:
        if prop.key == "trmcore":
            prop.value = '{"channels": ["T1"], "label_names": ["background"], "label_values": [0]}'
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    with pytest.raises(ValueError, match="invalid trmcore metadata.*at least two label names"):
        Segmenter(tmp_path / "broken.onnx", providers="cpu")


def test_never_overwrites_an_input(phantom, onnx_model, tmp_path, capsys):
    folder = _copy_case(phantom, tmp_path / "in")
    target = folder / "phantom_000_0001.nii.gz"
    digest = file_digest(target)
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder / "phantom_000_0000.nii.gz", "-o", target,
                         "--overwrite")
    assert code == 2 and "is an input file" in err
    assert file_digest(target) == digest
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "x.nii.gz")
    assert code == 2 and "must be a folder" in err


def test_nan_input_is_rejected(onnx_model):
    segmenter = Segmenter(onnx_model, providers="cpu")
    volume = np.ones((16, 16, 4), np.float32)
    volume[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        segmenter.predict_volume([volume, volume])


def test_metadata_validation():
    meta = ModelMetadata(channels=["T1"], label_names=["background", "CSF"], label_values=[0, 10])
    assert ModelMetadata.from_json(meta.to_json()) == meta
    with pytest.raises(ValueError, match="label values"):
        ModelMetadata(channels=["T1"], label_names=["background", "CSF"], label_values=[0])
    with pytest.raises(ValueError, match="distinct"):
        ModelMetadata(channels=["T1", "T1"], label_names=["background", "CSF"], label_values=[0, 1])
    with pytest.raises(ValueError, match="slice axis"):
        ModelMetadata(channels=["T1"], label_names=["background", "CSF"], label_values=[0, 1], axis=3)
    with pytest.raises(ValueError, match="newer"):
        ModelMetadata.from_json('{"schema_version": 99, "channels": ["T1"]}')

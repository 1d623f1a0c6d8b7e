"""Issue 10 on deployment: one atomic writer (mode from umask, no symlinks, exclusive create, kill-safe),
outputs that never replace inputs or another run's files, and clear errors for altered models and odd images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest

from trmcore.cli.main import main
from trmcore.errors import UnsafeOutputError
from trmcore.fileio import (TEMP_PREFIX, atomic_path, atomic_write_bytes, atomic_write_text, clean_stale_temps,
                            check_output_file)
from trmcore.infer import Segmenter, assess_transferability

from .conftest import file_digest
from .test_bad_input import _copy_case, _predict

PYTHON_DIR = str(Path(__import__("trmcore").__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------- the writer
def test_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}", overwrite=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone gives 0600: unreadable for a service
        os.umask(0o027)
        path = atomic_write_text(tmp_path / "b.json", "{}", overwrite=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_never_writes_through_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    link = tmp_path / "out" / "result.json"
    link.parent.mkdir()
    link.symlink_to(outside)
    for overwrite in (False, True):
        with pytest.raises(UnsafeOutputError, match="symbolic link"):
            atomic_write_text(link, "x", overwrite=overwrite)
    assert outside.read_text() == "precious" and link.is_symlink()
    assert not [p for p in link.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_exclusive_create_refuses_a_file_written_meanwhile(tmp_path):
    target = tmp_path / "case.nii.gz"
    with pytest.raises(FileExistsError, match="another process"):
        with atomic_path(target, overwrite=False) as tmp:
            Path(tmp).write_bytes(b"mine")
            target.write_bytes(b"theirs")  # another run finished this output while we wrote ours
    assert target.read_bytes() == b"theirs"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]
    with pytest.raises(FileExistsError, match="--overwrite"):
        atomic_write_bytes(target, b"x", overwrite=False)
    atomic_write_bytes(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "m.png"
    with pytest.raises(RuntimeError):
        with atomic_path(target, overwrite=False) as tmp:
            Path(tmp).write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {python!r})
    from trmcore.fileio import atomic_path
    with atomic_path({target!r}, overwrite=False) as tmp:
        with open(tmp, "wb") as out:
            out.write(b"x" * 100000)
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)
""")


def test_kill_mid_write_leaves_no_final_file_and_the_next_run_cleans_up(tmp_path):
    folder = tmp_path / "maps"
    folder.mkdir()
    (folder / "user.txt").write_text("kept")
    (folder / ".trm-tmp-notanumber-x").write_text("not ours to judge: kept")
    target = folder / "case_risk.nii.gz"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(python=PYTHON_DIR, target=str(target))])
    assert done.returncode == -signal.SIGKILL
    assert not target.exists()  # no 0-byte or partial file under the final name
    stale = [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX) and p.name.endswith("case_risk.nii.gz")]
    assert len(stale) == 1 and stale[0].stat().st_size == 100000
    # A live writer's temporary file (this process) must survive the cleaning.
    live = folder / f"{TEMP_PREFIX}{os.getpid()}-abcd-other.json"
    live.write_text("being written")
    atomic_write_text(folder / "next.json", "{}", overwrite=False)  # the next run into the folder
    names = sorted(p.name for p in folder.iterdir())
    assert stale[0].name not in names
    assert {"user.txt", ".trm-tmp-notanumber-x", live.name, "next.json"} <= set(names)
    assert clean_stale_temps(folder) == 0


def test_output_file_checks(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text("{}")
    with pytest.raises(UnsafeOutputError, match="input"):
        check_output_file(data / "dataset.json", overwrite=True, inputs=[data])
    with pytest.raises(UnsafeOutputError, match="input file"):
        check_output_file(data / "dataset.json", overwrite=True, inputs=[data / "dataset.json"])
    check_output_file(data / "new.json", overwrite=False, inputs=[data])  # a new file beside the data is fine
    with pytest.raises(FileExistsError, match="not a file"):
        check_output_file(data, overwrite=True)


# ---------------------------------------------------------------------------------------- predict
def test_concurrent_predict_second_refuses(phantom, onnx_model, tmp_path, monkeypatch):
    """Two runs into one folder: the other run writes the case between our check and our write."""
    import importlib

    from trmcore.infer import predict_files

    module = importlib.import_module("trmcore.infer.predict_files")
    folder = _copy_case(phantom, tmp_path / "in")
    out = tmp_path / "out"
    segmenter = Segmenter(onnx_model, providers="cpu")
    first = predict_files(segmenter, folder, tmp_path / "first", progress=False)
    theirs = first[0].labels_path
    original = module.predict_case

    def racing(*args, **kwargs):
        out.mkdir(exist_ok=True)
        shutil.copy(theirs, out / theirs.name)  # the other `trm predict` finished this case meanwhile
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "predict_case", racing)
    with pytest.raises(FileExistsError, match="exists"):
        predict_files(segmenter, folder, out, progress=False)
    assert file_digest(out / theirs.name) == file_digest(theirs)
    assert sorted(p.name for p in out.iterdir()) == [theirs.name]


def test_predict_refuses_a_planted_symlink(phantom, onnx_model, tmp_path, capsys):
    folder = _copy_case(phantom, tmp_path / "in")
    outside = tmp_path / "elsewhere.nii.gz"
    outside.write_bytes(b"not yours")
    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_000.nii.gz").symlink_to(outside)
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", out, "--overwrite")
    assert code == 2 and "symbolic link" in err
    assert outside.read_bytes() == b"not yours"


def test_predict_refuses_complex_images(onnx_model, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        data = (np.random.default_rng(k).normal(size=(16, 16, 4)) + 1j).astype(np.complex64)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / f"c_{k:04d}.nii.gz"))
    code, err = _predict(capsys, "-m", onnx_model, "-i", folder, "-o", tmp_path / "out")
    assert code == 2 and "complex" in err and "c_0000.nii.gz" in err
    assert not (tmp_path / "out" / "c.nii.gz").exists()
    segmenter = Segmenter(onnx_model, providers="cpu")
    with pytest.raises(ValueError, match="complex"):
        segmenter.predict_volume([np.ones((16, 16, 4), np.complex64)] * 2)


@pytest.mark.parametrize("field, value, match", [
    ("label_names", ["background", "CSF", "GM", "WM"], "4 classes but the graph's output has 3"),
    ("label_names", ["background", "CSF"], "2 classes but the graph's output has 3"),
    ("channels", ["T1", "T2", "FLAIR"], "3 channels but the graph's input has 2"),
])
def test_metadata_that_disagrees_with_the_graph(onnx_model, tmp_path, capsys, field, value, match):
    model = onnx.load(str(onnx_model))
    for prop in model.metadata_props:
        if prop.key == "trmcore":
            record = json.loads(prop.value)
            record[field] = value
            if field == "label_names":
                record["label_values"] = list(range(len(value)))
            prop.value = json.dumps(record)
    path = tmp_path / "altered.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match=match):
        Segmenter(path, providers="cpu")
    code, err = _predict(capsys, "-m", path, "-i", tmp_path, "-o", tmp_path / "out")
    assert code == 2 and match in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- transferability
def test_transferability_json_never_replaces_an_input_or_existing_file(phantom, onnx_model, tmp_path, capsys):
    args = ["transferability", "-m", str(onnx_model), str(phantom), "--channel", "T1,T2", "--labels", "GM",
            "-q", "-o"]
    dataset_json = phantom / "dataset.json"
    digest = file_digest(dataset_json)
    for extra in ([], ["--overwrite"]):
        assert main(args + [str(dataset_json)] + extra) == 2
        assert "input" in capsys.readouterr().err
    assert file_digest(dataset_json) == digest
    label = sorted((phantom / "labelsTr").iterdir())[0]
    digest = file_digest(label)
    assert main(args + [str(label), "--overwrite"]) == 2
    assert file_digest(label) == digest
    assert main(args + [str(onnx_model), "--overwrite"]) == 2
    existing = tmp_path / "report.json"
    existing.write_text("earlier report")
    assert main(args + [str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "earlier report"
    assert main(args + [str(existing), "--overwrite"]) == 0
    assert json.loads(existing.read_text())["target_labels"] == ["background", "GM"]


@pytest.mark.parametrize("fill", [0.0, 7.0])
def test_transferability_skips_a_blank_case(phantom, onnx_model, fill):
    from trmcore.data import load_task_volumes, parse_task

    volumes, info = load_task_volumes(phantom, parse_task("T1,T2", "GM"), progress=False)
    volumes[1].image = np.full_like(volumes[1].image, fill)  # all-zero / constant after normalisation
    if fill:
        volumes[1].image[:] = 0.0  # a constant scan is all zero once z-scored
    segmenter = Segmenter(onnx_model, providers="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = assess_transferability(segmenter, volumes, info.label_names, progress=False)
    assert report.skipped_cases == [volumes[1].case_id]
    assert [c.case_id for c in report.cases] == [volumes[0].case_id, volumes[2].case_id]
    assert any(volumes[1].case_id in str(w.message) for w in caught)
    alone = assess_transferability(segmenter, [volumes[0], volumes[2]], info.label_names, progress=False)
    assert report.leep == pytest.approx(alone.leep, rel=1e-12)


def test_transferability_cli_with_a_blank_case(phantom, onnx_model, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    for path in (data / "imagesTr").glob("phantom_001_*.nii.gz"):
        image = nib.load(str(path))
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code = main(["transferability", "-m", str(onnx_model), str(data), "--channel", "T1,T2", "--labels", "GM",
                     "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped (no slice with tissue): phantom_001" in captured.out
    assert "trm transferability: warning: case 'phantom_001' skipped" in captured.err

"""A failed or interrupted `trm import` leaves no half-written dataset (issue 19).

The importer writes into a hidden folder beside the destination and renames it into place only when
complete; on failure or Ctrl-C it removes only that folder. Before the fix a corrupt second case left
DST with the first case, no dataset.json, and a marker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trmcore
from trmcore.cli.main import main
from trmcore.data import import_brats, import_iseg
from trmcore.fileio import MARKER_FILE, TEMP_PREFIX, TEST_HOLD_ENV

from .test_data_importers import _write_iseg

# Imports that fail midway (counted bad inputs): each must leave neither DST nor a staged folder.
FAILING_IMPORTS = ["truncated T1 of the second subject", "label value 7 in the second subject",
                   "missing T2 of the second subject"]


def _break(src: Path, how: str) -> None:
    if how.startswith("truncated"):
        img = src / "subject-2-T1.img"
        img.write_bytes(img.read_bytes()[:50])
    elif how.startswith("label"):
        import nibabel as nib
        import numpy as np

        path = src / "subject-2-label.hdr"
        image = nib.load(str(path))
        data = np.asarray(image.dataobj).copy()
        data.flat[0] = 7
        nib.save(nib.AnalyzeImage(data, image.affine), str(path))
    else:
        (src / "subject-2-T2.hdr").unlink()
        (src / "subject-2-T2.img").unlink()


def _leftovers(parent: Path):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.mark.parametrize("how", FAILING_IMPORTS)
def test_failed_import_leaves_no_destination_and_no_temporary_folder(tmp_path, how, capsys):
    src = _write_iseg(tmp_path / "iseg")
    _break(src, how)
    out = tmp_path / "datasets"
    out.mkdir()
    dst = out / "iseg"
    assert main(["import", "iseg", str(src), str(dst), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trm import: error:") and len(err.splitlines()) == 1
    assert not dst.exists() and _leftovers(out) == [] and sorted(os.listdir(out)) == []


def test_failed_overwrite_keeps_the_earlier_import(tmp_path):
    src = _write_iseg(tmp_path / "iseg")
    dst = import_iseg(src, tmp_path / "out", progress=False)
    (dst / "notes.txt").write_text("mine")  # not the importer's: kept in every case
    before = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*"))
    _break(src, "truncated")
    with pytest.raises(ValueError, match="subject-2"):
        import_iseg(src, dst, overwrite=True, progress=False)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == before
    assert _leftovers(tmp_path) == []


def test_overwrite_replaces_only_the_importers_entries(tmp_path):
    src = _write_iseg(tmp_path / "iseg", unlabelled=())
    dst = import_iseg(_write_iseg(tmp_path / "first"), tmp_path / "out", progress=False)
    (dst / "notes.txt").write_text("mine")
    import_iseg(src, dst, overwrite=True, progress=False)
    assert (dst / "notes.txt").read_text() == "mine" and not (dst / "imagesTs").exists()
    assert json.loads((dst / MARKER_FILE).read_text())["command"] == "import"
    assert json.loads((dst / "dataset.json").read_text())["numTraining"] == 2
    assert _leftovers(tmp_path) == []


def test_import_into_an_existing_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    dst = import_iseg(_write_iseg(tmp_path / "iseg"), tmp_path / "out", progress=False)
    assert (dst / "dataset.json").is_file() and _leftovers(tmp_path) == []


def test_failed_brats_import_leaves_nothing(tmp_path):
    src = tmp_path / "brats"
    (src / "c1").mkdir(parents=True)
    (src / "c1" / "c1_t1.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises((ValueError, FileNotFoundError)):
        import_brats(src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_ctrl_c_during_import_exits_130_and_leaves_nothing(tmp_path):
    """SIGINT at a known point: the first file is written to its temporary name and the import waits there."""
    src = _write_iseg(tmp_path / "iseg")
    out = tmp_path / "datasets"
    out.mkdir()
    ready = tmp_path / "ready"
    env = dict(os.environ, **{TEST_HOLD_ENV: str(ready)},
               PYTHONPATH=str(Path(trmcore.__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from trmcore.cli.main import main; sys.exit(main())",
                             "import", "iseg", str(src), str(out / "iseg"), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate(timeout=10)
        staged = [p for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
        assert len(staged) == 1 and not (out / "iseg").exists()  # the import is being built out of sight
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert stderr.strip() == "trm import: interrupted" and "Traceback" not in stderr
    assert sorted(os.listdir(out)) == []

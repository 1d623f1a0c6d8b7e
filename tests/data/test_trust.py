"""Issue 10 on the data commands: `--overwrite` replaces only what the same command made, never an input;
damaged files and bad label tables give one clear error."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from trmcore.cli.main import main
from trmcore.data import import_iseg, load_task_volumes, make_phantom, parse_task
from trmcore.errors import UnsafeOutputError
from trmcore.fileio import MARKER_FILE

from .helpers import simple_case, write_dataset
from .test_data_importers import _write_iseg

SMALL = dict(n_cases=1, sites=1, size=(16, 16, 8), seed=0, progress=False)


def test_phantom_overwrite_keeps_unrelated_files(tmp_path):
    out = make_phantom(tmp_path / "ph", **SMALL)
    (out / "notes.txt").write_text("my notes")
    (out / "mine").mkdir()
    (out / "mine" / "keep.nii.gz").write_bytes(b"user data")
    make_phantom(out, **dict(SMALL, seed=1), overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "mine" / "keep.nii.gz").read_bytes() == b"user data"
    assert json.loads((out / "dataset.json").read_text())["phantom"]["seed"] == 1
    assert json.loads((out / MARKER_FILE).read_text())["command"] == "phantom"


def test_phantom_overwrite_refuses_a_foreign_dataset_folder(tmp_path):
    # A dataset (with dataset.json) that `trm phantom` did not make: the old guard only looked for dataset.json.
    root = write_dataset(tmp_path / "real", {"c1": simple_case()})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(UnsafeOutputError, match="not made by `trm phantom`"):
        make_phantom(root, **SMALL, overwrite=True)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_phantom_overwrite_refuses_an_import(tmp_path):
    src = _write_iseg(tmp_path / "iseg", subjects=(1,), unlabelled=())
    dst = import_iseg(src, tmp_path / "std", progress=False)
    with pytest.raises(UnsafeOutputError, match="made by `trm import`"):
        make_phantom(dst, **SMALL, overwrite=True)
    assert (dst / "labelsTr" / "subject-1.nii.gz").is_file()


def test_import_overwrite_with_source_inside_destination_refused(tmp_path, capsys):
    dst = tmp_path / "dst"
    src = _write_iseg(dst / "raw", subjects=(1,), unlabelled=())
    files = sorted(p.name for p in src.iterdir())
    assert main(["import", "iseg", str(src), str(dst), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds the input" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in src.iterdir()) == files
    # The same with a destination an earlier import made (marker present): still refused.
    dst2 = tmp_path / "dst2"
    import_iseg(_write_iseg(tmp_path / "iseg", subjects=(1,), unlabelled=()), dst2, progress=False)
    src2 = _write_iseg(dst2 / "raw", subjects=(2,), unlabelled=())
    with pytest.raises(UnsafeOutputError):
        import_iseg(src2, dst2, overwrite=True, progress=False)
    assert (src2 / "subject-2-T1.hdr").is_file()


def test_import_overwrite_replaces_its_own_output(tmp_path):
    src = _write_iseg(tmp_path / "iseg", subjects=(1, 2), unlabelled=())
    dst = import_iseg(src, tmp_path / "std", progress=False)
    (dst / "README.md").write_text("kept")
    src_one = _write_iseg(tmp_path / "iseg1", subjects=(1,), unlabelled=())
    import_iseg(src_one, dst, overwrite=True, progress=False)
    assert sorted(p.name for p in (dst / "labelsTr").iterdir()) == ["subject-1.nii.gz"]
    assert (dst / "README.md").read_text() == "kept"


def test_demo_overwrite_refuses_a_foreign_folder(tmp_path, capsys):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    assert main(["demo", "-o", str(folder), "--overwrite", "-q"]) == 2
    assert "not made by `trm demo`" in capsys.readouterr().err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_phantom_into_unwritable_place_is_one_line(tmp_path, capsys):
    # /proc refuses new entries even for root: an OSError from the OS, reported with its path.
    assert main(["phantom", "/proc/trmcore-test-out", "--cases", "1", "--shape", "16", "16", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "/proc/trmcore-test-out" in err and "Traceback" not in err


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("which", ["image", "label"])
def test_truncated_nifti_in_training_set_names_the_file(tmp_path, which):
    root = write_dataset(tmp_path / "d", {"c1": simple_case(), "c2": simple_case(seed=1)})
    bad = root / ("imagesTr/c2_0000.nii.gz" if which == "image" else "labelsTr/c2.nii.gz")
    _truncate(bad)
    with pytest.raises(ValueError, match=r"c2.*(damaged|truncated|cannot read)") as info:
        load_task_volumes(root, parse_task("T1", "CSF"), progress=False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_two_label_names_with_one_value(tmp_path):
    root = write_dataset(tmp_path / "d", {"c1": simple_case()},
                         labels={"background": 0, "CSF": 1, "GM": 1, "WM": 3})
    with pytest.raises(ValueError, match=r"'CSF' and 'GM' have the same value 1"):
        load_task_volumes(root, parse_task("T1", "GM"), progress=False)


def test_gzip_helper_is_really_truncated(tmp_path):
    # Guard of the test above: a half .nii.gz is a gzip stream cut short, not another error.
    root = write_dataset(tmp_path / "d", {"c1": simple_case()})
    path = root / "imagesTr" / "c1_0000.nii.gz"
    _truncate(path)
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())


def test_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import trmcore.fileio as fileio

    def full(tmp, path, overwrite):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "_commit", full)
    out = tmp_path / "ph"
    assert main(["phantom", str(out), "--cases", "1", "--shape", "16", "16", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(out) in err
    assert not [p for p in out.rglob("*") if p.name.startswith(fileio.TEMP_PREFIX)]


def test_empty_half_created_folder_is_removable(tmp_path):
    from trmcore.fileio import remove_output_folder

    folder = tmp_path / "run"
    folder.mkdir()
    remove_output_folder(folder, "train")
    assert not folder.exists()


def test_truncated_file_in_an_import_names_the_file(tmp_path):
    from trmcore.data import import_brats

    from .test_data_importers import _write_brats

    src = _write_brats(tmp_path / "fets", cases=("A_1",), unlabelled=())
    seg = src / "A_1" / "A_1_seg.nii.gz"
    _truncate(seg)
    with pytest.raises(ValueError, match=r"case A_1: cannot read .*A_1_seg\.nii\.gz"):
        import_brats(src, tmp_path / "out", progress=False)

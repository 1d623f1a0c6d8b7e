"""Issue 19: NIfTI headers are checked before any voxel is read.

A header declares a shape (checked against the memory budget, trmcore.limits), voxel sizes (pixdim) and an
affine (sform/qform): NaN, infinite, zero, negative or singular ones are refused with one error naming the
file, instead of nibabel's "SVD did not converge" / "Unable to find out axis", a silent 1 mm, or gigabytes.
The hostile files are written byte by byte (nibabel's own writer would repair them).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from trmcore import limits
from trmcore.data.geometry import Geometry, check_affine, plan_grid
from trmcore.data.nifti import check_header, load_image, load_label
from trmcore.infer.nifti_files import load_image as infer_load_image
from trmcore.limits import ResourceLimitError

# Every hostile header this module tries (the acceptance counts the bad-input cases).
BAD_INPUTS = [
    "nan-sform", "inf-sform", "singular-sform", "zero-column-sform", "nan-pixdim-no-sform",
    "nan-pixdim-with-sform", "zero-pixdim-qform", "negative-pixdim-qform", "zero-pixdim-no-sform",
    "nan-quaternion", "header-declares-512^3-beyond-budget", "label-declares-512^3-beyond-budget",
    "resampling-1e-6-mm-to-1-mm", "resampling-1-mm-to-1e-6-mm", "nan-affine-array", "singular-affine-array",
    "import-iseg-nan-pixdim", "import-iseg-zero-pixdim", "import-iseg-beyond-budget",
    "run-records-1e-6-mm-training-load",
]


def write_raw_nifti(path: Path, shape=(4, 5, 3), dtype=np.float32, srow=None, sform_code=1, qform_code=0,
                    pixdim=(1.0, 1.0, 1.0), quaternion=None, data_bytes=None) -> Path:
    """A .nii / .nii.gz written byte by byte: the header exactly as given (nibabel's writer would fix it).

    ``data_bytes`` None writes zeros for the whole declared shape; b"" writes the header only.
    """
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["pixdim"][1:4] = pixdim
    header["sform_code"], header["qform_code"] = sform_code, qform_code
    srow = np.eye(4) if srow is None else np.asarray(srow, np.float64)
    header["srow_x"], header["srow_y"], header["srow_z"] = srow[0], srow[1], srow[2]
    if quaternion is not None:
        header["quatern_b"], header["quatern_c"], header["quatern_d"] = quaternion
    header["vox_offset"] = 352
    if data_bytes is None:
        data_bytes = bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize)
    blob = header.binaryblock + bytes(4) + data_bytes
    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb", compresslevel=1) as handle:
            handle.write(blob)
    else:
        path.write_bytes(blob)
    return path


HOSTILE_HEADERS = {
    "nan-sform": (dict(srow=np.diag([np.nan, 1, 1, 1])), "NaN or infinite"),
    "inf-sform": (dict(srow=np.diag([np.inf, 1, 1, 1])), "NaN or infinite"),
    "singular-sform": (dict(srow=[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular"),
    "zero-column-sform": (dict(srow=np.diag([0.0, 1, 1, 1])), "size of 0 mm"),
    "nan-pixdim-no-sform": (dict(sform_code=0, pixdim=(np.nan, 1, 1)), "pixdim"),
    "nan-pixdim-with-sform": (dict(pixdim=(np.nan, 1, 1)), "pixdim"),
    "zero-pixdim-qform": (dict(sform_code=0, qform_code=1, pixdim=(0.0, 1, 1)), "must be positive"),
    "negative-pixdim-qform": (dict(sform_code=0, qform_code=1, pixdim=(-1.0, 1, 1)), "must be positive"),
    "zero-pixdim-no-sform": (dict(sform_code=0, qform_code=0, pixdim=(1.0, 0.0, 1)), "must be positive"),
    "nan-quaternion": (dict(sform_code=0, qform_code=1, quaternion=(np.nan, 0, 0)), "NaN or infinite"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_headers_are_refused_by_every_reader(tmp_path, name):
    kwargs, words = HOSTILE_HEADERS[name]
    path = write_raw_nifti(tmp_path / f"{name}.nii", **kwargs)
    readers = [lambda: load_image(path, "c1"), lambda: load_label(path, "c1", [0]),
               lambda: infer_load_image(path)]
    for read in readers:
        with pytest.raises(ValueError) as info:
            read()
        message = str(info.value)
        assert str(path) in message and words in message and "\n" not in message, message


def test_a_sane_header_still_loads(tmp_path):
    path = write_raw_nifti(tmp_path / "ok.nii", srow=np.diag([-0.9, 1.1, 3.0, 1]), pixdim=(0.9, 1.1, 3.0))
    data, affine, _ = load_image(path, "c1")
    assert data.shape == (4, 5, 3) and np.allclose(np.diag(affine)[:3], [-0.9, 1.1, 3.0])
    assert infer_load_image(path).shape == (4, 5, 3)


@pytest.fixture
def small_budget():
    limits.set_memory_limit("64M")
    yield 64 * 2**20
    limits.set_memory_limit(None)


def test_declared_size_is_refused_before_reading(tmp_path, small_budget):
    # Header only: 512^3 float32 declared, no data. Reading would need 512 MiB (and then fail as truncated):
    # the budget refuses it first, naming the file and the figure.
    path = write_raw_nifti(tmp_path / "huge.nii.gz", shape=(512, 512, 512), data_bytes=b"")
    for read, what in ((lambda: load_image(path, "c1"), "x5"), (lambda: infer_load_image(path), "x5"),
                       (lambda: load_label(path, "c1", [0]), "x7")):
        with pytest.raises(ResourceLimitError) as info:
            read()
        message = str(info.value)
        assert str(path) in message and "512x512x512 voxels" in message and what in message
        assert "over the 64.0 MiB memory limit" in message and "--memory-limit" in message


def test_budget_counts_the_stored_type(tmp_path):
    # float64 data count 8 bytes a voxel, never less than the float32 working copy.
    img = nib.Nifti1Image(np.zeros((64, 64, 64), np.float64), np.eye(4))
    check_header(img, "x.nii", copies=1)  # within any sane budget
    with pytest.raises(ResourceLimitError, match=r"x.nii: 64x64x64 voxels .* need 2.0 MiB"):
        limits.set_memory_limit(2**20)
        try:
            check_header(img, "x.nii", copies=1)
        finally:
            limits.set_memory_limit(None)


def test_working_grid_is_budgeted_before_resampling():
    limits.set_memory_limit("256M")
    try:
        shape = (36, 44, 10)
        tiny = np.diag([1e-6, 1e-6, 1.0, 1.0])
        # 1e-6 mm voxels brought to 1e-6 mm: no resampling, nothing to refuse.
        assert plan_grid(shape, tiny, Geometry("RAS", (1e-6, 1e-6, 1.0))).working_shape == shape
        # 1 mm voxels brought to a recorded 1e-6 mm (a hostile run.json / model spacing): 3.6e7 x 4.4e7 voxels.
        with pytest.raises(ResourceLimitError, match=r"case_0000.nii.gz: resampling 36x44x10 voxels .* gives "
                                                     r"36000000x44000000x10 voxels"):
            plan_grid(shape, np.eye(4), Geometry("RAS", (1e-6, 1e-6, 1.0)), "case_0000.nii.gz")
        # And the other way: 1e-6 mm voxels given a 1e6 larger grid than the model's 1 mm is still bounded.
        with pytest.raises(ResourceLimitError):
            plan_grid((4, 4, 2), np.diag([1e6, 1e6, 1, 1]), Geometry("RAS", (1e-6, 1e-6, 1.0)))
    finally:
        limits.set_memory_limit(None)


def test_plan_grid_refuses_unusable_affines_by_name():
    with pytest.raises(ValueError, match="scan.nii: the affine .* NaN"):
        plan_grid((4, 4, 4), np.diag([np.nan, 1, 1, 1]), Geometry("RAS", (1.0, 1.0, 1.0)), "scan.nii")
    with pytest.raises(ValueError, match="scan.nii: the affine .* singular"):
        check_affine([[1, 2, 0, 0], [2, 4, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "scan.nii")
    assert check_affine(np.diag([0.5, 0.5, 2.0, 1.0])).shape == (4, 4)


def test_memory_limit_option_parsing(monkeypatch):
    assert limits.parse_size("8G") == 8 * 2**30 and limits.parse_size("1.5GiB") == 3 * 2**29
    assert limits.parse_size("512m") == 512 * 2**20 and limits.parse_size(4096) == 4096
    for bad in ("", "0", "-1G", "nan", "8X", "1e9", True):
        with pytest.raises(ValueError):
            limits.parse_size(bad)
    monkeypatch.setenv(limits.MEMORY_ENV, "3G")
    assert limits.memory_limit() == 3 * 2**30
    limits.set_memory_limit("1G")
    try:
        assert limits.memory_limit() == 2**30  # the option wins over the environment
    finally:
        limits.set_memory_limit(None)
    monkeypatch.setenv(limits.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="TRM_MEMORY_LIMIT"):
        limits.memory_limit()
    monkeypatch.delenv(limits.MEMORY_ENV)
    total = limits.physical_memory()
    assert total and limits.memory_limit() == int(total * limits.DEFAULT_FRACTION)


@pytest.mark.parametrize("value", [np.nan, 0.0])
def test_import_refuses_damaged_analyze_headers(tmp_path, capsys, value):
    from trmcore.cli.main import main

    from .test_data_importers import _write_iseg

    src = _write_iseg(tmp_path / "iseg", subjects=(1,), unlabelled=())
    hdr_path = src / "subject-1-T2.hdr"
    header = nib.AnalyzeHeader.from_fileobj(open(hdr_path, "rb"), check=False)
    header["pixdim"][2] = value
    hdr_path.write_bytes(header.binaryblock)
    code = main(["import", "iseg", "-q", str(src), str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and str(hdr_path) in err[0] and "pixdim" in err[0], err
    assert not (tmp_path / "out" / "imagesTr" / "subject-1_0001.nii.gz").exists()


def test_import_refuses_a_declared_size_beyond_the_budget(tmp_path, capsys):
    from trmcore.cli.main import main

    from .test_data_importers import _write_iseg

    src = _write_iseg(tmp_path / "iseg", subjects=(1,), unlabelled=())
    code = main(["--memory-limit", "8K", "import", "iseg", "-q", str(src), str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "subject-1-T1.hdr" in err[0] and "8.0 KiB memory limit" in err[0], err


def test_training_load_budgets_a_recorded_microscopic_spacing(phantom_root):
    # A run.json recording 1e-6 mm voxels (evaluate, finetune and riskmap load with the run's geometry).
    from trmcore.data import load_task_volumes, parse_task

    with pytest.raises(ResourceLimitError, match=r"case \S+: resampling .* voxels .* memory limit"):
        load_task_volumes(phantom_root, parse_task("T1", "CSF"), progress=False,
                          geometry=Geometry("RAS", (1e-6, 1e-6, 1.0)))

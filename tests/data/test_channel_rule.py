"""One channel-to-file rule for every reader (issue 19).

dataset.json ``channel_names`` keys are the file suffix numbers (nnU-Net's convention): with keys that
skip a number, ``{"0": "T2", "2": "T1"}``, the T1 file is ``CASE_0002`` for the training loader, the
evaluation/risk-map/transferability loader (``load_task_volumes``) and ``trm predict`` alike. Before the
fix predict read ``CASE_0001`` as T1 (the position of "T1" in the sorted names).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from trmcore.data import DatasetLayout, load_task_volumes, parse_task
from trmcore.data.geometry import native_geometry
from trmcore.data.tasks import TaskInfo
from trmcore.infer.nifti_files import declared_channel_names, find_cases
from trmcore.infer.predict_files import channel_indices

# channel_names values every reader must refuse with one line naming dataset.json (counted bad inputs).
BAD_CHANNEL_NAMES = [
    {"-1": "T1"},                   # negative file index
    {"10000": "T1"},                # five digits: no CASE_XXXX file can carry it
    {"1_0": "T1"},                  # int() would read 10
    {" 1": "T1"},                   # int() would strip the blank
    {"\u0663": "T1"},               # an Arabic-Indic three: int() reads 3
    {"1.0": "T1"},
    {"one": "T1"},
    {"1": "T1", "01": "T2"},        # two keys, one file _0001
    {"0": "T1", "1": "t1"},         # names equal ignoring case: a task could not tell them apart
    {"0": ""},                      # no name
    {"0": 5},                       # not a string
    {},                             # no channel
    ["T1", "T2"],                   # not an object
]


def _write_case(path: Path, file_index: int) -> None:
    """A 3D volume whose header says which file it is (``descrip``), so a test can see which file was read."""
    rng = np.random.default_rng(file_index)
    data = np.zeros((8, 8, 4), np.float32)
    data[2:6, 2:6, 1:3] = rng.uniform(50, 150, (4, 4, 2))
    image = nib.Nifti1Image(data, np.eye(4))
    image.header["descrip"] = f"file {file_index}".encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def _dataset(root: Path, channel_names, files=(0, 1, 2)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": {"background": 0, "X": 1}, "file_ending": ".nii.gz"}))
    for case in ("a", "b"):
        for k in files:
            _write_case(root / "imagesTr" / f"{case}_{k:04d}.nii.gz", k)
        label = np.zeros((8, 8, 4), np.uint8)
        label[3:5, 3:5, 1:3] = 1
        (root / "labelsTr").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / f"{case}.nii.gz"))
    return root


def _training_files(root: Path, channels: str):
    layout = DatasetLayout.read(root)
    info = TaskInfo.resolve(layout, parse_task(channels, "X"))
    return [layout.image_path("a", k).name for k in info.channel_indices]


def _predict_files(root: Path, model_channels):
    names = declared_channel_names(root / "imagesTr")
    cases = find_cases(root / "imagesTr", len(model_channels), channel_indices(names, model_channels))
    return [p.name for p in cases[0].channel_paths]


@pytest.mark.parametrize("channels", [["T1"], ["T2"], ["T1", "T2"], ["T2", "T1"]])
def test_skipping_keys_map_to_the_same_file_in_training_and_predict(tmp_path, channels):
    root = _dataset(tmp_path / "data", {"0": "T2", "2": "T1"})
    suffix = {"T2": "a_0000.nii.gz", "T1": "a_0002.nii.gz"}
    expected = [suffix[c] for c in channels]
    assert _training_files(root, ",".join(channels)) == expected
    assert _predict_files(root, channels) == expected  # before: T1 -> a_0001.nii.gz


def test_the_loader_reads_the_file_the_key_names(tmp_path):
    """load_task_volumes (training, evaluation, risk maps, transferability) reads CASE_0002 for key "2"."""
    root = _dataset(tmp_path / "data", {"0": "T2", "2": "T1"})
    volumes, info = load_task_volumes(root, parse_task("T1", "X"), progress=False, geometry=native_geometry())
    assert info.channel_indices == [2]
    assert [bytes(v.header["descrip"]).rstrip(b"\0") for v in volumes] == [b"file 2", b"file 2"]
    # The single-file form of predict brings the same sibling along.
    cases = find_cases(root / "imagesTr" / "a_0002.nii.gz", 1,
                       channel_indices(declared_channel_names(root / "imagesTr"), ["T1"]))
    assert [p.name for p in cases[0].channel_paths] == ["a_0002.nii.gz"]


def test_contiguous_keys_and_the_channels_option_are_unchanged(tmp_path):
    root = _dataset(tmp_path / "data", {"0": "T1", "1": "T2"}, files=(0, 1))
    assert _training_files(root, "T2") == _predict_files(root, ["T2"]) == ["a_0001.nii.gz"]
    # --channels lists names in file order _0000, _0001, ...
    assert channel_indices(["T1", "T2"], ["T2"]) == [1]
    assert channel_indices({0: "T2", 2: "T1"}, ["t1", "T2"]) == [2, 0]


def test_missing_file_of_a_skipping_key_is_named(tmp_path):
    root = _dataset(tmp_path / "data", {"0": "T2", "2": "T1"}, files=(0, 1))
    with pytest.raises(FileNotFoundError, match="a_0002"):
        load_task_volumes(root, parse_task("T1", "X"), progress=False)
    with pytest.raises(ValueError, match="lacks _0002"):
        _predict_files(root, ["T1"])


@pytest.mark.parametrize("raw", BAD_CHANNEL_NAMES, ids=[json.dumps(b, ensure_ascii=True) for b in BAD_CHANNEL_NAMES])
def test_every_reader_refuses_the_same_bad_channel_names(tmp_path, raw):
    root = _dataset(tmp_path / "data", raw, files=(0,))
    with pytest.raises(ValueError, match="dataset.json") as training:
        DatasetLayout.read(root)
    with pytest.raises(ValueError, match="dataset.json") as predict:
        declared_channel_names(root / "imagesTr")
    assert "\n" not in str(training.value) and str(training.value) == str(predict.value)

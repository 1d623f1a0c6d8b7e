"""Standard layout reading, sites, and task -> class mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trmcore.data import DatasetLayout, TaskInfo, load_task_volumes, parse_task, read_sites_csv

from .helpers import simple_case, write_dataset


def test_layout_reads_channels_labels_cases_and_sites(tmp_path):
    root = write_dataset(tmp_path / "ds", {"b": simple_case(), "a": simple_case(seed=1)}, sites={"a": "X", "b": "Y"})
    layout = DatasetLayout.read(root)
    assert layout.channel_names == {0: "T1", 1: "T2"}
    assert layout.labels == {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
    assert layout.cases() == ["a", "b"]
    assert layout.site_of("a") == "X" and layout.site_of("b") == "Y"
    assert layout.channel_index("t2") == 1  # case-insensitive when unambiguous


def test_missing_dataset_json_is_named(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        DatasetLayout.read(tmp_path / "ds")


def test_unknown_channel_and_label_list_the_choices(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": simple_case()})
    with pytest.raises(ValueError, match=r"channel 'PD' .*T1, T2"):
        load_task_volumes(root, parse_task("PD", "CSF"), progress=False)
    with pytest.raises(ValueError, match=r"label 'ET' .*CSF, GM, WM"):
        load_task_volumes(root, parse_task("T1", "ET"), progress=False)


def test_parse_task_splits_names():
    task = parse_task("T1, T2", "NCR,ED,ET", site="13")
    assert task.channels == ["T1", "T2"] and task.labels == ["NCR", "ED", "ET"] and task.site == "13"
    with pytest.raises(ValueError, match="background"):
        parse_task("T1", "background,CSF")
    with pytest.raises(ValueError, match="channel"):
        parse_task("", "CSF")


def test_binary_task_maps_other_labels_to_background(tmp_path):
    case = simple_case()
    root = write_dataset(tmp_path / "ds", {"a": case})
    vols, info = load_task_volumes(root, parse_task("T1", "GM"), progress=False)
    assert info.label_names == ["background", "GM"] and info.num_classes == 2
    np.testing.assert_array_equal(vols[0].label, (case["label"] == 2).astype(np.int64))
    assert vols[0].label.dtype == np.int64


def test_multiclass_task_with_original_values(tmp_path):
    # iSeg keeps 10/150/250 in dataset.json: classes follow the task's order.
    case = simple_case()
    raw = np.choose(case["label"], [0, 10, 150, 250]).astype(np.uint8)
    case["label"] = raw
    root = write_dataset(tmp_path / "ds", {"a": case}, labels={"background": 0, "CSF": 10, "GM": 150, "WM": 250})
    vols, info = load_task_volumes(root, parse_task("T1,T2", "WM,CSF"), progress=False)
    assert info.label_values == [0, 250, 10]
    expected = np.zeros(raw.shape, np.int64)
    expected[raw == 250] = 1
    expected[raw == 10] = 2
    np.testing.assert_array_equal(vols[0].label, expected)
    assert vols[0].image.shape == (2, *raw.shape) and vols[0].image.dtype == np.float32


def test_region_labels_later_class_wins():
    info = TaskInfo(["T1"], ["background", "WT", "TC"], [0, (1, 2, 4), (1, 4)], 3)
    raw = np.array([0, 1, 2, 4, 3])
    np.testing.assert_array_equal(info.map_labels(raw), [0, 2, 1, 2, 0])


def test_site_filter_from_json_and_csv(tmp_path):
    cases = {f"c{i}": simple_case(seed=i) for i in range(4)}
    root = write_dataset(tmp_path / "ds", cases, sites={"c0": "A", "c1": "B", "c2": "A", "c3": "B"})
    vols, _ = load_task_volumes(root, parse_task("T1", "CSF", site="A"), progress=False)
    assert [v.case_id for v in vols] == ["c0", "c2"] and {v.site for v in vols} == {"A"}
    csv_path = tmp_path / "partitioning.csv"
    csv_path.write_text("Partition_ID,Subject_ID\n1,c0\n1,c1\n2,c2\n2,c3\n")
    assert read_sites_csv(csv_path) == {"c0": "1", "c1": "1", "c2": "2", "c3": "2"}
    vols, _ = load_task_volumes(root, parse_task("T1", "CSF", site="2"), sites=csv_path, progress=False)
    assert [v.case_id for v in vols] == ["c2", "c3"]


def test_sites_csv_bad_header(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("foo,bar,baz\nx\n")
    with pytest.raises(ValueError, match="s.csv"):
        read_sites_csv(path)


def test_dataset_json_without_background_is_rejected(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": simple_case()}, labels={"CSF": 1})
    with pytest.raises(ValueError, match="background"):
        DatasetLayout.read(root)
    meta = json.loads((root / "dataset.json").read_text())
    assert "labels" in meta

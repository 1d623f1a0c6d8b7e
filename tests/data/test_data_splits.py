"""Issue 22: cross-validation folds in splits_final.json (nnU-Net's format), written once."""

from __future__ import annotations

import json

import pytest

from trmcore.data.splits import SPLITS_FILE, dataset_splits, fold_cases, make_splits, read_splits

CASES = [f"case_{i:03d}" for i in range(12)]


def test_folds_are_disjoint_and_cover_every_case():
    splits = make_splits(CASES)
    assert len(splits) == 5
    vals = [set(s["val"]) for s in splits]
    assert sorted(len(v) for v in vals) == [2, 2, 2, 3, 3]
    assert set().union(*vals) == set(CASES)
    assert sum(len(v) for v in vals) == len(CASES)  # disjoint
    for split in splits:
        assert set(split["train"]) | set(split["val"]) == set(CASES)
        assert not set(split["train"]) & set(split["val"])
        assert split["train"] == sorted(split["train"]) and split["val"] == sorted(split["val"])


def test_folds_are_a_function_of_the_case_list():
    assert make_splits(CASES) == make_splits(list(reversed(CASES))) == make_splits(CASES + CASES[:3])
    assert make_splits(CASES) != make_splits(CASES[:-1])
    assert make_splits(CASES) != make_splits(CASES, seed=1)
    with pytest.raises(ValueError, match="3 case"):
        make_splits(CASES[:3], folds=5)


def test_written_once_never_overwritten_and_edits_are_read(tmp_path):
    splits, path, written = dataset_splits(tmp_path, CASES)
    assert written and path == tmp_path / SPLITS_FILE
    assert json.loads(path.read_text()) == splits  # a plain list of {"train", "val"}
    edited = [{"train": CASES[:6], "val": CASES[6:]}, {"train": CASES[6:], "val": CASES[:6]}]
    path.write_text(json.dumps(edited))
    again, _, written = dataset_splits(tmp_path, CASES + ["case_999"])
    assert not written and again == edited
    assert fold_cases(again, 1, ["case_007", "case_001", "case_002"]) == (["case_007"], ["case_001", "case_002"])


def test_small_dataset_gets_one_fold_per_case(tmp_path):
    splits, _, _ = dataset_splits(tmp_path, ["a", "b", "c"])
    assert [s["val"] for s in splits] and sorted(c for s in splits for c in s["val"]) == ["a", "b", "c"]


def test_bad_files_and_folds_are_one_line_errors(tmp_path):
    path = tmp_path / SPLITS_FILE
    path.write_text('{"train": []}')
    with pytest.raises(ValueError, match="non-empty list"):
        read_splits(path)
    path.write_text('[{"train": ["a"], "val": ["a"]}]')
    with pytest.raises(ValueError, match="both trains and validates"):
        read_splits(path)
    splits = make_splits(CASES)
    with pytest.raises(ValueError, match="fold 5 does not exist"):
        fold_cases(splits, 5, CASES)
    with pytest.raises(ValueError, match="does not name case"):
        fold_cases(splits, 0, CASES + ["new_case"])

"""Cross-validation folds: ``splits_final.json`` in the dataset, as nnU-Net writes and reads it.

The file is a JSON list with one entry per fold, ``{"train": [case ids],
"val": [case ids]}``. trmcore writes it once, the first time a run asks for a
fold (``trm train --fold K``), from every case of the dataset: the sorted
case ids, shuffled with a fixed seed, cut into :data:`DEFAULT_FOLDS`
contiguous chunks of sizes differing by at most one (a dataset of fewer cases:
one fold per case); fold ``k`` validates on
chunk ``k`` and trains on the others. So the validation sets are disjoint and
cover the dataset, and the split is a function of the case list alone.

The file is never overwritten once written: a user may edit it (other folds,
a patient-wise split, nnU-Net's own file) and every later run reads it. A run
on a task that uses some of the dataset's cases (one site, say) trains on the
fold's training cases among them and validates on its validation cases among
them; a case of the task that the file does not name is refused.

Example:
    >>> splits = make_splits([f"case_{i}" for i in range(10)], folds=5)
    >>> len(splits), sorted(len(s["val"]) for s in splits)
    (5, [2, 2, 2, 2, 2])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from trmcore.fileio import atomic_write_json

SPLITS_FILE = "splits_final.json"
DEFAULT_FOLDS = 5
# nnU-Net's seed of its KFold; the shuffle itself is NumPy's, so the folds are not nnU-Net's own.
SPLIT_SEED = 12345

Split = Dict[str, List[str]]


def make_splits(cases: Sequence[str], folds: int = DEFAULT_FOLDS, seed: int = SPLIT_SEED) -> List[Split]:
    """``folds`` train/val splits of ``cases`` (order-independent: the ids are sorted first)."""
    unique = sorted(set(cases))
    if len(unique) < folds:
        raise ValueError(f"{len(unique)} case(s) cannot be split into {folds} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    chunks = np.array_split(np.arange(len(shuffled)), folds)
    splits = []
    for chunk in chunks:
        held = {shuffled[i] for i in chunk}
        splits.append({"train": [c for c in unique if c not in held], "val": sorted(held)})
    return splits


def read_splits(path: Union[str, Path]) -> List[Split]:
    """The folds of a ``splits_final.json``; ValueError naming the file when it is not such a list."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the folds ({err})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of {{\"train\": [...], \"val\": [...]}}")
    for k, entry in enumerate(data):
        if (not isinstance(entry, dict) or not all(isinstance(entry.get(key), list) for key in ("train", "val"))
                or not all(isinstance(c, str) for key in ("train", "val") for c in entry[key])):
            raise ValueError(f"{path}: fold {k} is not {{\"train\": [case ids], \"val\": [case ids]}}")
        both = set(entry["train"]) & set(entry["val"])
        if both:
            raise ValueError(f"{path}: fold {k} both trains and validates on {sorted(both)[:3]}")
    return [{"train": list(e["train"]), "val": list(e["val"])} for e in data]


def dataset_splits(data_root: Union[str, Path], cases: Sequence[str],
                   folds: int = DEFAULT_FOLDS) -> Tuple[List[Split], Path, bool]:
    """``(splits, path, written)``: the dataset's ``splits_final.json``, written from ``cases`` if absent."""
    path = Path(data_root) / SPLITS_FILE
    if path.exists():
        return read_splits(path), path, False
    # Fewer cases than folds (a small dataset): one fold per case, leave-one-out.
    splits = make_splits(cases, max(2, min(folds, len(set(cases)))))
    try:
        atomic_write_json(path, splits, overwrite=False)
    except FileExistsError:  # another process wrote it first: use theirs
        return read_splits(path), path, False
    return splits, path, True


def fold_cases(splits: List[Split], fold: int, cases: Sequence[str], what: str = SPLITS_FILE) -> Tuple[
        List[str], List[str]]:
    """``(train, val)``: the ``cases`` (in their order) the fold trains and validates on."""
    if not 0 <= fold < len(splits):
        raise ValueError(f"fold {fold} does not exist: {what} has folds 0-{len(splits) - 1}")
    train, val = set(splits[fold]["train"]), set(splits[fold]["val"])
    missing = [c for c in cases if c not in train and c not in val]
    if missing:
        raise ValueError(f"{what} does not name case(s) {', '.join(missing[:5])} in fold {fold}; add them to its "
                         "'train' or 'val' list (or delete the file to have it written again)")
    return [c for c in cases if c in train], [c for c in cases if c in val]

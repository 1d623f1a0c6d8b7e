"""``trm import dicom SRC DST``: DICOM studies (+ labels) into the standard layout, so the same data can train.

Needs the ``dicom`` extra (pydicom; highdicom for DICOM-SEG labels).

- Series are found and read as :mod:`trmcore.data.dicom` does for ``trm predict``
  (same sorting, affine and refusals), so a model trained on the import and
  applied to the DICOM sees the same grids.
- Channels: ``--series NAME=SELECTOR`` per channel (a SeriesInstanceUID or a
  SeriesDescription pattern, as ``trm predict --series``); each study with a
  match for every channel is one case. Without ``--series`` every series is a
  case of one channel named after its modality (``CT``, ``MR``...).
- A case is named by its first channel's SeriesInstanceUID, as ``trm predict``
  names its outputs, so ``trm evaluate DST --predictions OUT`` pairs them.
  ``cases.json`` maps each case to its study and series UIDs (no other
  identifier of the patient is written).
- Labels: DICOM Segmentations found under SRC (or ``--labels DIR``) that
  reference a case's first-channel series (segment numbers become label
  values, segment labels the label names; all Segmentations must agree), and
  NIfTI files ``CASE.nii.gz`` in ``--labels DIR`` on the series' grid (names
  and values from ``--label-names CSF=1,GM=2``). Cases without labels go to
  ``imagesTs``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from trmcore.fileio import atomic_write_json, staged_output_folder

from .importers import Importer, _progress, _write, _write_dataset_json, register_importer
from .layout import DATASET_ENTRIES


def parse_label_names(text: Optional[str]) -> Optional[Dict[str, int]]:
    """``"CSF=1,GM=2"`` -> ``{"CSF": 1, "GM": 2}`` (ValueError when malformed)."""
    if not text:
        return None
    out: Dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) == 0:
            raise ValueError(f"--label-names {text!r}: expected NAME=VALUE,... with values > 0, got {item!r}")
        out[name.strip()] = int(value)
    return out


def import_dicom(src, dst, series: Optional[List[str]] = None, labels: Optional[Path] = None,
                 label_names: Optional[Dict[str, int]] = None, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Convert the DICOM studies under ``src`` into a dataset at ``dst`` (see the module docstring)."""
    from trmcore.data.dicom import find_series, is_dicom_file, parse_series_map, require_pydicom

    pydicom = require_pydicom("trm import dicom")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"DICOM source folder not found: {src}")
    mapping = parse_series_map(series)
    found = find_series(src)
    if not found:
        raise FileNotFoundError(f"no image series under {src}")
    cases = _cases(found, mapping)
    label_dir = None if labels is None else Path(labels)
    if label_dir is not None and not label_dir.is_dir():
        raise FileNotFoundError(f"label folder not found: {label_dir}")
    segs: Dict[str, Path] = {}
    for folder in [src] + ([label_dir] if label_dir is not None else []):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and is_dicom_file(path):
                ds = pydicom.dcmread(str(path), stop_before_pixels=True)
                if getattr(ds, "Modality", "") == "SEG" and "ReferencedSeriesSequence" in ds:
                    uid = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
                    if uid in segs:
                        raise ValueError(f"two DICOM Segmentations reference series {uid}: {segs[uid]} and {path}")
                    segs[uid] = path
    # Written out of sight and moved onto dst only when complete (a failed or interrupted import leaves dst
    # as it was); --overwrite replaces only an earlier import's entries (by its marker), never the source data.
    with staged_output_folder(dst, "import", DATASET_ENTRIES + ("cases.json",), overwrite=overwrite,
                              inputs=[src, label_dir]) as out:
        _convert(out, cases, mapping, segs, label_dir, label_names, progress)
    return dst


def _convert(out: Path, cases, mapping, segs: Dict[str, Path], label_dir: Optional[Path],
             label_names: Optional[Dict[str, int]], progress: bool) -> None:
    """Write every case of ``cases`` (images, labels), dataset.json and cases.json into the folder ``out``."""
    from trmcore.data.dicom import load_series, read_seg_labels

    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    channels = list(mapping) if mapping else [cases[0][1][0].modality or "image"]
    declared: Dict[str, int] = dict(label_names or {})
    n_train, records = 0, {}
    for case_id, members in _progress(cases, progress, "import dicom"):
        volumes = [load_series(s) for s in members]
        for member, volume in zip(members[1:], volumes[1:]):
            if volume.data.shape != volumes[0].data.shape or not np.allclose(volume.affine, volumes[0].affine,
                                                                            atol=1e-3):
                raise ValueError(f"case {case_id}: series {member.describe()} is not on the grid of "
                                 f"{members[0].describe()}: register the series to one grid first")
        label = None
        if members[0].series_uid in segs:
            values, names = read_seg_labels(segs[members[0].series_uid], volumes[0].datasets)
            for number, name in names.items():
                if declared.get(name, number) != number or (name not in declared and number in declared.values()):
                    raise ValueError(f"DICOM Segmentation {segs[members[0].series_uid]}: segment {number} "
                                     f"{name!r} contradicts the labels so far {declared}")
                declared[name] = number
            label = values
        elif label_dir is not None and (label_dir / f"{case_id}.nii.gz").is_file():
            label = _nifti_label(label_dir / f"{case_id}.nii.gz", volumes[0], case_id, label_names)
        split = "Tr" if label is not None else "Ts"
        for index, volume in enumerate(volumes):
            _write(volume.data, volume.affine, out / f"images{split}" / f"{case_id}_{index:04d}.nii.gz", None)
        if label is not None:
            _write(label.astype(np.uint8 if label.max(initial=0) < 256 else np.uint16), volumes[0].affine,
                   out / "labelsTr" / f"{case_id}.nii.gz", None)
            n_train += 1
        records[case_id] = {"study_uid": members[0].study_uid,
                            "series": {c: s.series_uid for c, s in zip(channels, members)},
                            "labels": "DICOM-SEG" if members[0].series_uid in segs else
                            ("NIfTI" if label is not None else None)}
    labels_json = {"background": 0, **dict(sorted(declared.items(), key=lambda kv: kv[1]))}
    _write_dataset_json(out, "DICOM import", channels, labels_json, n_train, sites={})
    atomic_write_json(out / "cases.json", records, overwrite=False)


def _cases(found, mapping: Optional[Dict[str, str]]):
    """[(case id, [series per channel])]: every series alone, or per study one series per mapped channel."""
    import fnmatch
    import re

    if mapping is None:
        modalities = {s.modality for s in found}
        if len(modalities) > 1:
            raise ValueError(f"the series have several modalities {sorted(modalities)}: name the channels with "
                             "--series NAME=SELECTOR")
        return [(s.series_uid, [s]) for s in found]
    uid = re.compile(r"^[0-9]+(\.[0-9]+)+$")

    def hit(series, selector):
        return series.series_uid == selector if uid.match(selector) else \
            fnmatch.fnmatchcase(series.description.lower(), selector.lower())

    studies: Dict[str, list] = {}
    for series in found:
        studies.setdefault(series.study_uid, []).append(series)
    cases = []
    for study, members in studies.items():
        chosen = []
        for channel, selector in mapping.items():
            hits = [s for s in members if hit(s, selector)]
            if len(hits) > 1:
                raise ValueError(f"study {study}: --series {channel}={selector} matches {len(hits)} series "
                                 f"({'; '.join(s.describe() for s in hits)}); it must match one")
            chosen.append(hits[0] if hits else None)
        if None in chosen:
            continue  # a study without every channel is not a case (e.g. a localiser-only study)
        cases.append((chosen[0].series_uid, chosen))
    if not cases:
        raise ValueError(f"no study has a series for every channel of --series {mapping}")
    return cases


def _nifti_label(path: Path, volume, case_id: str, label_names: Optional[Dict[str, int]]) -> np.ndarray:
    from .nifti import check_same_grid, load_label

    if not label_names:
        raise ValueError(f"{path}: NIfTI labels need --label-names NAME=VALUE,... to say what the values mean")
    data, affine = load_label(path, case_id, [0, *label_names.values()])
    check_same_grid(case_id, Path(f"series {case_id}"), volume.data.shape, volume.affine, path, data.shape, affine,
                    "label")
    return data


@register_importer
class DicomImporter(Importer):
    name = "dicom"
    summary = "DICOM studies (series by SeriesInstanceUID) with DICOM-SEG or NIfTI labels"
    description = ("Convert DICOM studies: each series (or, with --series, each study's series per channel) "
                   "becomes a case named by its SeriesInstanceUID; DICOM Segmentations referencing it, or "
                   "CASE.nii.gz in --labels, become its label. cases.json maps cases to study and series UIDs.")
    example = "trm import dicom pacs-export/ data/hospital --series T1='*t1*' --series T2='*t2*'"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--series", action="append", default=None, metavar="CHANNEL=SELECTOR",
                            help="a channel and its series: SeriesInstanceUID or SeriesDescription pattern "
                                 "(repeat per channel; default: every series is a one-channel case)")
        parser.add_argument("--labels", type=Path, default=None,
                            help="folder of label files: DICOM-SEG, or CASE.nii.gz on the series' grid")
        parser.add_argument("--label-names", default=None,
                            help="meaning of NIfTI label values, e.g. CSF=1,GM=2 (DICOM-SEG carries its own)")

    def options(self, args: argparse.Namespace) -> Dict[str, Any]:
        return {"series": args.series, "labels": args.labels, "label_names": parse_label_names(args.label_names)}

    def run(self, src, dst, overwrite=False, progress=True, series=None, labels=None, label_names=None,
            **options) -> Path:
        return import_dicom(src, dst, series=series, labels=labels, label_names=label_names,
                            overwrite=overwrite, progress=progress)

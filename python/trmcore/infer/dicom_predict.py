"""``trm predict`` on DICOM: series to cases, channels by explicit mapping, NIfTI and/or DICOM-SEG out.

Torch-free; needs the ``dicom`` extra. The volume of each series is built by
:mod:`trmcore.data.dicom` and segmented by the same
:func:`trmcore.infer.predict_files.predict_case` as a NIfTI file, so a DICOM
series and the NIfTI that a dcm2niix-style conversion gives predict the same
labels.

Which series feed which channel is never guessed:

- one-channel model, no ``--series``: every series found is a case;
- ``--series NAME=SELECTOR`` (one per model channel, repeatable): SELECTOR is
  a SeriesInstanceUID (digits and dots) or a case-insensitive shell pattern on
  SeriesDescription (``*T2*``); in each study every channel must match exactly
  one series, and the study is one case (channels must share one grid).

A case is named by its (first channel's) SeriesInstanceUID: ``OUT/UID.nii.gz``,
``OUT/UID.seg.dcm``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from trmcore.fileio import atomic_write_text, check_output_file, save_image
from trmcore.data.dicom import DicomSeries, find_series, load_series, series_table
from trmcore.infer.predict_files import (PredictedCase, check_ensemble, file_sha256, model_geometries,
                                         predict_case)
from trmcore.infer.dicom_seg import DEFAULT_OUTPUT_FORMAT, OUTPUT_FORMATS
from trmcore.infer.segmenter import Segmenter, label_dtype

UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)+$")


@dataclass
class DicomCase:
    """One case: a series per model channel (model order) and what matched them."""

    case_id: str
    series: List[DicomSeries]
    matched: str = ""


def matches(series: DicomSeries, selector: str) -> bool:
    """A UID selector matches the SeriesInstanceUID exactly; any other, SeriesDescription as a pattern."""
    if UID_PATTERN.match(selector):
        return series.series_uid == selector
    return fnmatch.fnmatchcase(series.description.lower(), selector.lower())


def dicom_cases(input_path: Path, model_channels: Sequence[str],
                series_map: Optional[Dict[str, str]] = None) -> List[DicomCase]:
    """The cases of a DICOM input for a model with ``model_channels`` (see the module docstring)."""
    found = find_series(input_path)
    if not found:
        raise FileNotFoundError(f"no image series under {input_path}")
    if series_map is None:
        if len(model_channels) != 1:
            raise ValueError(f"the model takes {len(model_channels)} channels {list(model_channels)}: say which "
                             "series is which with --series NAME=SERIES_UID or NAME='DESCRIPTION*' per channel "
                             f"(found {series_table(found)})")
        return [DicomCase(s.series_uid, [s], f"{model_channels[0]} <- {s.describe()}") for s in found]
    lowered = {k.lower(): v for k, v in series_map.items()}
    unknown = [k for k in series_map if k.lower() not in {c.lower() for c in model_channels}]
    missing = [c for c in model_channels if c.lower() not in lowered]
    if unknown or missing:
        raise ValueError(f"--series must name exactly the model's channels {list(model_channels)} "
                         f"(missing {missing or 'none'}, not the model's {unknown or 'none'})")
    studies: Dict[str, List[DicomSeries]] = {}
    for series in found:
        studies.setdefault(series.study_uid, []).append(series)
    cases = []
    for study, members in studies.items():
        chosen = []
        for channel in model_channels:
            selector = lowered[channel.lower()]
            hits = [s for s in members if matches(s, selector)]
            if len(hits) != 1:
                what = "no series" if not hits else f"{len(hits)} series ({series_table(hits)})"
                raise ValueError(f"study {study}: --series {channel}={selector} matches {what}; it must match "
                                 f"exactly one (the study holds {series_table(members)})")
            chosen.append(hits[0])
        if len({s.series_uid for s in chosen}) != len(chosen):
            raise ValueError(f"study {study}: one series was chosen for two channels ({series_table(chosen)})")
        matched = "; ".join(f"{c} <- {s.describe()}" for c, s in zip(model_channels, chosen))
        cases.append(DicomCase(chosen[0].series_uid, chosen, matched))
    return cases


def predict_dicom(segmenter, input_path, output, output_format: str = DEFAULT_OUTPUT_FORMAT,
                  probabilities: bool = False, overwrite: bool = False, resume: bool = False,
                  series_map: Optional[Dict[str, str]] = None, label_codes: Optional[Path] = None,
                  progress: bool = True, mirror: bool = False, resample: bool = True,
                  arguments: Optional[dict] = None, qc_dir: Optional[Path] = None,
                  qc_risk: Optional[Path] = None, report=print) -> List[PredictedCase]:
    """Segment every DICOM case under ``input_path``; write NIfTI and/or DICOM-SEG into folder ``output``.

    ``label_codes``: a label-code file or a dataset.json with ``label_codes``
    (docs/deploy.md); ``report`` receives one line per matched case. Returns one
    :class:`PredictedCase` per case (``labels_path``: the NIfTI, or the
    DICOM-SEG when only that is written).
    """
    from trmcore.infer.dicom_seg import SEG_SUFFIX, build_dicom_seg, read_label_codes, write_dicom_seg
    from trmcore.infer.nifti_files import image_like, is_nifti

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
    from trmcore.extras import require_extras

    require_extras(["dicom"], "DICOM input")
    segmenters = [segmenter] if isinstance(segmenter, Segmenter) else list(segmenter)
    check_ensemble(segmenters)
    first = segmenters[0]
    input_path, output = Path(input_path), Path(output)
    if is_nifti(output) or output.name.endswith(".dcm") or (output.exists() and not output.is_dir()):
        raise ValueError(f"for DICOM input the output must be a folder, not {output}")
    codes = read_label_codes(label_codes) if label_codes is not None else None
    if codes is not None:
        unused = sorted(set(k.lower() for k in codes) - {n.lower() for n in first.label_names[1:]})
        if unused:
            raise ValueError(f"label-code file {label_codes} names {unused}, which the model does not predict "
                             f"(its classes: {first.label_names[1:]})")
    cases = dicom_cases(input_path, first.channels, series_map)
    inputs = [f for case in cases for s in case.series for f in s.files]
    planned = []
    for case in cases:
        targets = {}
        if output_format in ("nifti", "both"):
            targets["nifti"] = output / f"{case.case_id}.nii.gz"
        if output_format in ("dicom-seg", "both"):
            targets["seg"] = output / f"{case.case_id}{SEG_SUFFIX}"
        if probabilities:
            targets["probabilities"] = output / f"{case.case_id}_probabilities.nii.gz"
        for path in targets.values():
            check_output_file(path, overwrite=overwrite or resume, inputs=inputs)
            if path.exists() and not (overwrite or resume):
                raise FileExistsError(f"output {path} exists; pass --overwrite to replace it "
                                      "(or --continue to keep complete outputs)")
        planned.append(targets)
    record_path = output / "predict.json"
    check_output_file(record_path, overwrite=overwrite or resume, inputs=inputs)
    if record_path.exists() and not (overwrite or resume):
        raise FileExistsError(f"output {record_path} exists; pass --overwrite to replace it "
                              "(or --continue to keep complete outputs)")
    replace = overwrite or resume
    geometries = model_geometries(segmenters, resample)
    values = np.asarray(first.label_values, dtype=label_dtype(first.label_values))
    models = [(s.model_path.name, file_sha256(s.model_path)) for s in segmenters]
    results, records, qc_cases = [], [], []
    for case, targets in zip(cases, planned):
        report(f"{case.case_id}: {case.matched}")
        volumes = [load_series(s) for s in case.series]
        _check_same_grid(case, volumes)
        images = [v.nifti() for v in volumes]
        if resume and _complete(targets, images[0], volumes[0], case, first.num_classes):
            results.append(PredictedCase(case.case_id, targets.get("nifti", targets.get("seg")),
                                         targets.get("probabilities"), {}, skipped=True))
            records.append({"case_id": case.case_id, "matched": case.matched, "kept_from_earlier_run": True,
                            "outputs": {k: str(v) for k, v in targets.items()}})
            if qc_dir is not None:
                qc_cases.append(_qc_case(case.case_id, volumes[0], _written_labels(targets, volumes[0], first),
                                         first, qc_risk))
            continue
        probs = predict_case(segmenters, images, geometries, mirror, progress)
        classes = probs.argmax(axis=0)
        labels = values[classes]
        if "probabilities" in targets:
            save_image(image_like(np.moveaxis(probs, 0, -1), images[0], np.dtype(np.float32)),
                       targets["probabilities"], overwrite=replace, inputs=inputs)
        if "nifti" in targets:
            save_image(image_like(labels, images[0], labels.dtype), targets["nifti"], overwrite=replace,
                       inputs=inputs)
        if "seg" in targets:
            seg = build_dicom_seg(volumes[0].datasets, classes, first.label_names[1:], codes, models)
            write_dicom_seg(targets["seg"], seg, overwrite=replace, inputs=inputs)
        found, counts = np.unique(labels, return_counts=True)
        main = targets.get("nifti", targets.get("seg"))
        results.append(PredictedCase(case.case_id, main, targets.get("probabilities"),
                                     {int(v): int(c) for v, c in zip(found, counts)}))
        records.append({"case_id": case.case_id, "matched": case.matched,
                        "series": [{"series_uid": s.series_uid, "description": s.description,
                                    "files": len(s.files)} for s in case.series],
                        "outputs": {k: str(v) for k, v in targets.items()}})
        if qc_dir is not None:
            qc_cases.append(_qc_case(case.case_id, volumes[0], labels, first, qc_risk))
    if qc_dir is not None:
        from trmcore.infer.qc import write_qc

        write_qc(qc_dir, qc_cases, overwrite=replace)
    record = {"input": str(input_path), "output_format": output_format,
              "label_codes": None if label_codes is None else str(label_codes),
              "models": [{"path": str(s.model_path.resolve()), "sha256": h}
                         for s, (_, h) in zip(segmenters, models)],
              "arguments": arguments or {}, "cases": records}
    atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n", overwrite=replace,
                      inputs=inputs)
    return results


def _complete(targets: dict, image, volume, case: DicomCase, num_classes: int) -> bool:
    """``--continue``: every output of the case exists and is complete (NIfTI on the series' grid; a
    Segmentation that references the series with a frame per slice and foreground class)."""
    from trmcore.infer.nifti_files import output_complete

    for kind, path in targets.items():
        if kind == "seg":
            if not _seg_complete(path, case.series[0].series_uid, volume.data.shape[2] * (num_classes - 1)):
                return False
        elif not output_complete(path, image, num_classes if kind == "probabilities" else None):
            return False
    return True


def _seg_complete(path: Path, series_uid: str, frames: int) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        return (str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) == series_uid
                and int(ds.NumberOfFrames) == frames and len(ds.PixelData) > 0)
    except Exception:  # any unreadable file is simply not complete
        return False


def _written_labels(targets: dict, volume, segmenter) -> np.ndarray:
    """Label values of a kept case (for --qc): from its NIfTI, else from its Segmentation."""
    if "nifti" in targets:
        import nibabel as nib

        return np.asarray(nib.load(str(targets["nifti"])).dataobj)
    from trmcore.infer.dicom_seg import read_dicom_seg_labels

    classes = read_dicom_seg_labels(targets["seg"], volume.datasets, segmenter.num_classes)
    return np.asarray(segmenter.label_values)[classes]


def _qc_case(case_id: str, volume, labels: np.ndarray, segmenter, risk_dir: Optional[Path]):
    from trmcore.infer.qc import QCCase, load_risk

    return QCCase(case_id, volume.data, labels, volume.affine, segmenter.label_names, segmenter.label_values,
                  risk=load_risk(risk_dir, case_id, labels.shape))


def _check_same_grid(case: DicomCase, volumes) -> None:
    from trmcore.data.nifti import AFFINE_ATOL

    for series, volume in zip(case.series[1:], volumes[1:]):
        if volume.data.shape != volumes[0].data.shape or \
                not np.allclose(volume.affine, volumes[0].affine, atol=AFFINE_ATOL, rtol=0):
            raise ValueError(f"case {case.case_id}: series {series.describe()} is not on the grid of "
                             f"{case.series[0].describe()} (shape {volume.data.shape} vs {volumes[0].data.shape}, "
                             "or a different position): register the series to one grid first")

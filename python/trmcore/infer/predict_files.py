"""``trm predict``: segment a NIfTI file or a folder of cases and write label volumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from trmcore.infer.nifti_files import (declared_channel_names, find_cases, image_like, load_case,
                                       plan_outputs, save_atomic)
from trmcore.infer.segmenter import Segmenter, label_dtype, softmax


@dataclass
class PredictedCase:
    """What was written for one case."""

    case_id: str
    labels_path: Path
    probabilities_path: Optional[Path]
    label_counts: dict  # label value -> voxel count


def predict_files(segmenter: Segmenter, input_path, output, probabilities: bool = False,
                  overwrite: bool = False, channels: Optional[Sequence[str]] = None,
                  progress: bool = True) -> List[PredictedCase]:
    """Segment every case under ``input_path`` and write ``CASE.nii.gz`` label volumes.

    Args:
        segmenter: the deployed model.
        input_path: a NIfTI file (``CASE_0000.nii.gz``, siblings for further
            channels) or a folder of ``CASE_000k.nii.gz`` files.
        output: a ``.nii.gz`` path (single input file) or a folder.
        probabilities: also write ``CASE_probabilities.nii.gz``, float32
            ``[X, Y, Z, C]`` softmax probabilities in class order.
        overwrite: replace existing outputs (inputs are never replaced).
        channels: names of the input channels in file order (``_0000``,
            ``_0001`` ...); default: ``channel_names`` of a ``dataset.json``
            beside the input or in its parent. With names, the model's
            channels are picked from the files by name (extra channels are
            ignored); without, the files must be exactly the model's channels
            in the model's order.

    Label volumes hold the model's label values (uint8, uint16 only if a
    value exceeds 255) with the first channel file's affine and header.
    """
    input_path, output = Path(input_path), Path(output)
    names = list(channels) if channels is not None else declared_channel_names(input_path)
    indices = None if names is None else channel_indices(names, segmenter.channels)
    cases = find_cases(input_path, segmenter.metadata.num_channels, indices)
    planned = plan_outputs(cases, input_path, output, probabilities, overwrite)
    dtype = label_dtype(segmenter.label_values)
    values = np.asarray(segmenter.label_values, dtype=dtype)
    results = []
    bar = _case_bar(len(cases), progress)
    for case, (labels_path, prob_path) in zip(cases, planned):
        images = load_case(case)
        if bar is not None:
            bar.set_postfix_str(case.case_id)
        if prob_path is None:
            labels = segmenter.predict_volume(images, progress=progress)
        else:
            logits = segmenter.predict_logits(images, progress=progress)
            labels = values[logits.argmax(axis=0)]
            probs = np.moveaxis(softmax(logits, axis=0), 0, -1)  # [X, Y, Z, C]: NIfTI keeps 4th axis last
            save_atomic(image_like(probs, images[0], np.dtype(np.float32)), prob_path)
        save_atomic(image_like(labels, images[0], dtype), labels_path)
        found, counts = np.unique(labels, return_counts=True)
        results.append(PredictedCase(case.case_id, labels_path, prob_path,
                                     {int(v): int(c) for v, c in zip(found, counts)}))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return results


def channel_indices(input_names: Sequence[str], model_channels: Sequence[str]) -> List[int]:
    """File channel index of each model channel, by name: ``(["T1", "T2"], ["T2"]) -> [1]``.

    Names compare case-insensitively; ValueError names the model channels the input lacks.
    """
    lowered = [str(name).strip().lower() for name in input_names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"input channel names repeat: {list(input_names)}")
    missing = [name for name in model_channels if name.lower() not in lowered]
    if missing:
        raise ValueError(f"the model expects channel(s) {list(model_channels)} but the input has "
                         f"{list(input_names)} (missing {', '.join(missing)})")
    return [lowered.index(name.lower()) for name in model_channels]


def _case_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="case", desc="predict")

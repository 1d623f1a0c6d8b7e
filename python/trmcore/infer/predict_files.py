"""``trm predict``: segment a NIfTI file or a folder of cases and write label volumes.

Per case (:func:`predict_case`): the channels (checked to share one grid) go
through each model's preprocessing pipeline (:mod:`trmcore.data.pipeline`,
rebuilt from the model's metadata: the training steps): brought to the model's
orientation and in-plane spacing, normalised, segmented slice by slice
(optionally also mirrored in-plane, test-time augmentation), and the softmax
probabilities are mapped back onto the input's own grid by the inverse steps;
several models are ensembled by averaging these probabilities. The label volume is the arg-max,
written with the input's affine and header.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from trmcore.data.geometry import Geometry
from trmcore.data.pipeline import Pipeline, Sample
from trmcore.fileio import atomic_write_text, save_image
from trmcore.infer.nifti_files import (declared_channel_names, find_cases, image_like, load_case, output_complete,
                                       plan_outputs, provenance_path)
from trmcore.infer.segmenter import Segmenter, label_dtype, softmax


@dataclass
class PredictedCase:
    """What was written for one case (``skipped``: kept from an earlier run by ``--continue``)."""

    case_id: str
    labels_path: Path
    probabilities_path: Optional[Path]
    label_counts: dict  # label value -> voxel count
    skipped: bool = False


def model_geometries(segmenters: Sequence[Segmenter], resample: bool = True) -> List[Geometry]:
    """Each model's working grid (a warning for models that do not record it)."""
    return [s.metadata.geometry(f"model {s.model_path}", resample) for s in segmenters]


MirrorRequest = Union[bool, Sequence[int], None]


def mirror_axes_for(segmenters: Sequence[Segmenter], requested: MirrorRequest) -> List[int]:
    """The in-plane axes to mirror at test time: only axes every model was trained with flipped.

    ``requested``: False/None (no mirroring), True (every axis all models were trained with) or
    in-plane axes (0, 1). ValueError (one line) for a model that never saw flips along a requested axis.
    """
    if requested is None or requested is False:
        return []
    for segmenter in segmenters:
        trained = segmenter.metadata.mirror_axes or []
        wanted = sorted(set(trained if requested is True else requested))
        if requested is True and not trained or not set(wanted) <= set(trained):
            seen = ("no flips" if not trained else f"flips along in-plane axes {trained} only")
            recorded = "" if segmenter.metadata.mirror_axes is not None else " (it does not record mirror axes)"
            axes = "" if requested is True else f" along axes {wanted}"
            raise ValueError(f"cannot mirror{axes}: model {segmenter.model_path} was trained with {seen}{recorded}; "
                             "test-time mirroring would feed it images it never saw")
    if requested is not True:
        return sorted(set(requested))
    common = set.intersection(*[set(s.metadata.mirror_axes or []) for s in segmenters])
    if not common:
        raise ValueError("cannot mirror: the ensembled models were trained with flips along different in-plane axes "
                         + ", ".join(f"{s.model_path}: {s.metadata.mirror_axes}" for s in segmenters))
    return sorted(common)


def predict_case(segmenters: Union[Segmenter, Sequence[Segmenter]], images: Sequence,
                 geometries: Optional[Sequence[Geometry]] = None, mirror: MirrorRequest = False,
                 progress: bool = False) -> np.ndarray:
    """Class probabilities float32 ``[C, X, Y, Z]`` on the grid of ``images`` (nibabel images, one per channel).

    Args:
        segmenters: one model, or several with the same channels and labels
            (their probabilities are averaged).
        images: the case's channel images in the models' channel order, on one grid.
        geometries: each model's working grid (default: :func:`model_geometries`).
        mirror: also run the slices flipped along every combination of the in-plane axes the
            models were trained with flipped (True; or the given axes, a subset of those) and
            average the probabilities (4 passes for both axes). See :func:`mirror_axes_for`.
    """
    segmenters = [segmenters] if isinstance(segmenters, Segmenter) else list(segmenters)
    check_ensemble(segmenters)
    axes = mirror_axes_for(segmenters, mirror)
    if geometries is None:
        geometries = model_geometries(segmenters)
    reference = images[0]
    data = np.stack([_as_3d(image) for image in images])
    total = None
    source = getattr(reference, "get_filename", lambda: None)() or "volume"
    for segmenter, geometry in zip(segmenters, geometries):
        per_voxel = 4 * (3 * data.shape[0] + 3 * segmenter.num_classes)  # float32 channels and class maps
        steps = geometric_steps(segmenter, geometry)
        sample = Sample.of(data, reference.affine, source=source, bytes_per_voxel=per_voxel)
        grid = steps.grid(sample.shape, sample.affine, source, per_voxel)
        segmenter.check_volume(grid.working_shape, source)  # its working copies, named by the file
        steps.apply(sample)
        probs = _probabilities(segmenter, sample.image, axes, progress)
        probs = steps.invert(probs, sample, "linear")
        total = probs if total is None else total + probs
    return (total / len(segmenters)).astype(np.float32, copy=False)


def geometric_steps(segmenter: Segmenter, geometry: Geometry) -> Pipeline:
    """The reorient and resample steps that bring a case to ``geometry``: the model's own recorded steps
    when ``geometry`` is the model's grid, none for ``--no-resample`` (volumes as stored)."""
    recorded = segmenter.preprocessing.geometric()
    if recorded.geometry() == geometry or (geometry.native and not recorded.steps):
        return recorded
    return Pipeline.standard(geometry, divisor=None).geometric()


def check_ensemble(segmenters: Sequence[Segmenter]) -> None:
    """ValueError unless every model has the first one's channels, label names and label values."""
    if not segmenters:
        raise ValueError("no model given")
    first = segmenters[0]
    for other in segmenters[1:]:
        for what in ("channels", "label_names", "label_values"):
            if getattr(other, what) != getattr(first, what):
                raise ValueError(f"models {first.model_path} and {other.model_path} cannot be ensembled: "
                                 f"{what} differ ({getattr(first, what)} vs {getattr(other, what)})")


def predict_files(segmenter: Union[Segmenter, Sequence[Segmenter]], input_path, output, probabilities: bool = False,
                  overwrite: bool = False, channels: Optional[Sequence[str]] = None,
                  progress: bool = True, resume: bool = False, mirror: MirrorRequest = False,
                  resample: bool = True,
                  arguments: Optional[dict] = None) -> List[PredictedCase]:
    """Segment every case under ``input_path`` and write ``CASE.nii.gz`` label volumes.

    Args:
        segmenter: the deployed model, or several to ensemble (same channels and labels).
        input_path: a NIfTI file (``CASE_0000.nii.gz``, siblings for further
            channels) or a folder of ``CASE_000k.nii.gz`` files.
        output: a ``.nii.gz`` path (single input file) or a folder.
        probabilities: also write ``CASE_probabilities.nii.gz``, float32
            ``[X, Y, Z, C]`` softmax probabilities in class order.
        overwrite: replace existing outputs (inputs are never replaced).
        channels: names of the input channels in file order (``_0000``,
            ``_0001`` ...); default: ``channel_names`` of a ``dataset.json``
            beside the input or in its parent, whose keys are the file
            suffix numbers (the training loader's rule,
            :func:`trmcore.data.layout.parse_channel_names`). With names, the model's
            channels are picked from the files by name (extra channels are
            ignored); without, the files must be exactly the model's channels
            in the model's order.
        resume: ``--continue``: keep the outputs of cases that are complete
            (readable, on the input's grid), redo the others.
        mirror: test-time augmentation by in-plane mirroring, only along axes the models were trained
            with flipped (True: all of those; or a list of in-plane axes); see :func:`mirror_axes_for`.
        resample: False (``--no-resample``): use the volumes as stored.
        arguments: recorded in the provenance file (the command line's options).

    Label volumes hold the model's label values (uint8, uint16 only if a
    value exceeds 255) with the first channel file's affine and header. A
    provenance record (models and their SHA-256, metadata, trmcore version,
    arguments, cases) is written to ``OUT/predict.json``
    (``OUT_STEM_predict.json`` for a single output file).
    """
    segmenters = [segmenter] if isinstance(segmenter, Segmenter) else list(segmenter)
    check_ensemble(segmenters)
    mirror_axes = mirror_axes_for(segmenters, mirror)  # refused before any case is read
    first = segmenters[0]
    input_path, output = Path(input_path), Path(output)
    # --channels lists names in file order; a dataset.json maps file suffix numbers to names (one rule with training).
    names = list(channels) if channels is not None else declared_channel_names(input_path)
    indices = None if names is None else channel_indices(names, first.channels)
    cases = find_cases(input_path, first.metadata.num_channels, indices)
    planned = plan_outputs(cases, input_path, output, probabilities, overwrite, resume)
    geometries = model_geometries(segmenters, resample)
    dtype = label_dtype(first.label_values)
    values = np.asarray(first.label_values, dtype=dtype)
    results = []
    bar = _case_bar(len(cases), progress)
    for case, (labels_path, prob_path) in zip(cases, planned):
        images = load_case(case)
        if bar is not None:
            bar.set_postfix_str(case.case_id)
        if resume and output_complete(labels_path, images[0]) and (
                prob_path is None or output_complete(prob_path, images[0], first.num_classes)):
            results.append(PredictedCase(case.case_id, labels_path, prob_path, {}, skipped=True))
        else:
            probs = predict_case(segmenters, images, geometries, mirror_axes, progress)
            labels = values[probs.argmax(axis=0)]
            if prob_path is not None:
                # [X, Y, Z, C]: NIfTI keeps the 4th axis last
                save_image(image_like(np.moveaxis(probs, 0, -1), images[0], np.dtype(np.float32)), prob_path,
                           overwrite=overwrite or resume)
            # Without overwrite an existing file (or one another run wrote meanwhile) is refused,
            # so two runs into one folder cannot both write a case.
            save_image(image_like(labels, images[0], dtype), labels_path, overwrite=overwrite or resume)
            found, counts = np.unique(labels, return_counts=True)
            results.append(PredictedCase(case.case_id, labels_path, prob_path,
                                         {int(v): int(c) for v, c in zip(found, counts)}))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    record = provenance(segmenters, geometries, cases, results, arguments, mirror_axes)
    atomic_write_text(provenance_path(input_path, output), json.dumps(record, indent=2, default=str) + "\n",
                      overwrite=overwrite or resume)
    return results


def provenance(segmenters: Sequence[Segmenter], geometries: Sequence[Geometry], cases, results,
               arguments: Optional[dict], mirror: Sequence[int]) -> dict:
    """The record written beside the outputs: which models, which trmcore, which options, which cases."""
    from trmcore import __version__

    return {
        "trmcore_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "arguments": arguments or {},
        "ensemble": "mean of softmax probabilities" if len(segmenters) > 1 else None,
        "mirroring": list(mirror),  # the in-plane axes mirrored at test time ([]: none)
        "models": [{"path": str(s.model_path.resolve()), "sha256": file_sha256(s.model_path),
                    "provider": s.provider, "working_grid": asdict(g), "metadata": asdict(s.metadata)}
                   for s, g in zip(segmenters, geometries)],
        "cases": [{"case_id": case.case_id, "inputs": [str(p) for p in case.channel_paths],
                   "labels": str(result.labels_path),
                   "probabilities": None if result.probabilities_path is None else str(result.probabilities_path),
                   "kept_from_earlier_run": result.skipped}
                  for case, result in zip(cases, results)],
    }


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def channel_indices(input_names: Union[Mapping[int, str], Sequence[str]], model_channels: Sequence[str]) -> List[int]:
    """File channel index of each model channel, by name.

    ``input_names``: {file index: name} (a dataset.json's ``channel_names`` read by
    :func:`trmcore.data.layout.parse_channel_names`, whose keys are the file suffix numbers), or a
    list of names in file order ``_0000, _0001, ...`` (``--channels``):
    ``({0: "T2", 2: "T1"}, ["T1"]) -> [2]``, ``(["T1", "T2"], ["T2"]) -> [1]``.
    Names compare case-insensitively; ValueError names the model channels the input lacks.
    """
    named = dict(input_names) if isinstance(input_names, Mapping) else dict(enumerate(input_names))
    by_name: Dict[str, int] = {}
    for index, name in named.items():
        key = str(name).strip().lower()
        if key in by_name:
            raise ValueError(f"input channel names repeat: {list(named.values())}")
        by_name[key] = int(index)
    missing = [name for name in model_channels if name.lower() not in by_name]
    if missing:
        raise ValueError(f"the model expects channel(s) {list(model_channels)} but the input has "
                         f"{list(named.values())} (missing {', '.join(missing)})")
    return [by_name[name.lower()] for name in model_channels]


def _probabilities(segmenter: Segmenter, working: np.ndarray, mirror_axes: Sequence[int],
                   progress: bool) -> np.ndarray:
    """Softmax float32 ``[C, X, Y, Z]`` of a raw ``[Cin, X, Y, Z]`` volume on the model's grid, averaged over
    the flips along every non-empty combination of ``mirror_axes`` (in-plane axes of the slice)."""
    probs = softmax(segmenter.predict_logits(working, progress=progress), axis=0)
    if not mirror_axes:
        return probs
    # The network is 2D: in-plane axis k of a slice is array axis plane[k] of [C, X, Y, Z].
    plane = [1 + a for a in range(3) if a != segmenter.metadata.axis]
    flips = [[plane[a] for a in combo] for r in range(1, len(mirror_axes) + 1)
             for combo in itertools.combinations(sorted(mirror_axes), r)]
    for flip in flips:
        flipped = np.ascontiguousarray(np.flip(working, axis=flip))
        probs += np.flip(softmax(segmenter.predict_logits(flipped, progress=progress), axis=0), axis=flip)
    return probs / float(len(flips) + 1)


def _as_3d(image) -> np.ndarray:
    data = np.asarray(image.get_fdata(dtype=np.float32))
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _case_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="case", desc="predict")

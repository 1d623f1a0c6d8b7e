"""Loading the volumes of a task, and splitting them by case.

Example:
    >>> from trmcore.data import make_phantom, parse_task, load_task_volumes, split_cases
    >>> root = make_phantom("/tmp/phantom-doc", overwrite=True)        # doctest: +SKIP
    >>> vols, info = load_task_volumes(root, parse_task("T1", "CSF"))  # doctest: +SKIP
    >>> train, val = split_cases(vols, val_fraction=0.2, seed=0)       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .geometry import DEFAULT_ORIENTATION, Geometry, GridMap, voxel_spacing
from .layout import DatasetLayout
from .nifti import check_same_grid, load_image, load_label
from .pipeline import Pipeline, Sample
from .preprocess import DEFAULT_NORMALIZATION
from .tasks import TaskInfo, TaskSpec


@dataclass
class Volume:
    """One case of a task.

    Attributes:
        case_id: the case name in the dataset.
        site: its site (partition), or None.
        image: float32 [Cin, X, Y, Z] on the working grid (see ``grid``), each
            channel normalised (``zscore-foreground`` by default).
        label: int64 [X, Y, Z] task classes 0..C-1 (``IGNORE_INDEX`` for the
            dataset's ``ignore`` label) on the working grid, or None when unlabelled.
        affine: float64 [4, 4] voxel-to-world of the working grid.
        header: nibabel header of the first channel file (to write outputs on its grid).
        grid: how the stored grid maps to the working grid and back
            (:class:`trmcore.data.geometry.GridMap`); None for volumes built by hand.
        native_label: int16 task classes on the stored grid, kept only when the
            volume was resampled (scores are computed on the stored grid).
    """

    case_id: str
    site: Optional[str]
    image: np.ndarray
    label: Optional[np.ndarray]
    affine: np.ndarray
    header: Any = None
    grid: Optional[GridMap] = None
    native_label: Optional[np.ndarray] = None

    def label_on_native_grid(self) -> Optional[np.ndarray]:
        """Task classes int64 on the stored grid (the reference for scores), or None when unlabelled."""
        if self.label is None:
            return None
        if self.native_label is not None:
            return self.native_label.astype(np.int64)
        if self.grid is None or self.grid.identity:
            return self.label
        return self.grid.to_native(self.label, "nearest")

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def load_task_volumes(
    root: Union[str, Path],
    task: TaskSpec,
    cases: Optional[Sequence[str]] = None,
    progress: bool = True,
    *,
    sites: Union[str, Path, Mapping[str, str], None] = None,
    split: str = "Tr",
    geometry: Optional[Geometry] = None,
    normalization: Union[str, Callable[[np.ndarray], np.ndarray]] = DEFAULT_NORMALIZATION,
    axis: int = 2,
) -> Tuple[List[Volume], TaskInfo]:
    """Load every case of ``task`` from a dataset in the standard layout.

    Args:
        root: dataset folder (with dataset.json, imagesTr/, labelsTr/).
        task: channels, labels and optional site (see :func:`parse_task`). A
            task with no labels loads images only (``Volume.label`` is None).
        cases: restrict to these case ids (default: every case found).
        progress: show a progress bar.
        sites: a CSV (case,site or FeTS Subject_ID,Partition_ID) or a mapping
            that overrides dataset.json's "sites".
        split: "Tr" (imagesTr/labelsTr) or "Ts" (imagesTs/labelsTs).
        geometry: the working grid (a run's recorded geometry). None: the
            training default, RAS with the median in-plane spacing of the
            loaded cases; ``native_geometry()``: volumes as stored. The one
            used is returned as ``TaskInfo.geometry`` (spacing filled in).
        normalization: intensity normalisation (``trmcore.data.preprocess.NORMALIZATIONS``), or a
            callable taking a case's whole image float ``[C, X, Y, Z]`` on the working grid and
            returning it normalised (float32, same shape): a foreign source's own scheme
            (an nnU-Net model's, trmcore.training.sources), which needs every channel at once.
        axis: slice axis of the default geometry (its two other axes are in-plane).
    Returns:
        (volumes in case order, TaskInfo).
    Raises:
        FileNotFoundError: missing dataset, channel or label file (naming case and file).
        ValueError: shape/affine mismatch, non-integer or undeclared label values,
            4D files, or an empty task (no case of the site, no voxel of a label).
    """
    if not isinstance(task, TaskSpec):
        raise TypeError(f"task must be a TaskSpec (see trmcore.data.parse_task), got {type(task).__name__}")
    layout = DatasetLayout.read(root, sites=sites)
    info = TaskInfo.resolve(layout, task)
    case_ids = _select_cases(layout, task, cases, split)

    iterator = case_ids
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(case_ids, desc=f"loading {task}", unit="case", leave=False)
    if geometry is None:
        geometry = Geometry(DEFAULT_ORIENTATION, None, axis)
        find_spacing = True
    else:
        find_spacing = False
    # The preprocessing pipeline (trmcore.data.pipeline) in two goes: the lossless reorientation of every
    # case first (the default spacing is the median of the reoriented cases), then the rest of the steps.
    custom = None if isinstance(normalization, str) else normalization  # a source's own scheme
    method = DEFAULT_NORMALIZATION if custom is not None else normalization
    reorient = Pipeline.standard(Geometry(geometry.orientation, None, geometry.axis), method,
                                 divisor=None).geometric()
    loaded = [_load_case(layout, info, case, split, bool(task.labels), reorient) for case in iterator]
    if find_spacing:
        geometry = Geometry(geometry.orientation, median_spacing([sample for sample, _ in loaded]), geometry.axis)
    pipeline = Pipeline.standard(geometry, method, divisor=None)
    if custom is not None:  # the grid steps only; the source's scheme normalises all channels at once
        pipeline = pipeline.geometric()
    volumes = [_to_working_grid(case, sample, header, layout, pipeline) for case, (sample, header) in
               zip(case_ids, loaded)]
    if custom is not None:
        for volume in volumes:
            volume.image = np.asarray(custom(volume.image), np.float32)
    info.geometry = geometry
    info.normalization = normalization if isinstance(normalization, str) else getattr(normalization, "name", "custom")

    if task.labels:
        _check_labels_present(volumes, info, task, layout)
    return volumes, info


def split_cases(volumes: Sequence[Volume], val_fraction: float = 0.2, seed: int = 0) -> Tuple[List[Volume], List[Volume]]:
    """Split volumes into train and validation sets by case (no case in both).

    The split depends only on the case ids, ``val_fraction`` and ``seed`` (not
    on the order of ``volumes``). At least one case is kept for training; with
    ``val_fraction > 0`` and two or more cases, at least one goes to validation.

    Returns:
        (train_volumes, val_volumes), each in the input order.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cases = sorted({v.case_id for v in volumes})
    if not cases:
        raise ValueError("split_cases: no volumes to split")
    n_val = int(round(val_fraction * len(cases)))
    if val_fraction > 0 and len(cases) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(cases) - 1)
    order = np.random.default_rng(seed).permutation(len(cases))
    val_cases = {cases[i] for i in order[:n_val]}
    train = [v for v in volumes if v.case_id not in val_cases]
    val = [v for v in volumes if v.case_id in val_cases]
    return train, val


def _select_cases(layout: DatasetLayout, task: TaskSpec, cases: Optional[Sequence[str]], split: str) -> List[str]:
    found = layout.cases(split)
    if cases is not None:
        if isinstance(cases, str):
            cases = [cases]
        missing = [c for c in cases if c not in found]
        if missing:
            raise FileNotFoundError(
                f"case(s) {missing} not found in {layout.root}/images{split} or labels{split}"
            )
        found = list(cases)
    if not found:
        raise ValueError(f"task {task}: no cases in {layout.root}/images{split}")
    if task.site is not None:
        known = sorted({layout.site_of(c) for c in found if layout.site_of(c) is not None})
        found = [c for c in found if layout.site_of(c) == task.site]
        if not found:
            hint = f"sites present: {', '.join(known)}" if known else "the dataset declares no sites (dataset.json 'sites' or a sites CSV)"
            raise ValueError(f"task {task}: no case has site {task.site!r} ({hint})")
    return found


def median_spacing(volumes: Sequence[Volume]) -> Tuple[float, float, float]:
    """Per-axis median voxel size (mm) of the volumes' reoriented grids: the training spacing (as nnU-Net)."""
    spacings = np.array([voxel_spacing(v.affine) for v in volumes], np.float64)
    return tuple(float(s) for s in np.median(spacings, axis=0))


def _load_case(layout: DatasetLayout, info: TaskInfo, case: str, split: str, labelled: bool,
               reorient: Pipeline) -> Tuple[Sample, Any]:
    """The case read and reoriented (lossless) but neither resampled nor normalised yet, and its header."""
    channels = []
    ref_path = ref_affine = header = None
    for index in info.channel_indices:
        path = layout.image_path(case, index, split)
        data, affine, hdr = load_image(path, case, f"channel {layout.channel_names[index]}")
        if ref_path is None:
            ref_path, ref_affine, header = path, affine, hdr
        else:
            check_same_grid(case, ref_path, channels[0].shape, ref_affine, path, data.shape, affine, "channel")
        channels.append(data)
    sample = Sample.of(np.stack(channels), ref_affine, source=ref_path)
    if labelled:
        path = layout.label_path(case, split)
        raw, affine = load_label(path, case, info.dataset_values)
        check_same_grid(case, ref_path, channels[0].shape, ref_affine, path, raw.shape, affine, "label")
        sample.label = info.map_labels(raw)
    return reorient.apply(sample), header


def _to_working_grid(case: str, sample: Sample, header: Any, layout: DatasetLayout, pipeline: Pipeline) -> Volume:
    """The rest of the pipeline (resample where the spacing differs, normalise) on a reoriented case."""
    source = f"case {case}"
    native_label = None
    if sample.label is not None and pipeline.grid(sample.grid.native_shape, sample.grid.native_affine, source).resampled:
        # Scores are computed on the stored grid: keep the labels as stored (undoing the lossless reorientation).
        native_label = pipeline.invert(sample.label, sample, "nearest").astype(np.int16)
    sample.source = source
    pipeline.apply(sample)
    return Volume(case, layout.site_of(case), sample.image, sample.label, sample.affine, header, sample.grid,
                  native_label)


def _check_labels_present(volumes: List[Volume], info: TaskInfo, task: TaskSpec, layout: DatasetLayout) -> None:
    counts = np.zeros(info.num_classes, np.int64)
    for volume in volumes:
        classes = volume.label[volume.label >= 0]  # not the ignore index
        counts += np.bincount(classes.ravel(), minlength=info.num_classes)[: info.num_classes]
    empty = [info.label_names[k] for k in range(1, info.num_classes) if counts[k] == 0]
    if empty:
        raise ValueError(
            f"task {task}: label(s) {empty} have no voxel in any of the {len(volumes)} case(s) "
            f"({', '.join(v.case_id for v in volumes[:5])}{', ...' if len(volumes) > 5 else ''}) of {layout.root}"
        )

"""Affinity of tasks read from a dataset in the standard layout (SPEC section 6).

Torch-free. Each task's K sampled cases are loaded with
:func:`trmcore.data.load_task_volumes` (z-scored images, task classes), turned
into signatures, then dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Sequence, Union

import numpy as np

from trmcore.selection.affinity import AffinityConfig, AffinityResult, affinity_from_signatures, compute_signatures, sample_cases
from trmcore.selection.tasks import SelectionTask, check_task, labelled_cases

SitesArg = Union[str, Path, Mapping[str, str], None]


def affinity_from_dataset(root: Union[str, Path], tasks: Sequence[SelectionTask], config: AffinityConfig,
                          sites: SitesArg = None) -> AffinityResult:
    """W, S and d of ``tasks`` over ``root``, K seeded cases per task.

    Args:
        root: dataset folder (dataset.json, imagesTr/, labelsTr/).
        tasks: the tasks (see :func:`trmcore.selection.tasks.resolve_tasks`).
        config: sizes, K, seed, weights, workers.
        sites: a sites CSV or mapping overriding dataset.json's "sites".

    Raises:
        ValueError: a task whose channel, label set or site the dataset lacks,
            or with no labelled volume. FileNotFoundError: no dataset at ``root``.
    """
    from trmcore.data import DatasetLayout, load_task_volumes
    from trmcore.data.geometry import Geometry, native_geometry

    if not tasks:
        raise ValueError("no tasks given")
    layout = DatasetLayout.read(root, sites=sites)
    site_map = dict(layout.sites)
    samples: List[List[str]] = []
    n_cases: List[int] = []
    for task in tasks:
        check_task(layout, task)
        cases = labelled_cases(layout, task)
        n_cases.append(len(cases))
        samples.append(sample_cases(cases, task, config.samples, config.seed))

    def loader(task: SelectionTask, cases: List[str]):
        def load():
            # RAS, no resampling: signatures are resized to one size anyway, and every task
            # must see the same anatomy in the same axis order.
            volumes, _ = load_task_volumes(root, task.to_spec(), cases=cases, progress=False, sites=site_map,
                                           geometry=Geometry("RAS", None) if config.resample else native_geometry())
            # Unannotated ("ignore") voxels have no class; the coarse label signature counts them as 0.
            return [(v.image, np.where(v.label < 0, 0, v.label)) for v in volumes]
        return load

    loaders = [loader(task, cases) for task, cases in zip(tasks, samples)]
    signatures = compute_signatures(list(tasks), loaders, n_cases, config)
    return affinity_from_signatures(signatures, config)


"""Source and sequential-path selection (SPEC section 6, [SEQ]; source ranking by LEEP).

Torch-free parts: :mod:`~trmcore.selection.similarity` (resize, PCA, Wasserstein,
SSIM), :mod:`~trmcore.selection.affinity` (W, S, d matrices),
:mod:`~trmcore.selection.path` (task graph, communities, landmarks, paths),
:mod:`~trmcore.selection.fit` (fit alpha, beta). Torch is needed only by
:mod:`~trmcore.selection.rank` and :mod:`~trmcore.selection.transfer`.
"""

from trmcore.selection.affinity import (
    DEFAULT_ALPHA, DEFAULT_BETA, AffinityConfig, AffinityResult, TaskVolumes, affinity_from_volumes,
    affinity_reference, task_distance,
)
from trmcore.selection.fit import MeasuredPath, WeightFit, fit_weights, read_results
from trmcore.selection.path import CandidatePath, PathSelection, build_task_graph, communities, select_paths
from trmcore.selection.tasks import SelectionTask, parse_task_name

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_BETA", "AffinityConfig", "AffinityResult", "TaskVolumes", "affinity_from_volumes",
    "affinity_reference", "task_distance", "MeasuredPath", "WeightFit", "fit_weights", "read_results",
    "CandidatePath", "PathSelection", "build_task_graph", "communities", "select_paths", "SelectionTask",
    "parse_task_name",
]

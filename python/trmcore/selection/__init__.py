"""Source and sequential-path selection (SPEC section 6, [SEQ]; source ranking by LEEP).

Torch-free parts: :mod:`~trmcore.selection.similarity` (resize, PCA, Wasserstein,
SSIM), :mod:`~trmcore.selection.affinity` (W, S, d matrices),
:mod:`~trmcore.selection.path` (task graph, communities, landmarks, paths),
:mod:`~trmcore.selection.fit` (fit alpha, beta). Torch is needed only by
:mod:`~trmcore.selection.rank` and :mod:`~trmcore.selection.transfer`.

Names are imported on first use (PEP 562), so that importing one submodule,
as the ``trm`` command line does for every command, pulls in neither networkx
nor scipy.
"""

import importlib
from typing import Any

_EXPORTS = {
    "trmcore.selection.affinity": ["DEFAULT_ALPHA", "DEFAULT_BETA", "AffinityConfig", "AffinityResult",
                                   "TaskVolumes", "affinity_from_volumes", "affinity_reference", "task_distance"],
    "trmcore.selection.fit": ["MeasuredPath", "WeightFit", "fit_weights", "read_results"],
    "trmcore.selection.path": ["CandidatePath", "PathSelection", "build_task_graph", "communities", "select_paths"],
    "trmcore.selection.tasks": ["SelectionTask", "parse_task_name"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'trmcore.selection' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)

"""Torch-free inference with exported trmcore models (onnxruntime + NumPy + nibabel).

Nothing under this package imports torch, so ``pip install trmcore[cpu]`` is
enough to deploy a model:

    >>> from trmcore.infer import Segmenter                    # doctest: +SKIP
    >>> seg = Segmenter("model.onnx", providers="auto")        # doctest: +SKIP
    >>> labels = seg.predict_volume(nib.load("case_0000.nii.gz"))  # doctest: +SKIP

Importing this package imports neither onnxruntime nor torch: the names below
are loaded from their modules on first use (PEP 562), so that ``trm`` builds
its parser, and ``trm evaluate --predictions`` runs, on an install without
onnxruntime. Only the modules that run a model (``runtime``, ``segmenter``,
``predict_files``, ``transferability``, ``evaluate_files.evaluate_model``)
need it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# public name -> the module of this package that defines it
_LAZY = {
    "METADATA_KEY": "metadata", "ModelMetadata": "metadata", "Provenance": "metadata",
    "PredictedCase": "predict_files", "predict_case": "predict_files", "predict_files": "predict_files",
    "Segmenter": "segmenter", "softmax": "segmenter",
    "CaseTransfer": "transferability", "TransferReport": "transferability",
    "assess_transferability": "transferability",
    "evaluate_folder": "evaluate_files", "evaluate_model": "evaluate_files",
}

__all__ = sorted(_LAZY)


# Names that are both a function and the submodule defining it. Importing a submodule sets the package's
# attribute of that name to the module; the package keeps the function there instead, as the eager
# `from .predict_files import predict_files` of earlier versions did.
_SHADOWED = {"predict_files"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"trmcore.infer.{_LAZY[name]}"), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'trmcore.infer' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

"""Torch-free inference with exported trmcore models (onnxruntime + NumPy + nibabel).

Nothing under this package imports torch, so ``pip install trmcore[cpu]`` is
enough to deploy a model:

    >>> from trmcore.infer import Segmenter                    # doctest: +SKIP
    >>> seg = Segmenter("model.onnx", providers="auto")        # doctest: +SKIP
    >>> labels = seg.predict_volume(nib.load("case_0000.nii.gz"))  # doctest: +SKIP
"""

from trmcore.infer.metadata import METADATA_KEY, ModelMetadata, Provenance
from trmcore.infer.predict_files import PredictedCase, predict_case, predict_files
from trmcore.infer.segmenter import Segmenter, softmax
from trmcore.infer.transferability import CaseTransfer, TransferReport, assess_transferability

__all__ = ["METADATA_KEY", "ModelMetadata", "Provenance", "Segmenter", "softmax", "predict_files", "predict_case",
           "PredictedCase", "assess_transferability", "TransferReport", "CaseTransfer"]

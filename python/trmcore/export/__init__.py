"""Export trained runs to ONNX for torch-free deployment (needs torch, onnx, onnxscript).

    >>> from trmcore.export import export_run                 # doctest: +SKIP
    >>> export_run("runs/t1-csf", "t1-csf.onnx").max_abs_diff  # doctest: +SKIP
    3.5e-07
"""

from trmcore.export.onnx_export import (DEFAULT_OPSET, ExportResult, ExportVerificationError, export_run,
                                        metadata_from_run)
from trmcore.export.precision import DEFAULT_MIN_DICE, Agreement, PrecisionAgreementError

__all__ = ["DEFAULT_OPSET", "ExportResult", "ExportVerificationError", "export_run", "metadata_from_run",
           "DEFAULT_MIN_DICE", "Agreement", "PrecisionAgreementError"]

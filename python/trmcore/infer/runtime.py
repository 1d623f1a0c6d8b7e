"""onnxruntime sessions: execution-provider choice and session options.

``providers="auto"`` runs on CUDA when onnxruntime-gpu is installed and a GPU
answers, else on the CPU. cuDNN's convolution algorithm search is set to
HEURISTIC: the default EXHAUSTIVE benchmarks every new input shape, and
volumes of different sizes give different slice shapes, so each new shape
would cost seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}

ProviderSpec = Union[str, Sequence[Union[str, Tuple[str, dict]]]]


def requested_providers(providers: ProviderSpec = "auto") -> List[Any]:
    """Translate ``"auto"``, ``"cpu"``, ``"cuda"`` or an explicit onnxruntime list.

    >>> requested_providers("cpu")
    ['CPUExecutionProvider']
    """
    available = ort.get_available_providers()
    if isinstance(providers, str):
        choice = providers.lower()
        if choice == "auto":
            return [(CUDA, dict(CUDA_OPTIONS)), CPU] if CUDA in available else [CPU]
        if choice == "cpu":
            return [CPU]
        if choice in ("cuda", "gpu"):
            if CUDA not in available:
                raise ValueError(
                    "providers='cuda' but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(available)}); install onnxruntime-gpu or use providers='cpu'"
                )
            return [(CUDA, dict(CUDA_OPTIONS)), CPU]
        raise ValueError(f"providers must be 'auto', 'cpu', 'cuda' or a list of onnxruntime providers, got {providers!r}")
    chosen = list(providers)
    if not chosen:
        raise ValueError("providers list is empty")
    for entry in chosen:
        name = entry[0] if isinstance(entry, tuple) else entry
        if name not in available:
            raise ValueError(f"execution provider {name!r} is not available here (available: {', '.join(available)})")
    return chosen


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """Full graph optimisation; ``threads`` intra-op threads (None: onnxruntime's default, all cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        if int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return options


def create_session(model_path: Union[str, os.PathLike], providers: ProviderSpec = "auto",
                   threads: Optional[int] = None) -> ort.InferenceSession:
    """Open ``model_path``; FileNotFoundError when absent, ValueError when it is not a valid ONNX model."""
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    requested = requested_providers(providers)
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=requested)
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        if isinstance(err, (ValueError, FileNotFoundError)):
            raise
        from trmcore.fileio import check_readable

        check_readable(path)  # onnxruntime words "permission denied" as "system error number 13"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load ONNX model {path}: {first_line}") from None


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the graph (the first of the session's providers)."""
    return session.get_providers()[0]

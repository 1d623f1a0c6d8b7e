"""onnxruntime sessions: execution-provider choice and session options.

``providers="auto"`` runs on CUDA when onnxruntime-gpu is installed and a GPU
answers, else on the CPU. cuDNN's convolution algorithm search is set to
HEURISTIC: the default EXHAUSTIVE benchmarks every new input shape, and
volumes of different sizes give different slice shapes, so each new shape
would cost seconds.

Bounds: before a session is created the file is checked
(:func:`trmcore.infer.graph_check.check_model_file`: no control flow, declared
tensors within the memory budget, finite weights), and every CPU session
allocates from one arena registered with onnxruntime's environment whose
``max_mem`` is the memory budget (:func:`trmcore.limits.memory_limit`), so a
graph that computes a huge tensor fails with onnxruntime's "Available memory
of ... is smaller than requested bytes of ..." instead of taking the machine.
A run that goes on past its deadline is stopped through ``RunOptions.terminate``
(:func:`run_with_deadline`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import onnxruntime as ort

from trmcore.limits import ResourceLimitError, format_size, memory_limit

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


# The arena registered with onnxruntime's environment: once per process (onnxruntime refuses a second
# registration for the same memory kind), with the budget in force at the first session.
_ARENA: Dict[str, Optional[int]] = {"max_mem": None}
_ARENA_LOCK = threading.Lock()


def bounded_arena() -> Optional[int]:
    """Register the CPU arena capped at the memory budget (first call); its ``max_mem`` in bytes, or None
    when this onnxruntime cannot register one (then sessions use their own, unbounded, allocator)."""
    with _ARENA_LOCK:
        if _ARENA["max_mem"] is None:
            limit = int(memory_limit())
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                # kNextPowerOfTwo (0), onnxruntime's default: the same peak memory as a session's own arena
                # (kSameAsRequested measured +160 MB on a depth-4 U-Net); the cap holds either way.
                config = ort.OrtArenaCfg({"max_mem": limit, "arena_extend_strategy": 0})
                ort.create_and_register_allocator(info, config)
                _ARENA["max_mem"] = limit
            except Exception:  # an onnxruntime without the API: the static checks still hold
                _ARENA["max_mem"] = 0
        return _ARENA["max_mem"] or None


def session_options(threads: Optional[int] = None) -> ort.SessionOptions:
    """Full graph optimisation; ``threads`` intra-op threads (None: onnxruntime's default, all cores).

    CPU tensors come from the arena capped at the memory budget (:func:`bounded_arena`).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: they are reported as one line naming the model, warnings are noise
    if bounded_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
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
    from trmcore.infer.graph_check import check_model_file

    check_model_file(path)  # control flow, declared sizes, non-finite weights: before onnxruntime reads it
    try:
        return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=requested)
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        if isinstance(err, (ValueError, FileNotFoundError)):
            raise
        from trmcore.fileio import check_readable

        check_readable(path)  # onnxruntime words "permission denied" as "system error number 13"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load ONNX model {path}: {first_line}") from None


class TimeLimitError(ValueError):
    """The network ran past the per-volume time limit (``--time-limit``)."""


def run_with_deadline(session: ort.InferenceSession, feeds: dict, deadline: Optional[float], model_path,
                      time_limit: Optional[float] = None) -> list:
    """``session.run(None, feeds)`` stopped at ``deadline`` (``time.monotonic()`` seconds; None: no bound).

    onnxruntime checks ``RunOptions.terminate`` between kernels (and every iteration of a loop), so a
    timer thread that sets it ends a run that would never finish. Errors name ``model_path``:
    :class:`TimeLimitError` past the deadline, :class:`trmcore.limits.ResourceLimitError` when the
    arena cap refused an allocation, ValueError for anything else onnxruntime reports.
    """
    options = ort.RunOptions()
    options.log_severity_level = 4  # a failed run is reported below, as one line naming the model
    timer = None
    if deadline is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _past_deadline(model_path, time_limit)
        timer = threading.Timer(remaining, setattr, (options, "terminate", True))
        timer.daemon = True
        timer.start()
    try:
        return session.run(None, feeds, options)
    except Exception as err:  # onnxruntime raises its own types (Fail, RuntimeException ...), not ValueError
        if not (type(err).__module__.startswith("onnxruntime") or isinstance(err, (RuntimeError, MemoryError))):
            raise  # a programming error keeps its traceback
        text = str(err).strip()
        if options.terminate or "terminate flag" in text:
            raise _past_deadline(model_path, time_limit) from None
        if "smaller than requested bytes" in text or "Failed to allocate memory" in text:
            raise ResourceLimitError(f"{model_path}: the network asked for more memory than the "
                                     f"{format_size(memory_limit())} memory limit allows (raise it with "
                                     f"--memory-limit or TRM_MEMORY_LIMIT): {_last_clause(text)}") from None
        raise ValueError(f"{model_path}: onnxruntime failed: {_last_clause(text)}") from None
    finally:
        if timer is not None:
            timer.cancel()


def _past_deadline(model_path, time_limit: Optional[float]) -> TimeLimitError:
    limit = f"the {time_limit:g} s" if time_limit else "its"
    return TimeLimitError(f"{model_path}: the network ran past {limit} time limit on one volume and was "
                          "stopped (raise it with --time-limit or TRM_TIME_LIMIT)")


def _last_clause(text: str) -> str:
    """The informative end of an onnxruntime message, on one line."""
    line = " ".join(text.split())
    marker = "Status Message:"
    if marker in line:
        line = line.split(marker, 1)[1].strip()
    return line[:300]


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs the graph (the first of the session's providers)."""
    return session.get_providers()[0]

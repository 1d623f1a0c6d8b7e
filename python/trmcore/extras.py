"""Optional dependencies: which pip extra provides what, and one-line messages when one is missing.

The base install (numpy, nibabel, tqdm and the compiled core) runs the NumPy
ops, the data tools and ``trm doctor``. Everything else comes from an extra of
``pyproject.toml``; this module is the one place that maps commands to extras,
so ``trm`` can say ``pip install 'trmcore[select]'`` instead of ending in a
ModuleNotFoundError traceback, and say it before any work is done.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

# Import names each extra provides (pyproject.toml [project.optional-dependencies]);
# `gpu` provides the same module as `cpu` (onnxruntime-gpu installs `onnxruntime`).
EXTRA_MODULES: Dict[str, Tuple[str, ...]] = {
    "train": ("torch", "safetensors", "onnx", "onnxscript"),
    "cpu": ("onnxruntime",),
    "select": ("scipy", "networkx", "matplotlib"),
    "dicom": ("pydicom", "highdicom"),  # DICOM series in, DICOM-SEG out (trm predict, trm import dicom)
}



def evaluate_source(model: Optional[Path], predictions: Optional[Path]) -> str:
    """What `trm evaluate` (and `trm transferability`) runs: ``"predictions"`` (a folder of label files),
    ``"onnx"`` or ``"run"`` (a torch source).

    The one rule, used by the CLI to dispatch and here to name the extra: an
    ``.onnx`` path that is not a folder is an exported model, anything else a
    run folder.
    """
    if predictions is not None:
        return "predictions"
    if model is not None and Path(model).suffix.lower() == ".onnx" and not Path(model).is_dir():
        return "onnx"
    return "run"


def _evaluate_extras(args: Any) -> Tuple[str, ...]:
    # NumPy + nibabel score a folder of predictions; an ONNX model adds onnxruntime; only a run needs torch.
    source = evaluate_source(getattr(args, "model", None), getattr(args, "predictions", None))
    return {"predictions": (), "onnx": ("cpu",), "run": ("train",)}[source]


def _transferability_extras(args: Any) -> Tuple[str, ...]:
    # An exported ONNX model runs on onnxruntime; any other source (a run, nnU-Net, MONAI) on torch.
    return ("cpu",) if evaluate_source(getattr(args, "model", None), None) == "onnx" else ("train",)


def _export_extras(args: Any) -> Tuple[str, ...]:
    # A float32 export without onnxruntime is written unverified (with a note); a reduced precision is
    # quantised (int8) or checked for label agreement by onnxruntime, so it needs it.
    precision = getattr(args, "precision", None) or ("fp16" if getattr(args, "fp16", False) else "fp32")
    return ("train",) if precision == "fp32" else ("train", "cpu")


# Extras each `trm` command needs (commands not listed need only the base install): a tuple, or a
# function of the parsed arguments where the extras depend on them.
CommandExtras = Union[Tuple[str, ...], Callable[[Any], Tuple[str, ...]]]
COMMAND_EXTRAS: Dict[str, CommandExtras] = {
    "train": ("train",),
    "finetune": ("train",),
    "evaluate": _evaluate_extras,
    "riskmap": ("train",),
    "demo": ("train",),
    "export": _export_extras,
    "rank": ("train", "select"),
    "transfer-path": ("train",),
    "reproduce": ("train", "select"),
    "predict": ("cpu",),
    "transferability": _transferability_extras,
    "affinity": ("select",),
    "path": ("select",),
}


def command_extras(command: Optional[str], args: Any = None) -> Tuple[str, ...]:
    """The extras `trm COMMAND` needs with the parsed arguments ``args``."""
    entry = COMMAND_EXTRAS.get(command or "", ())
    return entry(args) if callable(entry) else entry


def install_hint(extra: str) -> str:
    """``pip install 'trmcore[cpu]'`` (for onnxruntime, also the GPU alternative)."""
    if extra == "cpu":
        return "pip install 'trmcore[cpu]' (or 'trmcore[gpu]' for onnxruntime-gpu, not both)"
    return f"pip install 'trmcore[{extra}]'"


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_modules(extra: str) -> List[str]:
    """The modules of ``extra`` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def missing_message(extra: str, missing: Sequence[str], what: str = "") -> str:
    """One line: (what) needs which modules, and the pip command that installs them."""
    return f"{what + ' ' if what else ''}needs {', '.join(missing)}, not installed: {install_hint(extra)}"


def require_extras(extras: Sequence[str], what: str = "") -> None:
    """Raise MissingExtraError naming the first extra with missing modules."""
    for extra in extras:
        missing = missing_modules(extra)
        if missing:
            raise MissingExtraError(missing_message(extra, missing, what))


def require_command(command: Optional[str], args: Any = None) -> None:
    """Check, before it runs, that `trm COMMAND` (with arguments ``args``) has its optional dependencies."""
    require_extras(command_extras(command, args))  # the CLI prefixes "trm COMMAND: error: "


def extra_for_module(module: Optional[str]) -> Optional[str]:
    """The extra that provides top-level module ``module`` (``"scipy.stats"`` -> ``"select"``), or None."""
    top = (module or "").split(".")[0]
    for extra, modules in EXTRA_MODULES.items():
        if top in modules:
            return extra
    return None


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_conflict() -> Optional[str]:
    """A warning when onnxruntime and onnxruntime-gpu are both installed, else None.

    Both install the same `onnxruntime` module; whichever was installed last wins,
    and with the CPU build on top the CUDA provider silently disappears.
    """
    cpu, gpu = installed_version("onnxruntime"), installed_version("onnxruntime-gpu")
    if cpu is None or gpu is None:
        return None
    return (f"onnxruntime {cpu} and onnxruntime-gpu {gpu} are both installed; they share one module and "
            "the CUDA provider may be missing. Keep one: pip uninstall -y onnxruntime onnxruntime-gpu, then "
            "pip install 'trmcore[gpu]' (or 'trmcore[cpu]')")

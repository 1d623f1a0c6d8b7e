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
from typing import Dict, List, Optional, Sequence, Tuple

# Import names each extra provides (pyproject.toml [project.optional-dependencies]);
# `gpu` provides the same module as `cpu` (onnxruntime-gpu installs `onnxruntime`).
EXTRA_MODULES: Dict[str, Tuple[str, ...]] = {
    "train": ("torch", "safetensors", "onnx", "onnxscript"),
    "cpu": ("onnxruntime",),
    "select": ("scipy", "networkx", "matplotlib"),
    "dicom": ("pydicom", "highdicom"),  # DICOM series in, DICOM-SEG out (trm predict, trm import dicom)
}

# Extras each `trm` command needs (commands not listed need only the base install).
COMMAND_EXTRAS: Dict[str, Tuple[str, ...]] = {
    "train": ("train",),
    "finetune": ("train",),
    "evaluate": ("train",),
    "riskmap": ("train",),
    "demo": ("train",),
    "export": ("train", "cpu"),  # the export is checked against onnxruntime
    "rank": ("train", "select"),
    "transfer-path": ("train",),
    "reproduce": ("train", "select"),
    "predict": ("cpu",),
    "transferability": ("cpu",),
    "affinity": ("select",),
    "path": ("select",),
}


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


def require_command(command: Optional[str]) -> None:
    """Check, before it runs, that `trm COMMAND` has its optional dependencies."""
    if command in COMMAND_EXTRAS:
        require_extras(COMMAND_EXTRAS[command])  # the CLI prefixes "trm COMMAND: error: "


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

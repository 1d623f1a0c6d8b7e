"""``trm doctor``: check an installation in one command.

Prints the trmcore and Python versions, the compiled core (which CPU kernel
variant runs, the thread count, whether the CUDA kernels are built in and
usable), onnxruntime and its execution providers, and which extras are
installed; then runs the native kernels on a small problem and compares them
with a float64 NumPy computation. Torch is never imported.

Exit code 0 when the core loads and the self-test agrees; 1 otherwise (or when
onnxruntime and onnxruntime-gpu are both installed). Missing extras are
reported, not failures: a hospital's inference-only install has no torch.
"""

from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Tuple

import numpy as np

from trmcore import __version__
from trmcore.cli.common import command
from trmcore.extras import EXTRA_MODULES, install_hint, installed_version, missing_modules, onnxruntime_conflict

# Distribution names of the modules in EXTRA_MODULES whose pip name differs.
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = command(
        subparsers, "doctor", help="check this installation: versions, CPU/CUDA kernels, onnxruntime providers, extras",
        description=__doc__.split("\n\n")[1].replace("\n", " "), example_lines=["trm doctor"])
    parser.set_defaults(func=_run_doctor)


def _module_version(module: str) -> str:
    for distribution in _DISTRIBUTIONS.get(module, (module,)):
        version = installed_version(distribution)
        if version:
            return version if distribution == module else f"{version} ({distribution})"
    return "?"


def _self_test() -> Tuple[bool, str]:
    """LEEP joint, pixel LEEP and the risk-weighted loss against float64 NumPy, on 2 x 3 x 24 x 40 logits."""
    from trmcore import ops

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 24, 40)).astype(np.float32)
    labels = rng.integers(0, 2, size=(2, 24, 40))
    labels[0, :2] = -100  # ignored pixels take part in nothing
    valid = labels != -100
    theta = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    theta /= theta.sum(axis=1, keepdims=True)  # [N, Z, H, W]
    theta_pixels = theta.transpose(0, 2, 3, 1)[valid]  # [M, Z]
    expected_joint = np.stack([theta_pixels[labels[valid] == c].sum(axis=0) for c in range(2)])
    joint = ops.leep_joint(logits, labels, num_classes=2)
    cond = expected_joint / expected_joint.sum(axis=0, keepdims=True)  # P(y | z)
    safe = np.where(valid, labels, 0)
    eep = np.einsum("nhwz,nhwz->nhw", cond[safe], theta.transpose(0, 2, 3, 1))  # cond[safe]: [N, H, W, Z]
    expected_map = np.where(valid, np.log(eep), 0.0)
    leep_map = ops.pixel_leep(logits, labels, joint)
    weights = rng.uniform(1, 10, size=labels.shape).astype(np.float32)
    ce = np.log(np.exp(logits.astype(np.float64)).sum(axis=1)) - np.take_along_axis(
        logits.astype(np.float64), safe[:, None], axis=1)[:, 0]
    expected_loss = np.where(valid, weights * ce, 0.0).sum() / max(1, int((valid & (labels != 0)).sum()))
    loss = float(ops.risk_weighted_ce(logits, labels, weights))
    errors = [
        ("leep_joint", float(np.abs(joint.sums - expected_joint).max() / np.abs(expected_joint).max())),
        ("pixel_leep", float(np.abs(leep_map - expected_map).max())),
        ("risk_weighted_ce", abs(loss - expected_loss) / abs(expected_loss)),
    ]
    bad = [f"{name} off by {error:.2g}" for name, error in errors if not error < 1e-4]
    worst = max(error for _, error in errors)
    return not bad, ("; ".join(bad) if bad else f"kernels agree with float64 NumPy (largest error {worst:.1g})")


def _run_doctor(args: argparse.Namespace) -> int:
    import trmcore

    ok = True
    lines: List[Tuple[str, str]] = [
        ("trmcore", f"{__version__} at {trmcore.__path__[0]}"),
        ("python", f"{platform.python_version()} ({sys.executable}), {platform.machine()}, "
                   f"glibc {platform.libc_ver()[1] or '?'}"),
    ]
    try:
        from trmcore.ops._native import native

        core = native()
    except ImportError as err:
        core = None
        ok = False
        lines.append(("native core", f"FAILED: {err}"))
    if core is not None:
        lines.append(("native core", f"{core.__file__}"))
        lines.append(("CPU kernels", f"{core.cpu_isa()} variant (TRMCORE_CPU_ISA=baseline forces the baseline), "
                                     f"{core.default_num_threads()} threads by default (OMP_NUM_THREADS)"))
        if not core.built_with_cuda():
            cuda = "not built in (CPU-only build); the CPU kernels are used"
        elif core.cuda_available():
            cuda = "built in and usable (a CUDA device answers)"
        else:
            cuda = ("built in, not usable here (no GPU, no NVIDIA driver, or a driver older than CUDA 13 "
                    "needs); the CPU kernels are used")
        lines.append(("CUDA kernels", cuda))
        passed, detail = _self_test()
        ok &= passed
        lines.append(("self-test", ("OK: " if passed else "FAILED: ") + detail))
    if missing_modules("cpu"):
        lines.append(("onnxruntime", f"not installed (needed by trm predict): {install_hint('cpu')}"))
    else:
        import onnxruntime

        lines.append(("onnxruntime", f"{_module_version('onnxruntime')}, providers "
                                     + ", ".join(onnxruntime.get_available_providers())))
    conflict = onnxruntime_conflict()
    if conflict:
        ok = False
        lines.append(("conflict", conflict))
    for extra, modules in EXTRA_MODULES.items():
        missing = missing_modules(extra)
        present = ", ".join(f"{m} {_module_version(m)}" for m in modules if m not in missing)
        state = "installed" if not missing else f"missing {', '.join(missing)} ({install_hint(extra)})"
        lines.append((f"extra [{extra}]", state + (f"; {present}" if present and missing else
                                                   f": {present}" if present else "")))
    width = max(len(name) for name, _ in lines)
    for name, text in lines:
        print(f"{name:<{width}}  {text}")
    print("OK" if ok else "PROBLEMS FOUND (see above)")
    return 0 if ok else 1

"""The instruction-set variants of the CPU kernels (baseline x86-64 and AVX2).

The AVX2 variant is the same source compiled with -mavx2 and chosen at run time;
it must return bitwise the same results as the baseline, and no AVX instruction
may leak into code that runs on CPUs without AVX2.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.ops._native import native

# Class counts: the compile-time specialisations (1..8, 16) and the generic path (13).
CLASS_COUNTS = [1, 2, 3, 4, 5, 8, 13, 16]


def _avx2_usable() -> bool:
    try:
        native().set_cpu_isa("avx2")
    except ValueError:
        return False
    finally:
        native().set_cpu_isa("auto")
    return True


needs_avx2 = pytest.mark.skipif(not _avx2_usable(), reason="no AVX2 variant (not built or CPU lacks AVX2)")


def _all_outputs(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, classes: int):
    joint = ops.leep_joint(logits, labels, classes)
    leep_map = ops.pixel_leep(logits, labels, joint)
    x = logits.detach().clone().requires_grad_(True)
    loss = ops.risk_weighted_ce(x, labels, weights)
    loss.backward()
    return joint.sums, leep_map, ops.risk_map(leep_map, labels), loss.detach(), x.grad


@needs_avx2
@pytest.mark.parametrize("classes", CLASS_COUNTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_avx2_and_baseline_agree_bitwise(classes, dtype):
    gen = torch.Generator().manual_seed(classes)
    # Odd sizes: rows shorter than the vector width and images ending mid-row.
    logits = (torch.randn(3, classes, 37, 29, generator=gen) * 5).to(dtype)
    labels = torch.randint(0, classes, (3, 37, 29), generator=gen)
    labels[1, :5] = -100
    weights = torch.rand(3, 37, 29, generator=gen) * 9 + 1
    results = {}
    try:
        for isa in ("baseline", "avx2"):
            native().set_cpu_isa(isa)
            assert native().cpu_isa() == isa
            results[isa] = _all_outputs(logits, labels, weights, classes)
    finally:
        native().set_cpu_isa("auto")
    for name, a, b in zip(("joint", "pixel_leep", "risk_map", "loss", "grad"), results["baseline"], results["avx2"]):
        assert torch.equal(a, b), f"{name} differs between the baseline and AVX2 kernels"


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(ValueError, match="expected 'baseline', 'avx2' or 'auto'"):
        native().set_cpu_isa("avx512")
    assert native().cpu_isa() in ("baseline", "avx2")


def test_outputs_larger_than_the_huge_page_threshold_are_right():
    # 1 x 2 x 1600 x 1600: a 10 MB LEEP map and a 20 MB gradient, above the 8 MiB
    # from which the launchers advise huge pages for their outputs.
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 2, 1600, 1600, generator=gen) * 3
    labels = torch.randint(0, 2, (1, 1600, 1600), generator=gen)
    weights = torch.rand(1, 1600, 1600, generator=gen) + 0.5
    joint = ops.leep_joint(logits, labels, 2)
    leep_map = ops.pixel_leep(logits, labels, joint)
    theta = torch.softmax(logits.double(), dim=1)
    cond = torch.as_tensor(joint.conditional(), dtype=torch.float64)
    expected = torch.log((cond[labels] * theta.permute(0, 2, 3, 1)).sum(-1))
    torch.testing.assert_close(leep_map.double(), expected, rtol=0, atol=2e-5)
    x = logits.clone().requires_grad_(True)
    ops.risk_weighted_ce(x, labels, weights).backward()
    onehot = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).double()
    n_fg = (labels != 0).sum().double()
    expected_grad = weights.double().unsqueeze(1) * (theta - onehot) / n_fg
    torch.testing.assert_close(x.grad.double(), expected_grad, rtol=1e-4, atol=1e-10)


def test_bad_weights_at_ignored_pixels_are_reported():
    logits = np.zeros((1, 2, 4, 4), np.float32)
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, 0, 0] = -100
    weights = np.ones((1, 4, 4), np.float32)
    weights[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="weights contain non-finite values .* at 1 pixels"):
        ops.risk_weighted_ce(logits, labels, weights)
    weights[0, 0, 0] = -0.5
    with pytest.raises(ValueError, match="weights must be >= 0; 1 pixels have a negative weight"):
        ops.risk_weighted_ce(torch.from_numpy(logits), torch.from_numpy(labels), torch.from_numpy(weights))


def _functions_with_avx(path: str) -> dict:
    """{function name: first AVX instruction} from the disassembly of ``path``."""
    listing = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                             check=True).stdout
    found, function = {}, "?"
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
        elif "%ymm" in line or re.search(r"\tv[a-z0-9]+\s", line):
            found.setdefault(function, line.strip())
    return found


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_avx_instructions_only_in_the_avx2_variant():
    path = native().__file__
    avx = _functions_with_avx(path)
    leaked = {name: insn for name, insn in avx.items() if "cpu_avx2" not in name}
    assert not leaked, f"AVX code outside the AVX2 variant (would crash CPUs without AVX): {leaked}"
    if _avx2_usable():
        assert any("cpu_avx2" in name for name in avx), "the AVX2 variant contains no AVX code"


def test_environment_variable_forces_the_baseline_variant():
    import os
    import sys

    env = dict(os.environ, TRMCORE_CPU_ISA="baseline")
    code = "from trmcore.ops._native import native; print(native().cpu_isa())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "baseline"

"""The MONAI example of docs/api.md runs as written (where MONAI is installed): a LEEP <= 0, two finite losses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_monai_example_runs(capsys):
    pytest.importorskip("monai")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/api.md has no python example"
    code = blocks[0]
    assert 20 <= len(code.splitlines()) <= 40
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_api_example"})
    out = capsys.readouterr().out
    leep = float(re.search(r"source LEEP (-?[0-9.]+)", out).group(1))
    assert leep <= 0
    losses = [float(v) for v in re.findall(r"epoch \d: loss ([0-9.]+)", out)]
    assert len(losses) == 2 and all(v > 0 for v in losses)

"""Every ``trmcore`` import follows the arrows of docs/architecture.md.

The table "The arrows" in docs/architecture.md is the rule: a row names one or
more packages and the trmcore packages they may import; ``every package`` means
any. The paragraph "Shared modules: ..." names the top-level modules (``fileio``,
``errors`` ...) that every package may import and that import no package. The
test parses that table, so the page and the code cannot drift apart: a new
arrow needs a new line in the docs, and a new package or shared module fails
here until it is placed.

Imports inside functions count too (a handler's lazy import is still an
arrow); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import trmcore

CHECKOUT = Path(__file__).resolve().parents[1]
# The sources of a checkout (the docs live beside them), else the installed copy.
PACKAGE_ROOT = (CHECKOUT / "python" / "trmcore" if (CHECKOUT / "python" / "trmcore").is_dir()
                else Path(trmcore.__file__).resolve().parent)
ARCHITECTURE = CHECKOUT / "docs" / "architecture.md"

EVERY = "*"


def _backticked(text: str) -> List[str]:
    return re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", text)


def read_rules(page: str) -> Tuple[Dict[str, Set[str]], Set[str]]:
    """(package -> packages it may import, shared modules) from the page's arrows table."""
    section = page.split("## The arrows", 1)[1].split("\n## ", 1)[0]
    allowed: Dict[str, Set[str]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        targets = {EVERY} if "every package" in cells[1] else {
            name.split(".")[0] for name in _backticked(cells[1]) if not name.startswith("trmcore")}
        for package in _backticked(cells[0]):
            allowed[package] = targets
    # The paragraph "Shared modules: ..." up to the blank line; its module names (not the options it mentions).
    shared = section[section.index("\nShared modules:"):].split("\n\n", 1)[0]
    return allowed, {name for name in _backticked(shared) if name.isidentifier()}


def _outside_type_checking(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _absolute(path: Path, level: int, module: str) -> str:
    """``from ..x import y`` in trmcore/data/a.py -> ``trmcore.x``."""
    package = ["trmcore", *path.relative_to(PACKAGE_ROOT).parent.parts]
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def trmcore_imports(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, first component after ``trmcore.``) of every trmcore import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in _outside_type_checking(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "") if node.level == 0 else _absolute(path, node.level, node.module or "")
            # `from trmcore import ops` imports trmcore.ops; `from trmcore.data import x` imports trmcore.data.
            names = [f"trmcore.{alias.name}" for alias in node.names] if module == "trmcore" else [module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "trmcore" and len(parts) > 1:
                yield node.lineno, parts[1]


def _owner(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def violations(allowed: Dict[str, Set[str]], shared: Set[str]) -> List[str]:
    found = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        owner = _owner(path)
        if owner in ("__init__", "__main__"):
            continue  # trmcore/__init__.py: the version only
        if owner not in allowed and owner not in shared:
            found.append(f"{path.relative_to(PACKAGE_ROOT)}: '{owner}' is neither a package of the arrows table "
                         "nor a shared module (docs/architecture.md)")
            continue
        targets = set() if owner in shared else allowed[owner]
        for line, target in trmcore_imports(path):
            if target == owner or target == "_C" or target.startswith("__"):  # _C: the core; __version__
                continue
            if owner in shared:
                ok = target in shared  # shared modules import no package
            else:
                ok = target in shared or EVERY in targets or target in targets
            if not ok:
                found.append(f"{path.relative_to(PACKAGE_ROOT)}:{line}: {owner} -> {target} is not an arrow "
                             "of docs/architecture.md")
    return found


@pytest.fixture(scope="module")
def rules():
    if not ARCHITECTURE.is_file():
        pytest.skip("docs/architecture.md is not beside the tests (not a source checkout)")
    return read_rules(ARCHITECTURE.read_text(encoding="utf-8"))


def test_every_import_follows_the_arrows(rules):
    allowed, shared = rules
    assert violations(allowed, shared) == []


def test_the_rules_cover_every_package(rules):
    allowed, shared = rules
    packages = {p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(allowed), f"packages missing from the arrows table: {packages - set(allowed)}"
    assert allowed["ops"] == set() and allowed["data"] == set()


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch, rules):
    """The checker itself: a data module importing infer, or ops importing torch-side training, is reported."""
    allowed, shared = rules
    fake = tmp_path / "trmcore"
    (fake / "data").mkdir(parents=True)
    (fake / "ops").mkdir()
    (fake / "data" / "bad.py").write_text("def f():\n    from trmcore.infer import predict_files\n")
    (fake / "ops" / "bad.py").write_text("from trmcore import training\n")
    (fake / "ops" / "ok.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                        "    from trmcore.training import x\nfrom trmcore import _C\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE_ROOT", fake)
    found = violations(allowed, shared)
    assert len(found) == 2
    assert "data/bad.py:2: data -> infer" in found[0] and "ops/bad.py:1: ops -> training" in found[1]

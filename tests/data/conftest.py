"""Shared fixture: a small phantom, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from trmcore.data import make_phantom


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """6 cases, 3 sites, tumour in half of them, 48x48x24."""
    return make_phantom(tmp_path_factory.mktemp("phantom") / "ds", n_cases=6, sites=3, tumour=0.5, seed=3)

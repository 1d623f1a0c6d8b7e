"""Tiny phantom dataset and source run shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from trmcore.data import make_phantom, parse_task
from trmcore.models import UNetConfig
from trmcore.training.trainer import train

from .helpers import tiny_config

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def phantom(tmp_path_factory):
    return make_phantom(tmp_path_factory.mktemp("data") / "phantom", n_cases=4, sites=2, size=(32, 32, 8), seed=0)


@pytest.fixture(scope="session")
def source_run(phantom, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "source"
    train(phantom, parse_task("T1", "CSF,GM,WM"), run, tiny_config(iterations=6, freeze="none"),
          UNetConfig(depth=2, width=4), progress=False)
    return run

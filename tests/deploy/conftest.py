"""Fixtures for the deployment tests: a phantom dataset, a briefly trained run, its ONNX export.

The run is trained for a few Adam steps on the phantom so that its
predictions contain several classes (random weights predict almost only
background, which would make the label-equality tests weak). Label values
are iSeg-like (10, 150) to check that outputs hold values, not class indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CHANNELS = ["T1", "T2"]
LABEL_NAMES = ["background", "CSF", "GM"]
LABEL_VALUES = [0, 10, 150]
DIVISOR = 8
PHANTOM_SIZE = (36, 44, 10)  # not multiples of the divisor: padding must be undone


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    from trmcore.data import make_phantom

    return make_phantom(tmp_path_factory.mktemp("deploy") / "phantom", n_cases=3, sites=2, size=PHANTOM_SIZE,
                        seed=3)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, phantom) -> Path:
    import torch

    from trmcore.data import load_task_volumes, parse_task, volumes_to_slices
    from trmcore.models import UNet, UNetConfig
    from trmcore.training import RunInfo
    from trmcore.training.checkpoint import save_run

    torch.manual_seed(0)
    config = UNetConfig(in_channels=2, num_classes=3, depth=3, width=8)
    model = UNet(config)
    volumes, task_info = load_task_volumes(phantom, parse_task("T1,T2", "CSF,GM"), progress=False)
    slices = volumes_to_slices(volumes, axis=2, divisor=DIVISOR, skip_empty=True)
    middle = np.argsort(-(slices.labels > 0).sum(axis=(1, 2)))[:8]  # the slices with most tissue
    images = torch.from_numpy(slices.images[middle])
    labels = torch.from_numpy(slices.labels[middle])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(12):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
    model.eval()
    info = RunInfo(model=config, channels=CHANNELS, label_names=LABEL_NAMES, label_values=LABEL_VALUES, axis=2,
                   divisor=DIVISOR, method="trm", source="phantom-source", orientation="RAS",
                   spacing=list(task_info.geometry.spacing))
    out = tmp_path_factory.mktemp("deploy") / "run"
    save_run(out, model, info)
    return out


@pytest.fixture(scope="session")
def run_with_data(tmp_path_factory, run_dir, phantom) -> Path:
    """``run_dir`` as `trm train` records it: its dataset and its training and validation cases."""
    import shutil

    from trmcore.training.runinfo import read_run_info, write_run_info

    out = tmp_path_factory.mktemp("deploy") / "run-with-data"
    shutil.copytree(run_dir, out)
    info = read_run_info(out)
    info.data, info.train_cases, info.val_cases = str(phantom), ["phantom_000", "phantom_001"], ["phantom_002"]
    write_run_info(out, info)
    return out


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory, run_dir) -> Path:
    from trmcore.export import export_run

    path = tmp_path_factory.mktemp("deploy") / "model.onnx"
    export_run(run_dir, path)
    return path


def case_files(phantom: Path, case: str, channels=(0, 1)):
    return [phantom / "imagesTr" / f"{case}_{k:04d}.nii.gz" for k in channels]


def file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def torch_labels(run_dir: Path, phantom: Path, case: str):
    """Reference prediction with torch: (label values [X,Y,Z], top-2 logit margin [X,Y,Z], logits [C,X,Y,Z]).

    Uses the training-side preprocessing (load_task_volumes, volumes_to_slices,
    slices_to_volume), not trmcore.infer's, so both paths are checked against each other.
    """
    import torch

    from trmcore.data import load_task_volumes, parse_task, slices_to_volume, unpad, volumes_to_slices
    from trmcore.training.checkpoint import load_run

    model, info = load_run(run_dir)
    volumes, _ = load_task_volumes(phantom, parse_task("T1,T2", "CSF,GM"), cases=[case], progress=False)
    slices = volumes_to_slices(volumes, axis=info.axis, divisor=info.divisor)
    with torch.inference_mode():
        logits = model(torch.from_numpy(slices.images)).numpy()  # [S, C, H', W']
    logits = np.ascontiguousarray(unpad(logits, slices.pad))
    logit_volume = slices_to_volume(logits, ((0, 0), (0, 0)), info.axis, volumes[0].shape)
    ordered = np.sort(logit_volume, axis=0)
    margin = ordered[-1] - ordered[-2]
    values = np.asarray(info.label_values, np.uint8)[logit_volume.argmax(axis=0)]
    return values, margin, logit_volume

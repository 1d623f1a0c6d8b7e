"""Issue 10 on training: resume state cannot run code, a resume must be the same run, run folders and
evaluate/riskmap outputs never replace what the command did not make."""

from __future__ import annotations

import json
import pickle
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from trmcore.cli.main import main
from trmcore.data import parse_task
from trmcore.errors import UnsafeFileError, UnsafeOutputError
from trmcore.fileio import MARKER_FILE, remove_output_folder
from trmcore.models import UNetConfig
from trmcore.training.checkpoint import TRAIN_STATE_FILE, load_run, save_run
from trmcore.training.riskmap_files import write_risk_maps
from trmcore.training.trainer import finetune, train

from .helpers import Interrupt, stop_at, tiny_config

TARGET = parse_task("T2", "CSF")


class _Payload:
    """Unpickling this creates ``marker``: what a hostile train_state.pt would do (with worse code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_hostile_resume_state_is_refused_and_runs_nothing(phantom, source_run, tmp_path, writer, capsys):
    run = tmp_path / "run"
    run.mkdir()
    marker = tmp_path / "pwned"
    state = {"iteration": 1, "model": _Payload(marker)}
    if writer == "pickle":
        (run / TRAIN_STATE_FILE).write_bytes(pickle.dumps(state))
    else:
        torch.save(state, run / TRAIN_STATE_FILE)
    with pytest.raises(UnsafeFileError, match="could run code"):
        finetune(phantom, TARGET, source_run, run, tiny_config(method="trm"), progress=False, resume=True)
    assert not marker.exists()
    code = main(["finetune", str(phantom), "--channel", "T2", "--labels", "CSF", "--source", str(source_run),
                 "-o", str(run), "--resume", "-q", "--iterations", "4"])
    err = capsys.readouterr().err
    assert code == 2 and TRAIN_STATE_FILE in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_pickle_named_safetensors_is_a_clear_error(source_run, phantom, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(pickle.dumps({"w": _Payload(marker)}))
    with pytest.raises(UnsafeFileError, match="not a readable safetensors file"):
        load_run(run)
    code = main(["evaluate", str(phantom), "-m", str(run), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "model.safetensors: not a readable safetensors file" in err
    assert len(err.strip().splitlines()) == 1 and not marker.exists()


def test_resume_state_holds_only_plain_values(phantom, source_run, tmp_path):
    with pytest.raises(Interrupt):
        finetune(phantom, TARGET, source_run, tmp_path / "r", tiny_config(method="trm", iterations=4,
                                                                          checkpoint_every=1),
                 progress=False, on_iteration=stop_at(2))
    state = torch.load(tmp_path / "r" / TRAIN_STATE_FILE, weights_only=True)  # loads without any allow-list
    assert state["iteration"] == 2


@pytest.fixture()
def interrupted(phantom, source_run, tmp_path):
    run = tmp_path / "cut"
    with pytest.raises(Interrupt):
        finetune(phantom, TARGET, source_run, run, tiny_config(method="trm", iterations=4, checkpoint_every=1),
                 progress=False, on_iteration=stop_at(2))
    return run


def _resume(phantom, source_run, run, task=TARGET):
    finetune(phantom, task, source_run, run, tiny_config(method="trm", iterations=4, checkpoint_every=1),
             progress=False, resume=True)


def test_resume_with_other_task_refused(phantom, source_run, interrupted):
    before = (interrupted / "run.json").read_text()
    with pytest.raises(ValueError, match=r"not the same run: channels \['T2'\] -> \['T1'\]"):
        _resume(phantom, source_run, interrupted, parse_task("T1", "CSF"))
    with pytest.raises(ValueError, match=r"label_names .*'CSF'.* -> .*'GM'"):
        _resume(phantom, source_run, interrupted, parse_task("T2", "GM"))
    with pytest.raises(ValueError, match=r"site None -> 'site-A'"):
        _resume(phantom, source_run, interrupted, parse_task("T2", "CSF", "site-A"))
    assert (interrupted / "run.json").read_text() == before  # nothing was trained or written


def test_resume_with_other_data_or_source_refused(phantom, source_run, interrupted, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom, data)
    path = sorted((data / "imagesTr").glob("*_0001.nii.gz"))[0]
    image = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 1.5 + 3.0, image.affine, image.header), str(path))
    with pytest.raises(ValueError, match="data_fingerprint"):
        _resume(data, source_run, interrupted)
    other = tmp_path / "other-source"
    model, info = load_run(source_run)
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    save_run(other, model, info)
    with pytest.raises(ValueError, match="source_fingerprint"):
        _resume(phantom, other, interrupted)
    _resume(phantom, source_run, interrupted)  # the same run resumes
    # and finishes; its final state stays for an extension (issue 22)
    assert torch.load(interrupted / TRAIN_STATE_FILE, weights_only=True)["iteration"] == 4


@pytest.mark.parametrize("change, match", [(dict(depth=3), r"model.depth 2 -> 3"),
                                           (dict(norm="instance"), r"model.norm 'batch' -> 'instance'"),
                                           (dict(width=8), r"model.width 4 -> 8")])
def test_train_resume_with_other_model_refused(phantom, tmp_path, capsys, change, match):
    run = tmp_path / "src"
    task = parse_task("T1", "CSF")
    config = tiny_config(iterations=4, checkpoint_every=1, freeze="none")
    with pytest.raises(Interrupt):
        train(phantom, task, run, config, UNetConfig(depth=2, width=4), progress=False, on_iteration=stop_at(2))
    settings = {**dict(depth=2, width=4), **change}
    with pytest.raises(ValueError, match=match):
        train(phantom, task, run, config, UNetConfig(**settings), progress=False, resume=True)
    flags = [f"--{k}={v}" for k, v in settings.items()]
    code = main(["train", str(phantom), "--channel", "T1", "--labels", "CSF", "-o", str(run), "--resume", "-q",
                 "--iterations", "4", "--batch-size", "4", "--val-every", "2", "--val-fraction", "0.25",
                 "--lr", "1e-3", "--checkpoint-every", "1", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "not the same run" in err and "Traceback" not in err


def test_train_refuses_a_non_empty_folder_that_is_not_a_run(phantom, tmp_path, capsys):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.csv").write_text("my spreadsheet\n")
    code = main(["train", str(phantom), "--channel", "T1", "--labels", "CSF", "-o", str(folder), "-q",
                 "--iterations", "2", "--depth", "2", "--width", "4"])
    assert code == 2 and "not empty and holds no run" in capsys.readouterr().err
    assert (folder / "metrics.csv").read_text() == "my spreadsheet\n"
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]


def test_run_folders_are_marked_and_only_those_are_removed(source_run, tmp_path):
    assert json.loads((source_run / MARKER_FILE).read_text())["command"] == "train"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.json").write_text("{}")  # looks like a run, was not made by trm train
    with pytest.raises(UnsafeOutputError):
        remove_output_folder(foreign, "train")
    assert (foreign / "run.json").exists()
    copy = tmp_path / "copy"
    shutil.copytree(source_run, copy)
    remove_output_folder(copy, "train")
    assert not copy.exists()


# ---------------------------------------------------------------------------------------- evaluate, riskmap
def test_evaluate_output_never_replaces_inputs(phantom, source_run, tmp_path, capsys):
    args = ["evaluate", str(phantom), "-m", str(source_run), "-q", "--cases", "phantom_000", "-o"]
    for target in (phantom / "dataset.json", sorted((phantom / "labelsTr").iterdir())[0],
                   source_run / "run.json"):
        before = target.read_bytes()
        for extra in ([], ["--overwrite"]):
            assert main(args + [str(target)] + extra) == 2
            assert "input" in capsys.readouterr().err
        assert target.read_bytes() == before
    existing = tmp_path / "dice.json"
    existing.write_text("earlier")
    assert main(args + [str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "earlier"
    assert main(args + [str(existing), "--overwrite"]) == 0
    assert "mean" in json.loads(existing.read_text())


def test_riskmap_never_through_a_symlink_and_never_over_existing_maps(phantom, source_run, tmp_path, capsys):
    out = tmp_path / "maps"
    out.mkdir()
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"precious")
    (out / "phantom_000_risk.nii.gz").symlink_to(outside)
    args = ["riskmap", str(phantom), "--channel", "T2", "--labels", "CSF", "--source", str(source_run),
            "--cases", "phantom_000", "-o", str(out), "-q"]
    for extra in ([], ["--overwrite"]):
        assert main(args + extra) == 2
        assert "symbolic link" in capsys.readouterr().err
    assert outside.read_bytes() == b"precious"
    (out / "phantom_000_risk.nii.gz").unlink()
    assert main(args) == 0
    capsys.readouterr()
    written = sorted(p.name for p in out.iterdir())
    assert written == ["phantom_000.png", "phantom_000_risk.nii.gz", "phantom_000_transferability.nii.gz",
                       "risk_diagnostics.json"]
    digest = (out / "phantom_000_risk.nii.gz").read_bytes()
    assert main(args) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "phantom_000_risk.nii.gz").read_bytes() == digest
    assert main(args + ["--overwrite"]) == 0


def test_riskmap_failure_mid_write_leaves_no_partial_map(phantom, source_run, tmp_path, monkeypatch):
    out = tmp_path / "maps"
    real = nib.Nifti1Image.to_filename
    calls = []

    def dying(self, filename, **kwargs):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as handle:
                handle.write(b"\x1f\x8b")  # a few bytes, then the process "dies"
            raise KeyboardInterrupt
        return real(self, filename, **kwargs)

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", dying)
    with pytest.raises(KeyboardInterrupt):
        write_risk_maps(phantom, source_run, out, "T2", "CSF", cases=["phantom_000"], progress=False)
    names = sorted(p.name for p in out.iterdir() if p.name.endswith(".nii.gz"))
    assert names == ["phantom_000_transferability.nii.gz"]  # the risk map is absent, not 2 bytes
    assert nib.load(str(out / names[0])).shape == nib.load(str(phantom / "imagesTr" / "phantom_000_0000.nii.gz")).shape

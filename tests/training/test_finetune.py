"""End to end: source training, the four fine-tuning methods, frozen encoder, resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from trmcore.data import parse_task
from trmcore.models import UNetConfig
from trmcore.training import METHODS
from trmcore.training.checkpoint import TRAIN_STATE_FILE, load_run
from trmcore.training.trainer import finetune, train

from .helpers import Interrupt, stop_at, tiny_config

TARGET = parse_task("T2", "CSF")


def test_source_run_folder(source_run):
    model, info = load_run(source_run)
    assert info.method == "vanilla" and info.source is None
    assert info.label_names == ["background", "CSF", "GM", "WM"]
    assert info.label_values == [0, 1, 2, 3]
    assert info.iterations_done == 6 and info.divisor == 4
    assert info.val_dice is not None and 0 <= info.val_dice <= 1
    rows = list(csv.DictReader((source_run / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert (source_run / "curves.png").stat().st_size > 1000
    # The final state stays (issue 22): a finished run can be extended with --resume --iterations N.
    assert (source_run / TRAIN_STATE_FILE).exists()
    # the working grid and normalisation are recorded: RAS at the phantom's (median) spacing
    assert info.orientation == "RAS" and info.normalization == "zscore-foreground"
    assert info.spacing == pytest.approx([200 / 32, 220 / 32, 160 / 8])


def test_finetune_uses_the_source_grid_and_no_resample_records_native(phantom, source_run, tmp_path):
    """A source with another recorded spacing: the target volumes are resampled to it, and that is recorded."""
    record = json.loads((source_run / "run.json").read_text())
    record["spacing"] = [record["spacing"][0] * 2, record["spacing"][1] * 2, record["spacing"][2]]
    for step in record["preprocessing"]:  # the recorded pipeline says the same (else the run.json is refused)
        if step["step"] == "resample":
            step["spacing"] = record["spacing"]
    coarse = tmp_path / "coarse-source"
    coarse.mkdir()
    for name in ("model.safetensors",):
        (coarse / name).write_bytes((source_run / name).read_bytes())
    (coarse / "run.json").write_text(json.dumps(record))
    finetune(phantom, TARGET, coarse, tmp_path / "tuned", tiny_config(method="vanilla", iterations=2), progress=False)
    _, tuned = load_run(tmp_path / "tuned")
    assert tuned.orientation == "RAS" and tuned.spacing == pytest.approx(record["spacing"])
    native = train(phantom, parse_task("T1", "CSF"), tmp_path / "native",
                   tiny_config(iterations=2, freeze="none", resample=False), UNetConfig(depth=2, width=4),
                   progress=False)
    assert native.orientation == "native" and native.spacing is None


@pytest.mark.parametrize("method", METHODS)
def test_each_method_end_to_end(method, phantom, source_run, tmp_path):
    info = finetune(phantom, TARGET, source_run, tmp_path / method, tiny_config(method=method), progress=False)
    model, saved = load_run(tmp_path / method)
    assert saved.method == method
    assert saved.source == str(source_run.resolve())
    assert saved.model.num_classes == 2 and saved.label_names == ["background", "CSF"]
    assert saved.channels == ["T2"]
    assert info.iterations_done == 4
    # The head was re-initialised for 2 classes (source had 4) and trained.
    source, _ = load_run(source_run)
    assert model.head.weight.shape[0] == 2
    assert not torch.equal(model.decoder.blocks[-1][0].weight, source.decoder.blocks[-1][0].weight)


def test_frozen_encoder_bit_identical(phantom, source_run, tmp_path):
    finetune(phantom, TARGET, source_run, tmp_path / "run", tiny_config(method="trm", iterations=3),
             progress=False)
    source, _ = load_run(source_run)
    tuned, _ = load_run(tmp_path / "run")
    source_state, tuned_state = source.encoder.state_dict(), tuned.encoder.state_dict()
    assert any("running_mean" in k for k in source_state)
    for key, value in source_state.items():
        assert torch.equal(value, tuned_state[key]), key


def test_unfrozen_encoder_changes(phantom, source_run, tmp_path):
    finetune(phantom, TARGET, source_run, tmp_path / "run", tiny_config(method="vanilla", iterations=2,
                                                                         freeze="none"), progress=False)
    source, _ = load_run(source_run)
    tuned, _ = load_run(tmp_path / "run")
    assert not torch.equal(source.encoder.levels[0][0].weight, tuned.encoder.levels[0][0].weight)
    assert not torch.equal(source.encoder.levels[0][1].running_mean, tuned.encoder.levels[0][1].running_mean)


@pytest.mark.parametrize("refresh", [0, 2])
def test_resume_equals_uninterrupted(phantom, source_run, tmp_path, refresh):
    config = tiny_config(method="trm", iterations=6, val_every=3, checkpoint_every=2, risk_refresh=refresh,
                         freeze="none" if refresh else "encoder")
    finetune(phantom, TARGET, source_run, tmp_path / "whole", config, progress=False)
    with pytest.raises(Interrupt):
        finetune(phantom, TARGET, source_run, tmp_path / "cut", config, progress=False, on_iteration=stop_at(5))
    assert (tmp_path / "cut" / TRAIN_STATE_FILE).exists()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["iterations_done"] == 4
    finetune(phantom, TARGET, source_run, tmp_path / "cut", config, progress=False, resume=True)
    whole, _ = load_run(tmp_path / "whole")
    resumed, _ = load_run(tmp_path / "cut")
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert (tmp_path / "whole" / "metrics.csv").read_text().count("\n") == \
        (tmp_path / "cut" / "metrics.csv").read_text().count("\n")


def test_resume_with_changed_method_refused(phantom, source_run, tmp_path):
    config = tiny_config(method="trm", iterations=4, checkpoint_every=1)
    with pytest.raises(Interrupt):
        finetune(phantom, TARGET, source_run, tmp_path / "r", config, progress=False, on_iteration=stop_at(2))
    with pytest.raises(ValueError, match="method"):
        finetune(phantom, TARGET, source_run, tmp_path / "r", tiny_config(method="vanilla", iterations=4,
                                                                          checkpoint_every=1),
                 progress=False, resume=True)


def test_existing_run_not_overwritten(phantom, source_run):
    with pytest.raises(FileExistsError):
        train(phantom, parse_task("T1", "CSF"), source_run, tiny_config(freeze="none"),
              UNetConfig(depth=2, width=4), progress=False)


def test_channel_mismatch_is_clear(phantom, source_run, tmp_path):
    with pytest.raises(ValueError, match="channel"):
        finetune(phantom, parse_task("T1,T2", "CSF"), source_run, tmp_path / "x", tiny_config(method="trm"),
                 progress=False)

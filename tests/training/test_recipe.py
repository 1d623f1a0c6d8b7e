"""Issue 22: the learning-rate schedule, the optimiser choice, curves at every log row, extending a run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from trmcore.data import parse_task
from trmcore.models import UNetConfig
from trmcore.training import TrainConfig
from trmcore.training.checkpoint import TRAIN_STATE_FILE, load_run, load_train_state
from trmcore.training.schedule import LRSchedule, lr_factor
from trmcore.training.trainer import finetune, make_optimizer, train

from .helpers import tiny_config

TARGET = parse_task("T2", "CSF")


def test_poly_schedule_values():
    """nnU-Net's poly: lr * (1 - t / H) ** 0.9 at 0-based step t."""
    schedule = LRSchedule.planned("poly", 0.01, 100)
    assert schedule.lr_at(0) == pytest.approx(0.01, rel=1e-12)
    assert schedule.lr_at(50) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-12)  # 0.0053589
    assert schedule.lr_at(99) == pytest.approx(0.01 * 0.01 ** 0.9, rel=1e-12)  # the last step: 1.585e-4
    assert schedule.lr_at(50) == pytest.approx(0.005358867, rel=1e-6)


def test_warmup_then_poly_and_constant():
    schedule = LRSchedule.planned("poly", 0.01, 100, warmup=10)
    assert [schedule.lr_at(t) for t in (0, 4, 9)] == pytest.approx([0.001, 0.005, 0.01], rel=1e-12)
    assert schedule.lr_at(10) == pytest.approx(0.01, rel=1e-12)
    assert schedule.lr_at(55) == pytest.approx(0.01 * (1 - 45 / 90) ** 0.9, rel=1e-12)
    constant = LRSchedule.planned("constant", 0.01, 100, warmup=4)
    assert [constant.lr_at(t) for t in (0, 3, 4, 99)] == pytest.approx([0.0025, 0.01, 0.01, 0.01], rel=1e-12)
    assert lr_factor("constant", 500, 100) == 1.0


def test_extended_schedule_keeps_the_steps_that_ran():
    """An N1-step plan extended to N: steps < N1 keep the old horizon, later steps follow the N-step curve."""
    extended = LRSchedule.planned("poly", 1.0, 4).extended(4, 8)
    assert extended.segments == ((0, 4), (4, 8))
    assert [extended.lr_at(t) for t in range(4)] == pytest.approx([(1 - t / 4) ** 0.9 for t in range(4)])
    assert [extended.lr_at(t) for t in range(4, 8)] == pytest.approx([(1 - t / 8) ** 0.9 for t in range(4, 8)])
    record = extended.to_dict()
    assert record["segments"] == [{"start": 0, "horizon": 4}, {"start": 4, "horizon": 8}] and "note" in record
    assert LRSchedule.from_dict(record) == extended
    # Planned for the final horizon from the start: extending within it changes nothing.
    assert LRSchedule.planned("poly", 1.0, 8).extended(4, 8).segments == ((0, 8),)


def test_config_validation():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="warmup"):
        TrainConfig(iterations=10, warmup=10)
    with pytest.raises(ValueError, match="lr_horizon"):
        TrainConfig(iterations=10, lr_horizon=5)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    assert TrainConfig().lr_schedule == "poly" and TrainConfig().optimizer == "adam"


def test_sgd_is_nesterov_with_nnunet_momentum():
    parameter = torch.nn.Parameter(torch.zeros(3))
    sgd = make_optimizer([parameter], TrainConfig(optimizer="sgd", lr=0.01, weight_decay=3e-5))
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.99 and group["weight_decay"] == 3e-5
    assert isinstance(make_optimizer([parameter], TrainConfig()), torch.optim.Adam)


def _rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_lr_and_loss_curves_at_every_log_row(phantom, tmp_path):
    """metrics.csv has a row (loss and lr) every log interval; the lr is the poly value of the row's last step."""
    run = tmp_path / "run"
    config = tiny_config(iterations=6, val_every=3, freeze="none", optimizer="sgd", lr=0.01, warmup=1)
    train(phantom, parse_task("T1", "CSF"), run, config, UNetConfig(depth=2, width=4), progress=False)
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    schedule = LRSchedule.planned("poly", 0.01, 6, warmup=1)
    assert [float(r["lr"]) for r in rows] == pytest.approx([schedule.lr_at(2), schedule.lr_at(5)], rel=1e-12)
    assert float(rows[0]["lr"]) == pytest.approx(0.01 * (1 - 1 / 5) ** 0.9, rel=1e-12)
    record = json.loads((run / "run.json").read_text())
    assert record["lr_schedule"] == {"kind": "poly", "lr": 0.01, "warmup": 1, "exponent": 0.9,
                                     "segments": [{"start": 0, "horizon": 6}]}
    state = load_train_state(run)  # kept at the end, so the run can be extended
    assert state["iteration"] == 6
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(schedule.lr_at(5), rel=1e-12)


def _assert_same_weights(run_a, run_b):
    a, _ = load_run(run_a)
    b, _ = load_run(run_b)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


@pytest.mark.parametrize("settings", [
    dict(lr_schedule="constant", method="trm", risk_refresh=2, freeze="none"),  # weighting state
    dict(lr_schedule="poly", lr_horizon=6, method="vanilla", optimizer="sgd", lr=0.01),  # horizon planned
])
def test_extended_run_equals_one_trained_at_once(phantom, source_run, tmp_path, settings):
    """N1 = 3 iterations, then --resume --iterations 6, equals 6 at once bit for bit (CPU)."""
    whole = tiny_config(iterations=6, val_every=3, **settings)
    finetune(phantom, TARGET, source_run, tmp_path / "whole", whole, progress=False)
    first = tiny_config(iterations=3, val_every=3, **settings)
    finetune(phantom, TARGET, source_run, tmp_path / "ext", first, progress=False)
    assert json.loads((tmp_path / "ext" / "run.json").read_text())["iterations_done"] == 3
    with pytest.raises(ValueError, match="already finished 3 iterations"):
        finetune(phantom, TARGET, source_run, tmp_path / "ext", first, progress=False, resume=True)
    info = finetune(phantom, TARGET, source_run, tmp_path / "ext", whole, progress=False, resume=True)
    assert info.iterations_done == 6
    _assert_same_weights(tmp_path / "whole", tmp_path / "ext")
    assert json.loads((tmp_path / "ext" / "run.json").read_text())["lr_schedule"]["segments"] == \
        [{"start": 0, "horizon": 6}]
    assert load_train_state(tmp_path / "ext")["iteration"] == 6


def test_extension_beyond_the_planned_horizon_is_recorded(phantom, tmp_path):
    """Planned for 3, extended to 6: the last 3 steps follow the 6-step poly curve, recorded as a segment;
    the weights differ from a 6-step run's, whose first steps had another learning rate."""
    task, model = parse_task("T1", "CSF"), UNetConfig(depth=2, width=4)
    train(phantom, task, tmp_path / "ext", tiny_config(iterations=3, val_every=3, freeze="none"), model,
          progress=False)
    info = train(phantom, task, tmp_path / "ext", tiny_config(iterations=6, val_every=3, freeze="none"), model,
                 progress=False, resume=True)
    assert info.lr_schedule["segments"] == [{"start": 0, "horizon": 3}, {"start": 3, "horizon": 6}]
    rows = _rows(tmp_path / "ext")
    assert [int(r["iteration"]) for r in rows] == [3, 6]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3 * (1 / 3) ** 0.9, rel=1e-12)
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * (1 / 6) ** 0.9, rel=1e-12)
    train(phantom, task, tmp_path / "whole", tiny_config(iterations=6, val_every=3, freeze="none"), model,
          progress=False)
    a, _ = load_run(tmp_path / "whole")
    b, _ = load_run(tmp_path / "ext")
    assert not torch.equal(a.head.weight, b.head.weight)


def test_resume_without_state_says_so(phantom, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(phantom, parse_task("T1", "CSF"), tmp_path / "none", tiny_config(freeze="none"),
              UNetConfig(depth=2, width=4), progress=False, resume=True)
    assert not (tmp_path / "none" / TRAIN_STATE_FILE).exists()


@pytest.mark.parametrize("normalize, min_foreground", [("valid", 1.0), ("batch", 1.0), ("batch", 50.0),
                                                        ("image", 1.0), ("image", 8.0)])
def test_displayed_loss_is_the_weighted_mean_cross_entropy(normalize, min_foreground):
    """sum(w * CE) / sum(w) over valid pixels, whatever the method divides the optimised loss by."""
    from trmcore import ops
    from trmcore.training.loss_display import mean_ce_scale

    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 8, 8, generator=generator) * 3
    labels = torch.randint(0, 4, (3, 8, 8), generator=generator)
    labels[labels == 3] = 0  # a sparse foreground
    labels[0, :2] = -100
    weights = 1 + 9 * torch.rand(3, 8, 8, generator=generator)
    loss = ops.risk_weighted_ce(logits, labels, weights, ignore_index=-100, normalize=normalize,
                                min_foreground=min_foreground)
    ce = torch.nn.functional.cross_entropy(logits.double(), labels.clamp(min=0), reduction="none")
    valid = labels != -100
    expected = float((weights.double() * ce)[valid].sum() / weights.double()[valid].sum())
    shown = mean_ce_scale(loss, labels, weights, normalize, min_foreground, logits)
    assert float(shown) == pytest.approx(expected, rel=1e-5)
    assert float(ce[valid].min()) < float(shown) < float(ce[valid].max())
    ones = torch.ones_like(weights)  # vanilla: the plain mean cross-entropy
    plain = ops.risk_weighted_ce(logits, labels, ones, ignore_index=-100, normalize="valid")
    assert float(mean_ce_scale(plain, labels, ones, "valid", 1.0)) == pytest.approx(float(ce[valid].mean()),
                                                                                    rel=1e-5)


def test_trm_shows_its_loss_on_the_cross_entropy_scale(phantom, source_run, tmp_path):
    finetune(phantom, TARGET, source_run, tmp_path / "trm", tiny_config(method="trm", iterations=2, val_every=2),
             progress=False)
    finetune(phantom, TARGET, source_run, tmp_path / "ce", tiny_config(method="vanilla", iterations=2,
                                                                      val_every=2), progress=False)
    trm, = _rows(tmp_path / "trm")
    vanilla, = _rows(tmp_path / "ce")
    assert float(vanilla["loss"]) == pytest.approx(float(vanilla["objective"]), rel=1e-6)
    # trm's objective divides by the foreground only; the shown loss is a weighted mean CE of 2 classes
    assert float(trm["objective"]) > 3 * float(trm["loss"])
    assert 0.05 < float(trm["loss"]) < 3.0 and 0.05 < float(vanilla["loss"]) < 3.0


def test_fold_trains_on_the_fold_and_prints_the_split(tmp_path, capsys):
    from trmcore.data import make_phantom
    from trmcore.data.splits import SPLITS_FILE

    data = make_phantom(tmp_path / "data", n_cases=5, sites=1, size=(16, 16, 8), seed=1)
    task, model = parse_task("T1", "CSF"), UNetConfig(depth=2, width=4)
    info = train(data, task, tmp_path / "f2", tiny_config(iterations=1, val_every=1, freeze="none", fold=2), model)
    splits = json.loads((data / SPLITS_FILE).read_text())
    assert len(splits) == 5
    assert info.val_cases == splits[2]["val"] and info.train_cases == splits[2]["train"]
    assert info.split["kind"] == "fold" and info.split["fold"] == 2 and info.split["folds"] == 5
    out = capsys.readouterr().out
    assert f"split (fold 2 of 5 in " in out and f"4 training case(s), 1 held out: {splits[2]['val'][0]}" in out
    before = (data / SPLITS_FILE).read_text()
    info = train(data, task, tmp_path / "f0", tiny_config(iterations=1, val_every=1, freeze="none", fold=0), model,
                 progress=False)
    assert (data / SPLITS_FILE).read_text() == before and info.val_cases == splits[0]["val"]
    # cross-validation: each fold's run on its own validation cases, pooled
    from trmcore.cli.main import main

    capsys.readouterr()
    assert main(["evaluate", str(data), "--folds", str(tmp_path / "f2"), str(tmp_path / "f0"), "-q",
                 "-o", str(tmp_path / "cv.json")]) == 0
    scored = json.loads((tmp_path / "cv.json").read_text())
    assert [v["case_id"] for v in scored["volumes"]] == splits[2]["val"] + splits[0]["val"]
    assert "2 fold run(s)" in scored["scope"]
    assert main(["evaluate", str(data), "--folds", str(tmp_path / "f2"), str(tmp_path / "f2"), "-q"]) == 2
    assert "validation case of both" in capsys.readouterr().err


def test_resume_state_from_before_the_recipe_keeps_its_settings(phantom, tmp_path):
    """A state written before issue 22 (no lr_schedule / augment keys) ran constant and unaugmented:
    resuming it under the new defaults is refused naming them, and resumes with them set."""
    from trmcore.training.checkpoint import save_train_state

    from .helpers import Interrupt, stop_at

    task, model, run = parse_task("T1", "CSF"), UNetConfig(depth=2, width=4), tmp_path / "old"
    old = tiny_config(iterations=4, checkpoint_every=1, freeze="none", lr_schedule="constant", augment=False)
    with pytest.raises(Interrupt):
        train(phantom, task, run, old, model, progress=False, on_iteration=stop_at(2))
    state = load_train_state(run)
    for key in ("lr_schedule", "augment", "warmup", "lr_horizon", "optimizer", "momentum", "weight_decay"):
        del state["config"][key]
    del state["lr_schedule"]
    save_train_state(run, state)
    with pytest.raises(ValueError, match=r"lr_schedule 'constant' -> 'poly'.*augment False -> True"):
        train(phantom, task, run, tiny_config(iterations=4, checkpoint_every=1, freeze="none"), model,
              progress=False, resume=True)
    info = train(phantom, task, run, old, model, progress=False, resume=True)
    assert info.iterations_done == 4 and info.lr_schedule["kind"] == "constant"


def test_cli_extends_a_finished_run(phantom, tmp_path, capsys):
    """The issue's symptom: `--resume --iterations N` on a finished run answered "nothing to resume"."""
    from trmcore.cli.main import main

    run = tmp_path / "run"
    base = ["train", str(phantom), "--channel", "T1", "--labels", "CSF", "-o", str(run), "--depth", "2", "--width",
            "4", "--batch-size", "4", "--val-every", "2", "-q"]
    assert main(base + ["--iterations", "2"]) == 0
    assert main(base + ["--iterations", "2", "--resume"]) == 2
    assert "already finished 2 iterations; pass a larger --iterations" in capsys.readouterr().err
    assert main(base + ["--iterations", "4", "--resume"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["iterations_done"] == 4
    assert record["lr_schedule"]["segments"] == [{"start": 0, "horizon": 2}, {"start": 2, "horizon": 4}]
    assert [int(r["iteration"]) for r in _rows(run)] == [2, 4]

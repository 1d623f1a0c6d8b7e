"""trm's class balance and annealing of the risk weights, and the weight-mass / gradient diagnostics (issue 24).

Every weight is checked by value against a NumPy computation of its definition:
"per-class" = R / (mean R of the pixel's class over the training pixels),
"foreground" = the same on foreground and 1 on background, annealing
1 + (w - 1) * (1 - t / T).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.data import parse_task
from trmcore.training.checkpoint import load_run
from trmcore.training.config import TrainConfig
from trmcore.training.distributed import setup_distributed
from trmcore.training.loss_denominator import LossDenominator, loss_denominator
from trmcore.training.risk_diagnostics import (WeightMass, gradient_diagnostics, harm_warnings, mass_diagnostics,
                                               weighting_diagnostics)
from trmcore.training.risk_scaling import anneal_weights, balance_risk, class_means, class_risk_sums
from trmcore.training.trainer import prepare_data
from trmcore.training.weighting import RiskMapWeighting, create_weighting

from .helpers import tiny_config

TARGET = parse_task("T2", "CSF,GM")


def test_balance_by_hand():
    risk = torch.tensor([[[2.0, 4.0, 10.0, 6.0, 3.0, 0.0]]])
    labels = torch.tensor([[[0, 0, 1, 1, 2, -100]]])
    sums = class_risk_sums(risk, labels, 3)
    np.testing.assert_allclose(sums.numpy(), [[6.0, 2.0], [16.0, 2.0], [3.0, 1.0]])
    means = class_means(sums)
    np.testing.assert_allclose(means.numpy(), [3.0, 8.0, 3.0])
    per_class = balance_risk(risk, labels, means, "per-class")
    np.testing.assert_allclose(per_class.numpy(), [[[2 / 3, 4 / 3, 10 / 8, 6 / 8, 1.0, 0.0]]], rtol=1e-6)
    foreground = balance_risk(risk, labels, means, "foreground")
    np.testing.assert_allclose(foreground.numpy(), [[[1.0, 1.0, 10 / 8, 6 / 8, 1.0, 0.0]]], rtol=1e-6)
    assert balance_risk(risk, labels, means, "none") is risk
    with pytest.raises(ValueError, match="risk balance"):
        balance_risk(risk, labels, means, "cap")


def test_class_without_pixels_gets_mean_one():
    sums = class_risk_sums(torch.tensor([[5.0]]), torch.tensor([[0]]), 2)
    np.testing.assert_allclose(class_means(sums).numpy(), [5.0, 1.0])


def test_anneal_by_hand():
    w = torch.tensor([[4.0, 0.5, 0.0]])
    labels = torch.tensor([[1, 0, -100]])
    np.testing.assert_allclose(anneal_weights(w, labels, 0, 10).numpy(), [[4.0, 0.5, 0.0]])
    np.testing.assert_allclose(anneal_weights(w, labels, 5, 10).numpy(), [[2.5, 0.75, 0.0]])
    np.testing.assert_allclose(anneal_weights(w, labels, 10, 10).numpy(), [[1.0, 1.0, 0.0]])


def test_config_checks_the_balance():
    assert TrainConfig().risk_balance in ("none", "per-class", "foreground")
    with pytest.raises(ValueError, match="risk_balance"):
        TrainConfig(risk_balance="cap")


@pytest.fixture(scope="module")
def setting(phantom, source_run):
    ctx = setup_distributed("cpu")
    source, info = load_run(source_run, device=ctx.device)
    config = tiny_config(method="trm")
    data = prepare_data(phantom, TARGET, config, info.divisor, ctx, progress=False)
    return dict(ctx=ctx, source=source, data=data, num_classes=data.task_info.num_classes)


def _all(data):
    index = torch.arange(len(data.slices.labels))
    return index, data.slices.labels


@pytest.mark.parametrize("balance", ["per-class", "foreground"])
def test_weighting_balances_by_the_training_set_class_means(setting, balance):
    data = setting["data"]
    weighting = RiskMapWeighting(setting["source"], data.slices, setting["num_classes"], setting["ctx"], amp=False,
                                 balance=balance)
    index, labels = _all(data)
    risk = ops.risk_map(weighting.maps, labels, base=10.0, scope="image").numpy()  # TRM Eq. 6 by hand
    y = labels.numpy()
    means = np.array([risk[y == c].mean() for c in range(setting["num_classes"])])
    expected = risk / means[np.where(y < 0, 0, y)]
    if balance == "foreground":
        expected = np.where(y == 0, 1.0, expected)
    weights = weighting.weights(index, labels).numpy()
    np.testing.assert_allclose(weights, expected, rtol=1e-4)
    for c in range(1, setting["num_classes"]):  # mean weight 1 in every foreground class, emphasis kept
        assert weights[y == c].mean() == pytest.approx(1.0, rel=1e-4)
    assert not np.allclose(means, 1.0)  # the balance did change something
    assert np.ptp(weights[y >= 0]) > 0.1  # and the weights are not all ones


def test_weighting_anneals_with_the_iteration(setting):
    data = setting["data"]
    weighting = RiskMapWeighting(setting["source"], data.slices, setting["num_classes"], setting["ctx"], amp=False,
                                 anneal_over=10)
    index, labels = _all(data)
    start = weighting.weights(index, labels)
    weighting.maybe_refresh(setting["source"], 4)
    later = weighting.weights(index, labels)
    valid = labels != -100
    torch.testing.assert_close(later[valid], 1 + (start[valid] - 1) * 0.6)
    assert float((start - 1).abs().max()) > 1  # there was something to anneal


def test_create_weighting_forwards_balance_and_anneal(setting):
    config = tiny_config(method="trm", risk_balance="foreground", risk_anneal=True, iterations=7)
    weighting = create_weighting(config, setting["source"].config, setting["data"].slices, setting["num_classes"],
                                 setting["ctx"], setting["source"])
    assert (weighting.balance, weighting.anneal_over) == ("foreground", 7)


def test_weight_mass_by_hand():
    labels = torch.tensor([[[0, 0, 0, 1, 1, -100]]])
    source = torch.tensor([[[0, 1, 1, 1, 0, 1]]])
    risk = torch.tensor([[[1.0, 5.0, 3.0, 2.0, 4.0, 0.0]]])
    weights = risk.clone()
    mass = WeightMass(2, 2)
    mass.update(risk, weights, labels, source)
    summary = mass.summary(["background", "lesion"], ["src bg", "src lesion"])
    bg, lesion = summary["target_classes"]["background"], summary["target_classes"]["lesion"]
    assert (bg["pixels"], lesion["pixels"]) == (3, 2)
    assert bg["pixel_share"] == pytest.approx(0.6) and bg["weight_share"] == pytest.approx(9 / 15)
    assert bg["effective_weight"] == pytest.approx(3.0) and lesion["effective_weight"] == pytest.approx(3.0)
    assert summary["source_classes"]["src lesion"]["weight_share"] == pytest.approx(10 / 15)
    assert summary["cells"]["background / src lesion"]["pixels"] == 2
    assert summary["background_emphasis"] == pytest.approx(1.0)
    assert summary["conflict_share"] == pytest.approx(8 / 15)  # background pixels the source calls lesion


def test_harm_warnings_name_the_remedy():
    mass = {"background_emphasis": 1.8, "conflict_share": 0.4}
    warnings = harm_warnings(mass, "none")
    assert len(warnings) == 2 and "background emphasis: trm gives a background pixel 1.80 times" in warnings[0]
    assert "--trm-class-balance per-class" in warnings[0] and "40%" in warnings[1]
    assert harm_warnings({"background_emphasis": 0.9, "conflict_share": 0.1}, "none") == []
    assert len(harm_warnings(mass, "per-class")) == 1  # the balance answers the emphasis, not the conflict
    strong = harm_warnings({"background_emphasis": 0.12, "conflict_share": 0.0}, "none")
    assert len(strong) == 1 and "foreground pixel 8.3 times" in strong[0] and "per-class" in strong[0]
    assert harm_warnings({"background_emphasis": 0.12, "conflict_share": 0.0}, "per-class") == []
    assert harm_warnings({"background_emphasis": 0.2, "conflict_share": 0.0}, "none") == []


def test_gradient_diagnostics_decompose_the_loss(setting):
    data = setting["data"]
    weighting = RiskMapWeighting(setting["source"], data.slices, setting["num_classes"], setting["ctx"], amp=False)
    config = tiny_config(method="trm")
    normalization = loss_denominator("batch", config, data.slices.labels)
    model = setting["source"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = gradient_diagnostics(model, weighting, data.slices, normalization, setting["ctx"], batch_size=4)
    assert grads["batches"] >= 1
    assert grads["grad_fg"] > 0 and grads["grad_bg"] > 0 and grads["vanilla_grad_fg"] > 0
    one_batch = gradient_diagnostics(model, weighting, data.slices, normalization, setting["ctx"], batch_size=4,
                                     max_batches=1)
    assert one_batch["loss"] == pytest.approx(one_batch["vanilla_loss"] * one_batch["denominator_factor"]
                                              * one_batch["weight_factor"], rel=1e-5)
    for k, v in model.state_dict().items():  # eval mode: no BatchNorm statistic moved
        torch.testing.assert_close(v, before[k])
    # With vanilla's weights and normalisation the run's gradients are vanilla's.
    plain = type("Plain", (), {"weights": staticmethod(lambda index, labels: torch.ones(labels.shape))})()
    same = gradient_diagnostics(model, plain, data.slices, LossDenominator("valid"), setting["ctx"], batch_size=4,
                                max_batches=1)
    assert same["grad_fg"] == pytest.approx(same["vanilla_grad_fg"], rel=1e-5)
    assert same["denominator_factor"] == 1.0 and same["weight_factor"] == pytest.approx(1.0)


def test_weighting_diagnostics_report_mass_and_gradients(setting):
    data = setting["data"]
    weighting = RiskMapWeighting(setting["source"], data.slices, setting["num_classes"], setting["ctx"], amp=False,
                                 balance="per-class")
    denominator = loss_denominator("batch", tiny_config(method="trm"), data.slices.labels)
    summary = weighting_diagnostics(weighting, data.slices, ["background", "CSF", "GM"], setting["ctx"], 10.0,
                                    model=setting["source"], denominator=denominator)
    for name in ("CSF", "GM"):
        assert summary["mass"]["target_classes"][name]["effective_weight"] == pytest.approx(1.0, rel=1e-4)
    # The R statistics stay those of R (in [1, 10]), not of the balanced weights.
    assert summary["classes"]["CSF"]["mean_risk"] > 1.5
    assert summary["gradients"]["batches"] >= 1
    direct = mass_diagnostics(weighting, data.slices, ["background", "CSF", "GM"], setting["ctx"])
    assert direct["background_emphasis"] == pytest.approx(summary["mass"]["background_emphasis"])
    # Background of the slices without foreground, by hand.
    index, labels = _all(data)
    empty = (labels == 0) & ~(labels > 0).flatten(1).any(dim=1)[:, None, None]
    risk = weighting.risk(index, labels)
    assert direct["background_of_empty_slices"]["pixels"] == int(empty.sum())
    if int(empty.sum()):
        assert direct["background_of_empty_slices"]["mean_risk"] == pytest.approx(float(risk[empty].mean()), rel=1e-5)


def test_mean_normalization_is_vanillas_denominator():
    labels = torch.zeros(4, 8, 8, dtype=torch.int64)
    labels[0, :2, :2] = 1
    assert loss_denominator("batch", TrainConfig(trm_normalize="mean"), labels) == LossDenominator("valid")
    assert loss_denominator("batch", TrainConfig(trm_normalize="batch"), labels) == LossDenominator("batch")
    logits = torch.randn(4, 2, 8, 8)
    weights = torch.ones(4, 8, 8)
    mean_ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(ops.risk_weighted_ce(logits, labels, weights, normalize="valid"), mean_ce)


def test_cli_passes_balance_and_anneal():
    from trmcore.cli.main import build_parser
    from trmcore.cli.train import _config

    args = build_parser().parse_args(["finetune", "data", "--channel", "T2", "--labels", "CSF", "--source", "src",
                                      "-o", "out", "--trm-class-balance", "foreground", "--risk-anneal",
                                      "--trm-normalize", "mean"])
    config = _config(args, method="trm")
    assert (config.risk_balance, config.risk_anneal, config.trm_normalize) == ("foreground", True, "mean")

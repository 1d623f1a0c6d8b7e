"""Value-level checks of the four methods' loss weights (SPEC 5), computed here by hand in NumPy.

Each test would fail if a method silently trained with all-ones weights: the
expected values are checked to differ from 1, and the last test records the
weights the training loop actually passes to the loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trmcore import ops
from trmcore.data import parse_task
from trmcore.training import trainer as trainer_module
from trmcore.training.checkpoint import load_run
from trmcore.training.distributed import setup_distributed
from trmcore.training.loss_denominator import foreground_per_slice, loss_denominator
from trmcore.training.sampling import SliceSampler
from trmcore.training.trainer import finetune, prepare_data
from trmcore.training.weighting import ClassWeighting, RiskMapWeighting, TrsMapWeighting, create_weighting

from .helpers import tiny_config

TARGET = parse_task("T2", "CSF,GM")  # 3 classes; the source has 4 (T1 CSF, GM, WM)
STRIDE = 4


@pytest.fixture(scope="module")
def setting(phantom, source_run):
    """The target training slices, the source model's logits on them and the hand-computed expectations."""
    ctx = setup_distributed("cpu")
    source, info = load_run(source_run, device=ctx.device)
    config = tiny_config(method="trm")
    data = prepare_data(phantom, TARGET, config, info.divisor, ctx, progress=False)
    images, labels = data.slices.images, data.slices.labels
    with torch.no_grad():
        logits = source.eval()(images).double().numpy()
    y = labels.numpy()
    num_classes = data.task_info.num_classes
    expected = {"class-weight": _class_weights_by_hand(y, num_classes),
                "trs-map": _trs_map_by_hand(logits, y, num_classes),
                "trm-leep": _pixel_leep_by_hand(logits, y, num_classes)}
    return dict(ctx=ctx, source=source, data=data, num_classes=num_classes, expected=expected, config=config)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _conditional(theta_pixels, y_pixels, num_classes):
    """P(y | z) from the pixels' dummy-label distributions [P, Z] and target labels [P] (SPEC 2)."""
    joint = np.stack([theta_pixels[y_pixels == c].sum(axis=0) for c in range(num_classes)]) / len(y_pixels)
    column = joint.sum(axis=0, keepdims=True)
    return np.where(column > 0, joint / np.where(column > 0, column, 1), 0.0)


def _pixel_leep_by_hand(logits, y, num_classes):
    theta = _softmax(logits).transpose(0, 2, 3, 1)  # [S, H, W, Z]
    conditional = _conditional(theta.reshape(-1, theta.shape[-1]), y.ravel(), num_classes)
    eep = np.einsum("shwz,shwz->shw", conditional[y], theta)
    return np.log(np.maximum(eep, np.finfo(np.float32).tiny))


def _class_weights_by_hand(y, num_classes):
    counts = np.array([(y == c).sum() for c in range(num_classes)], dtype=np.float64)
    return y.size / (num_classes * counts)  # w_c = M / (C * M_c)


def _trs_map_by_hand(logits, y, num_classes):
    theta = _softmax(logits).transpose(0, 2, 3, 1)
    height, width = y.shape[1:]
    weight = np.ones((height, width))
    for r in range(0, height, STRIDE):
        for c in range(0, width, STRIDE):
            t = theta[:, r:r + STRIDE, c:c + STRIDE].reshape(-1, theta.shape[-1])
            labels = y[:, r:r + STRIDE, c:c + STRIDE].ravel()
            if len(labels) < 5:
                continue
            conditional = _conditional(t, labels, num_classes)
            eep = (conditional[labels] * t).sum(axis=1)
            weight[r:r + STRIDE, c:c + STRIDE] = np.exp(-np.log(np.maximum(eep, np.finfo(np.float32).tiny)).mean())
    return weight


def _all_slices(data):
    index = torch.arange(len(data.slices.labels))
    return index, data.slices.labels[index]


def test_class_weight_values(setting):
    data, ctx = setting["data"], setting["ctx"]
    table = setting["expected"]["class-weight"]
    assert np.ptp(table) > 1.0  # far from all-ones: the phantom's classes are unbalanced
    weighting = ClassWeighting(data.slices, setting["num_classes"], ctx)
    np.testing.assert_allclose(weighting.class_weights.numpy(), table, rtol=1e-6)
    index, labels = _all_slices(data)
    np.testing.assert_allclose(weighting.weights(index, labels).numpy(), table[labels.numpy()], rtol=1e-6)


def test_trs_map_block_values(setting):
    weighting = TrsMapWeighting(setting["source"], setting["data"].slices, setting["num_classes"], setting["ctx"],
                                stride=STRIDE, amp=False)
    expected = setting["expected"]["trs-map"]
    assert expected.min() >= 1.0 and np.ptp(expected) > 0.05  # exp(-LEEP) >= 1, and not constant
    np.testing.assert_allclose(weighting.weight_map.numpy(), expected, rtol=1e-4)
    # Constant within each 4 x 4 block, as SPEC 5 expands it.
    blocks = weighting.weight_map.numpy().reshape(8, 4, 8, 4)
    assert np.ptp(blocks, axis=(1, 3)).max() == 0
    index, labels = _all_slices(setting["data"])
    np.testing.assert_allclose(weighting.weights(index, labels).numpy(), np.broadcast_to(expected, labels.shape),
                               rtol=1e-4)


@pytest.mark.parametrize("scaling", ["minmax", "robust"])
def test_trm_weights_are_risk_maps_of_the_stored_maps(setting, scaling):
    weighting = RiskMapWeighting(setting["source"], setting["data"].slices, setting["num_classes"], setting["ctx"],
                                 amp=False, scaling=scaling, quantile=0.05)
    leep = setting["expected"]["trm-leep"]
    np.testing.assert_allclose(weighting.maps.numpy(), leep, rtol=1e-4, atol=1e-5)  # the maps are pixel LEEP
    index, labels = _all_slices(setting["data"])
    weights = weighting.weights(index, labels)
    stored = weighting.maps
    if scaling == "robust":
        from trmcore.training.risk_scaling import clip_to_class_quantiles

        stored = clip_to_class_quantiles(stored, labels, 0.05)
    torch.testing.assert_close(weights, ops.risk_map(stored, labels, base=10.0, scope="image"))
    assert float(weights.std()) > 0.5 and float(weights.max()) > 5  # not all ones


@pytest.mark.parametrize("method", ["vanilla", "class-weight", "trs-map", "trm"])
def test_training_loop_passes_each_methods_weights(setting, phantom, source_run, tmp_path, monkeypatch, method):
    """Record what fit() gives the loss and compare with the hand-computed weights of the sampled batch."""
    calls = []
    original = ops.risk_weighted_ce

    def recording(logits, labels, weights, **kwargs):
        calls.append((labels.clone(), weights.detach().clone(), kwargs))
        return original(logits, labels, weights, **kwargs)

    monkeypatch.setattr(trainer_module.ops, "risk_weighted_ce", recording)
    # The weights of the sampled batch as they are: augmentation (on by default since issue 22) off.
    config = tiny_config(method=method, iterations=2, val_every=0, augment=False)
    finetune(phantom, TARGET, source_run, tmp_path / method, config, device="cpu", progress=False)
    assert len(calls) == 2
    data = setting["data"]
    foreground = foreground_per_slice(data.slices.labels) > 0
    sampler = SliceSampler(len(foreground), config.batch_size, config.seed, foreground=foreground,
                           foreground_share=config.foreground_share)
    expected_norm = loss_denominator("batch" if method == "trm" else "valid", config, data.slices.labels)
    for t, (labels, weights, kwargs) in enumerate(calls):
        index = sampler.batch(t)
        torch.testing.assert_close(labels, data.slices.labels[index])
        y = labels.numpy()
        if method == "vanilla":
            expected = np.ones(y.shape)
        elif method == "class-weight":
            expected = setting["expected"]["class-weight"][y]
        elif method == "trs-map":
            expected = np.broadcast_to(setting["expected"]["trs-map"], y.shape)
        else:
            leep = torch.from_numpy(setting["expected"]["trm-leep"][index.numpy()]).float()
            expected = ops.risk_map(leep, labels).numpy()
        if method != "vanilla":
            assert np.ptp(expected) > 0.05
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-4, atol=1e-4)
        assert kwargs["normalize"] == expected_norm.normalize
        assert kwargs["min_foreground"] == pytest.approx(expected_norm.min_foreground)
    if method == "trm":
        assert expected_norm.min_foreground > 1  # bounded Eq. 7 by default


def test_create_weighting_forwards_the_risk_settings(setting):
    config = tiny_config(method="trm", risk_base=5.0, risk_scaling="robust", risk_quantile=0.1)
    weighting = create_weighting(config, setting["source"].config, setting["data"].slices, setting["num_classes"],
                                 setting["ctx"], setting["source"])
    assert (weighting.base, weighting.scaling, weighting.quantile) == (5.0, "robust", 0.1)

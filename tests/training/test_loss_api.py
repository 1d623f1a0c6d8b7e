"""The public loss API (trmcore.training.loss): the nn.Module loss and the streaming source risk maps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trmcore import ops
from trmcore.training import TrainConfig
from trmcore.training.loss import RiskWeightedCE, SourceRiskMaps, source_risk_maps
from trmcore.training.risk_scaling import scaled_risk_map

IGNORE = -100


def batch(seed: int, n: int = 2, classes: int = 3, shape=(5, 6, 7)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, *shape, generator=gen) * 2
    labels = torch.randint(0, classes, (n, *shape), generator=gen)
    labels[0, 0] = IGNORE
    labels[-1] = torch.where(labels[-1] == IGNORE, labels[-1], labels[-1] * 0)  # an image without foreground
    risk = torch.rand(n, *shape, generator=gen) * 9 + 1
    return logits, labels, risk


@pytest.mark.parametrize("shape", [(9, 8), (5, 6, 7)])
@pytest.mark.parametrize("normalize,ops_normalize", [("bounded", "batch"), ("batch", "batch"), ("image", "image")])
def test_module_matches_the_functional_op(shape, normalize, ops_normalize):
    logits, labels, risk = batch(1, shape=shape)
    expected_foreground = 500.0
    criterion = RiskWeightedCE(normalize=normalize, expected_foreground=expected_foreground)
    floor = max(1.0, expected_foreground / TrainConfig().trm_bound) if normalize == "bounded" else 1.0
    assert criterion.min_foreground == floor
    x = logits.clone().requires_grad_(True)
    loss = criterion(x, labels, risk)
    loss.backward()
    y = logits.clone().requires_grad_(True)
    expected = ops.risk_weighted_ce(y, labels, risk, ignore_index=IGNORE, normalize=ops_normalize,
                                    min_foreground=floor)
    expected.backward()
    assert torch.equal(loss.detach(), expected.detach())
    assert torch.equal(x.grad, y.grad)
    assert float(x.grad.abs().sum()) > 0


def test_bounded_floor_by_hand():
    """3 foreground pixels, E = 40, bound 4: Eq. 7 divides by 3, bounded by 10."""
    logits = torch.zeros(1, 2, 2, 3)
    labels = torch.tensor([[[0, 1, 1], [1, 0, 0]]])
    risk = torch.full((1, 2, 3), 2.0)
    total = 6 * 2.0 * math.log(2.0)
    assert float(RiskWeightedCE("batch")(logits, labels, risk)) == pytest.approx(total / 3, rel=1e-6)
    assert float(RiskWeightedCE("bounded", bound=4.0, expected_foreground=40.0)(logits, labels, risk)) == \
        pytest.approx(total / 10, rel=1e-6)


def test_defaults_are_the_trainers():
    criterion = RiskWeightedCE(expected_foreground=12.0)
    config = TrainConfig()
    assert (criterion.normalize, criterion.bound) == (config.trm_normalize, config.trm_bound)


def test_monai_style_labels_and_bad_settings():
    logits, labels, risk = batch(2)
    criterion = RiskWeightedCE("batch")
    expected = criterion(logits, labels, risk)
    assert torch.equal(criterion(logits, labels[:, None].float(), risk), expected)
    with pytest.raises(ValueError, match="non-integer"):
        criterion(logits, labels.float() + 0.5, risk)
    with pytest.raises(ValueError, match="needs expected_foreground"):
        RiskWeightedCE()
    with pytest.raises(ValueError, match="normalize must be one of"):
        RiskWeightedCE("valid")
    with pytest.raises(ValueError, match="bound"):
        RiskWeightedCE("batch", bound=0.5)


class CountingSource(nn.Module):
    """A small 3-D source segmenter (Z = 4) that counts its forward passes."""

    def __init__(self, deep_supervision: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 4, 1))
        self.calls = 0
        self.deep_supervision = deep_supervision

    def forward(self, x):
        self.calls += 1
        out = self.conv(x) * 3
        return [out, out[..., ::2, ::2, ::2]] if self.deep_supervision else out


def dataset(batches: int = 3, n: int = 2, shape=(6, 5, 7)):
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(batches):
        images = torch.randn(n, 1, *shape, generator=gen)
        labels = (images[:, 0] > 0.3).long() + (images[:, 0] > 1.2).long()
        labels[0, 0, 0] = IGNORE
        out.append((images, labels))
    return out


@pytest.mark.parametrize("scaling", ["minmax", "robust"])
def test_streaming_maps_equal_the_all_at_once_computation(scaling):
    source, data = CountingSource(), dataset()
    risk = source_risk_maps(source, data, num_classes=3, scaling=scaling)
    assert source.calls == len(data)  # pass 1: one forward per batch
    streamed = list(risk)
    assert source.calls == 2 * len(data) - 1  # pass 2 reuses the first batch's logits
    images = torch.cat([d[0] for d in data])
    labels = torch.cat([d[1] for d in data])
    with torch.no_grad():
        logits = source(images)
    joint = ops.leep_joint(logits, labels, 3, ignore_index=IGNORE)
    assert risk.joint.count == joint.count
    torch.testing.assert_close(risk.joint.sums, joint.sums, rtol=1e-12, atol=1e-12)
    leep_map = ops.pixel_leep(logits, labels, joint)
    expected_risk = scaled_risk_map(leep_map, labels, scaling=scaling)  # scope "image": per volume
    torch.testing.assert_close(torch.cat([b.transferability for b in streamed]), leep_map, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.cat([b.risk for b in streamed]), expected_risk, rtol=1e-5, atol=1e-5)
    assert [b.index for b in streamed] == [0, 1, 2]
    assert risk.leep() == pytest.approx(ops.leep(logits, labels, 3, ignore_index=IGNORE), rel=1e-6)


def test_expected_foreground_is_the_mean_per_batch_and_maps_of_any_batch():
    source, data = CountingSource(deep_supervision=True), dataset()
    risk = source_risk_maps(source, [{"image": i, "label": l[:, None].float()} for i, l in data], num_classes=3,
                            scope="batch")
    foreground = [int(((l != 0) & (l != IGNORE)).sum()) for _, l in data]
    assert risk.expected_foreground == pytest.approx(sum(foreground) / len(foreground))
    assert risk.batches == 3
    images, labels = data[1]
    leep_map, r = risk.maps(images, labels)
    with torch.no_grad():
        logits = source(images)[0]
    expected = ops.pixel_leep(logits, labels, risk.joint)
    torch.testing.assert_close(leep_map, expected)
    torch.testing.assert_close(r, ops.risk_map(expected, labels, scope="batch"))
    assert source.training  # the source's mode is restored


def test_bad_batches():
    source = CountingSource()
    with pytest.raises(ValueError, match="re-iterable"):
        SourceRiskMaps(source, iter(dataset()), 3)
    with pytest.raises(ValueError, match="empty"):
        SourceRiskMaps(source, [], 3)
    with pytest.raises(ValueError, match="lacks"):
        SourceRiskMaps(source, [{"img": 1}], 3)
    with pytest.raises(ValueError, match="scope"):
        SourceRiskMaps(source, dataset(), 3, scope="volume")


class Reordered:
    """A re-iterable whose second pass yields the batches in another order (a shuffling loader)."""

    def __init__(self, data):
        self.data, self.passes = data, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.data if self.passes == 1 else self.data[::-1])


def test_first_batch_logits_are_reused_only_for_the_same_batch():
    data = dataset()
    source = CountingSource()
    risk = source_risk_maps(source, Reordered(data), num_classes=3)
    streamed = list(risk)
    assert source.calls == 2 * len(data)  # pass 2 starts with another batch: nothing reused
    for item, (images, labels) in zip(streamed, data[::-1]):
        torch.testing.assert_close(item.transferability, risk.maps(images, labels)[0], rtol=0, atol=0)
    single = CountingSource()
    one = source_risk_maps(single, data[:1], num_classes=3)
    (item,) = list(one)
    assert single.calls == 1  # one volume: one forward pass
    with torch.no_grad():
        expected = ops.pixel_leep(single(data[0][0]), data[0][1], ops.leep_joint(single(data[0][0]), data[0][1], 3))
    torch.testing.assert_close(item.transferability, expected)

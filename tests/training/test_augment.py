"""Issue 22: on-the-fly augmentation: labels and weights move with the image, seeded per (seed, rank, step)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from trmcore.training.augment import TRANSFORMS, AugmentConfig, Batch, augment_batch

IGNORE = -100
SPATIAL_ALWAYS = AugmentConfig(p_rotation=1.0, p_scale=1.0, p_elastic=1.0, p_mirror=0.5).without_intensity()


def _batch(n=6, size=(40, 48), seed=0):
    """Blocky label maps (so nearest sampling is well defined), an image equal to them, weights 2 * label + 1."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 4, (n, size[0] // 8, size[1] // 8), generator=generator)
    labels = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)
    labels[0, :3, :5] = IGNORE
    return Batch(labels.float()[:, None].clone(), labels, (2 * labels + 1).float().clamp(min=0))


def test_transform_table_order():
    assert list(TRANSFORMS) == ["spatial", "noise", "blur", "brightness", "contrast", "lowres", "gamma", "mirror"]


@pytest.mark.parametrize("step", range(4))
def test_labels_and_weights_move_with_the_image(step):
    """Image == its label map before; with nearest image sampling and no intensity transform, still == after."""
    config = replace(SPATIAL_ALWAYS, image_interpolation="nearest", weight_interpolation="nearest")
    batch = _batch()
    out = augment_batch(batch, config, seed=0, rank=0, step=step)
    inside = out.labels != IGNORE
    assert not torch.equal(out.labels, batch.labels)  # it did move
    assert torch.equal(out.images[:, 0][inside], out.labels[inside].float())
    assert torch.equal(out.weights[inside], (2 * out.labels[inside] + 1).float())
    assert torch.all(out.weights[~inside] == 0)
    # pixels from outside the slice are ignored, and only they (plus the moved ignore pixels)
    assert 0 < float((~inside).float().mean()) < 0.6


def test_linear_image_sampling_agrees_with_nearest_labels_away_from_edges():
    batch = _batch()
    out = augment_batch(batch, SPATIAL_ALWAYS, seed=3, rank=0, step=1)
    inside = out.labels != IGNORE
    agree = (out.images[:, 0].round() == out.labels.float()) & inside
    assert float(agree.sum()) / float(inside.sum()) > 0.9


def test_seeded_per_seed_rank_and_step():
    batch = _batch()
    config = replace(AugmentConfig(), p_noise=1.0, p_rotation=1.0)
    first = augment_batch(batch, config, seed=1, rank=0, step=7)
    again = augment_batch(batch, config, seed=1, rank=0, step=7)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    for other in (dict(seed=2, rank=0, step=7), dict(seed=1, rank=1, step=7), dict(seed=1, rank=0, step=8)):
        assert not torch.equal(augment_batch(batch, config, **other).images, first.images), other


def test_intensity_transforms_touch_only_the_image():
    batch = _batch()
    config = AugmentConfig(p_rotation=0, p_scale=0, p_elastic=0, p_mirror=0, p_noise=1, p_blur=1, p_brightness=1,
                           p_contrast=1, p_lowres=1, p_gamma=1, p_gamma_inverted=1)
    out = augment_batch(batch, config, seed=0, rank=0, step=0)
    assert torch.equal(out.labels, batch.labels) and torch.equal(out.weights, batch.weights)
    assert not torch.equal(out.images, batch.images) and torch.isfinite(out.images).all()
    assert out.images.dtype == torch.float32 and out.images.shape == batch.images.shape


def test_uniform_weights_stay_uniform_inside():
    """Linear sampling of weights never blends an inside pixel with the padding outside the slice."""
    batch = _batch()
    batch = batch._replace(weights=torch.ones_like(batch.weights))
    out = augment_batch(batch, SPATIAL_ALWAYS, seed=0, rank=0, step=2)
    inside = out.labels != IGNORE
    torch.testing.assert_close(out.weights[inside], torch.ones_like(out.weights[inside]), atol=1e-6, rtol=0)  # rounding only


def test_nothing_chosen_is_the_identity():
    batch = _batch()
    config = AugmentConfig(**{name: 0.0 for name in AugmentConfig.__dataclass_fields__ if name.startswith("p_")})
    out = augment_batch(batch, config, seed=0, rank=0, step=0)
    assert all(torch.equal(a, b) for a, b in zip(out, batch))


def test_mirroring_only_on_the_chosen_axis():
    batch = _batch()
    config = replace(AugmentConfig(), p_mirror=1.0, mirror_axes=(1,)).without_intensity()
    config = replace(config, p_rotation=0.0, p_scale=0.0)
    out = augment_batch(batch, config, seed=0, rank=0, step=0)
    assert torch.equal(out.images, batch.images.flip(3))
    assert torch.equal(out.labels, batch.labels.flip(2)) and torch.equal(out.weights, batch.weights.flip(2))
    assert config.trained_mirror_axes == (1,) and replace(config, p_mirror=0.0).trained_mirror_axes == ()


def test_blur_and_gamma_values():
    """Blur keeps a constant image and the mean; gamma keeps each slice's mean and standard deviation."""
    constant = Batch(torch.full((2, 1, 16, 16), 3.0), torch.zeros(2, 16, 16, dtype=torch.int64), torch.ones(2, 16, 16))
    blurred = augment_batch(constant, AugmentConfig(p_rotation=0, p_scale=0, p_mirror=0, p_noise=0, p_brightness=0,
                                                    p_contrast=0, p_lowres=0, p_gamma=0, p_gamma_inverted=0,
                                                    p_blur=1.0), 0, 0, 0)
    assert torch.allclose(blurred.images, constant.images, atol=1e-5)
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 4 - 1
    batch = Batch(image, torch.zeros(2, 16, 16, dtype=torch.int64), torch.ones(2, 16, 16))
    config = AugmentConfig(p_rotation=0, p_scale=0, p_mirror=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                           p_lowres=0, p_gamma=1.0, p_gamma_inverted=0.0)
    out = augment_batch(batch, config, 0, 0, 0).images
    assert not torch.allclose(out, image)
    assert torch.allclose(out.mean(dim=(2, 3)), image.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3)), image.std(dim=(2, 3)), atol=1e-5)


def test_config_validation_and_record():
    with pytest.raises(ValueError, match="p_noise"):
        AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError, match="mirror_axes"):
        AugmentConfig(mirror_axes=(2,))
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.4, 0.7))
    config = AugmentConfig(mirror_axes=(0,))
    assert AugmentConfig.from_dict(config.to_dict()) == config


def test_runs_record_augmentation_and_mirror_axes(phantom, tmp_path):
    from trmcore.data import parse_task
    from trmcore.models import UNetConfig
    from trmcore.training.trainer import train

    from .helpers import tiny_config

    task, model = parse_task("T1", "CSF"), UNetConfig(depth=2, width=4)
    info = train(phantom, task, tmp_path / "aug", tiny_config(iterations=1, val_every=1, freeze="none"), model,
                 progress=False, augmentation=AugmentConfig(mirror_axes=(1,)))
    assert info.mirror_axes == [1] and info.augmentation["mirror_axes"] == [1]
    assert info.augmentation["p_rotation"] == 0.2
    plain = train(phantom, task, tmp_path / "plain", tiny_config(iterations=1, val_every=1, freeze="none",
                                                                 augment=False), model, progress=False)
    assert plain.mirror_axes == [] and plain.augmentation is None

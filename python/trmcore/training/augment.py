"""Data augmentation on the fly, on the batch, on the training device (nnU-Net-like defaults).

The trainer augments each batch after sampling it and computing its loss
weights, before the forward pass: ``augment_batch(batch, config, seed, rank,
step)``. Everything is torch ops on the batch's device (CPU or GPU; spatial
transforms through ``affine_grid`` / ``grid_sample``), and every random draw
comes from generators seeded by ``(seed, rank, step)``, so the augmented batch
of a step is a pure function of those three, as the sampled slices are
(``--resume`` stays exact). CPU and CUDA draw different noise fields.

The transforms, in the order they run (:data:`TRANSFORMS`, name -> function):

============  =====================================================  ==========================
name          what                                                    nnU-Net default (2D)
============  =====================================================  ==========================
spatial       rotation, scaling and a smooth (elastic) deformation    rot p 0.2 +-180 deg, scale p 0.2
              in one resampling; labels nearest, weights linear        0.7-1.4, elastic off (v2)
noise         additive Gaussian noise                                 p 0.1, variance 0-0.1
blur          Gaussian blur                                           p 0.2, sigma 0.5-1
brightness    multiplicative brightness                               p 0.15, 0.75-1.25
contrast      contrast around the mean, clipped to the old range      p 0.15, 0.75-1.25
lowres        low-resolution simulation (down nearest, up linear)     p 0.25, zoom 0.5-1
gamma         gamma (p 0.3) and inverted gamma (p 0.1), mean/std kept  gamma 0.7-1.5
mirror        flips along the chosen in-plane axes                    p 0.5 per axis, axes 0 and 1
============  =====================================================  ==========================

Label maps move with the image by nearest-neighbour sampling on the same
grid; pixels that come from outside the slice get the ignore label (they are
not trained on) and weight 0. Weight maps (trm risk maps, class weights)
move by linear interpolation (``weight_interpolation``). Intensity transforms
touch the image only. The in-plane axes are those of the slice: 0 = its first
(height) axis, 1 = its second (width) axis; run.json records the mirror axes
a model was trained with and ``trm predict --mirror`` mirrors only along those.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable, Dict, Mapping, NamedTuple, Tuple

import torch
import torch.nn.functional as F

from trmcore.training.weighting import IGNORE_INDEX

Range = Tuple[float, float]
INTERPOLATIONS = ("bilinear", "nearest")
# Seed offset of the augmentation stream (the sampler uses 0 and 104_729).
_AUGMENT_STREAM = 7_368_787


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (per slice) and ranges of the transforms; defaults after nnU-Net v2's 2D recipe.

    ``rotation`` in degrees; ``elastic_magnitude`` as a fraction of the slice size (the displacement's
    standard deviation at the ``elastic_points`` x ``elastic_points`` control points, smoothly
    interpolated); ``noise_variance`` of the z-scored intensities; ``lowres_zoom`` the
    down-sampling factor; ``mirror_axes`` the in-plane axes (0, 1) flipped each with ``p_mirror``.
    """

    p_rotation: float = 0.2
    rotation: Range = (-180.0, 180.0)
    p_scale: float = 0.2
    scale: Range = (0.7, 1.4)
    p_elastic: float = 0.0
    elastic_magnitude: Range = (0.01, 0.04)
    elastic_points: int = 6
    p_noise: float = 0.1
    noise_variance: Range = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: Range = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: Range = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    gamma: Range = (0.7, 1.5)
    p_mirror: float = 0.5
    mirror_axes: Tuple[int, ...] = (0, 1)
    image_interpolation: str = "bilinear"
    weight_interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"augmentation {f.name} must be in [0, 1], got {value!r}")
            if isinstance(value, (tuple, list)) and f.name != "mirror_axes":
                if len(value) != 2 or not value[0] <= value[1]:
                    raise ValueError(f"augmentation {f.name} must be a range (low, high), got {value!r}")
                object.__setattr__(self, f.name, (float(value[0]), float(value[1])))
        axes = tuple(int(a) for a in self.mirror_axes)
        if len(set(axes)) != len(axes) or not set(axes) <= {0, 1}:
            raise ValueError(f"augmentation mirror_axes must be distinct in-plane axes 0 and/or 1, got {axes!r}")
        object.__setattr__(self, "mirror_axes", axes)
        if self.scale[0] <= 0 or self.lowres_zoom[0] <= 0 or self.lowres_zoom[1] > 1 or self.gamma[0] <= 0:
            raise ValueError("augmentation scale, lowres_zoom (in (0, 1]) and gamma must be positive")
        if self.elastic_points < 2:
            raise ValueError(f"augmentation elastic_points must be >= 2, got {self.elastic_points!r}")
        for name in ("image_interpolation", "weight_interpolation"):
            if getattr(self, name) not in INTERPOLATIONS:
                raise ValueError(f"augmentation {name} must be one of {INTERPOLATIONS}, got {getattr(self, name)!r}")

    @property
    def trained_mirror_axes(self) -> Tuple[int, ...]:
        """The in-plane axes a model trained with this configuration has seen flipped."""
        return self.mirror_axes if self.p_mirror > 0 else ()

    def without_intensity(self) -> "AugmentConfig":
        """The same spatial transforms and mirroring, no intensity transform."""
        return replace(self, p_noise=0.0, p_blur=0.0, p_brightness=0.0, p_contrast=0.0, p_lowres=0.0,
                       p_gamma=0.0, p_gamma_inverted=0.0)

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AugmentConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


class Batch(NamedTuple):
    """images float ``[B, C, H, W]``, labels int64 ``[B, H, W]`` (IGNORE_INDEX allowed), weights float ``[B, H, W]``."""

    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor


class Draws:
    """The random sources of one step: small parameters from a CPU generator, fields on the device."""

    def __init__(self, seed: int, rank: int, step: int, device: torch.device) -> None:
        key = seed * 1_000_003 + rank * 7919 + step + _AUGMENT_STREAM
        self.cpu = torch.Generator().manual_seed(key)
        self.device = device
        self.field = torch.Generator(device=device).manual_seed(key)

    def chosen(self, n: int, p: float) -> torch.Tensor:
        """bool ``[n]`` (CPU): which slices a transform of probability ``p`` applies to (always drawn)."""
        return torch.rand(n, generator=self.cpu) < p

    def uniform(self, n: int, bounds: Range) -> torch.Tensor:
        """float64 ``[n]`` (CPU), uniform in ``bounds`` (always drawn, so the stream never depends on p)."""
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(n, generator=self.cpu, dtype=torch.float64)

    def normal(self, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=self.field, device=self.device, dtype=dtype)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[n]`` CPU values as ``[n, 1, 1, 1]`` on ``like``'s device and dtype."""
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def spatial(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Rotation, scaling and a smooth deformation in one ``grid_sample`` of the chosen slices."""
    images, labels, weights = batch
    n, _, height, width = images.shape
    rotate, scale, elastic = (draws.chosen(n, config.p_rotation), draws.chosen(n, config.p_scale),
                              draws.chosen(n, config.p_elastic))
    angles = torch.deg2rad(draws.uniform(n, config.rotation)) * rotate
    factors = torch.where(scale, draws.uniform(n, config.scale), torch.ones(n, dtype=torch.float64))
    magnitudes = draws.uniform(n, config.elastic_magnitude) * elastic
    points = config.elastic_points
    coarse = torch.randn((n, 2, points, points), generator=draws.cpu, dtype=torch.float64)
    chosen = torch.nonzero(rotate | scale | elastic).flatten()
    if len(chosen) == 0:
        return batch
    # Output pixel -> input pixel in pixel units (x along W, y along H), then in affine_grid's [-1, 1].
    cos, sin = torch.cos(angles[chosen]), torch.sin(angles[chosen])
    inverse_scale = 1.0 / factors[chosen]
    theta = torch.zeros((len(chosen), 2, 3), dtype=torch.float64)
    theta[:, 0, 0] = cos * inverse_scale
    theta[:, 0, 1] = -sin * inverse_scale * height / width
    theta[:, 1, 0] = sin * inverse_scale * width / height
    theta[:, 1, 1] = cos * inverse_scale
    device = images.device
    grid = F.affine_grid(theta.to(device=device, dtype=torch.float32), [len(chosen), 1, height, width],
                         align_corners=False)
    if bool(elastic[chosen].any()):
        # A smooth displacement: Gaussian control points, bicubically interpolated, in units of the size.
        shift = coarse[chosen] * magnitudes[chosen].view(-1, 1, 1, 1) * 2.0
        smooth = F.interpolate(shift.to(device=device, dtype=torch.float32), size=(height, width), mode="bicubic",
                               align_corners=True)
        grid = grid + smooth.permute(0, 2, 3, 1)
    index = chosen.to(device)
    sampled_images = F.grid_sample(images[index].float(), grid, mode=config.image_interpolation,
                                   padding_mode="zeros", align_corners=False).to(images.dtype)
    stacked = torch.stack([labels[index].to(torch.float32), torch.ones_like(labels[index], dtype=torch.float32)], 1)
    sampled = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = sampled[:, 1] > 0.5
    moved_labels = torch.where(inside, sampled[:, 0].round().to(labels.dtype), torch.full_like(labels[index],
                                                                                               IGNORE_INDEX))
    # "border": a pixel inside never blends with the padding (all-ones weights stay ones).
    moved_weights = F.grid_sample(weights[index][:, None].float(), grid, mode=config.weight_interpolation,
                                  padding_mode="border", align_corners=False)[:, 0].to(weights.dtype)
    moved_weights = torch.where(inside, moved_weights, torch.zeros_like(moved_weights))
    images, labels, weights = images.clone(), labels.clone(), weights.clone()
    images[index], labels[index], weights[index] = sampled_images, moved_labels, moved_weights
    return Batch(images, labels, weights)


def noise(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Additive Gaussian noise of a variance drawn per slice."""
    images = batch.images
    chosen = draws.chosen(len(images), config.p_noise)
    std = torch.sqrt(draws.uniform(len(images), config.noise_variance)) * chosen
    if not bool(chosen.any()):  # the device generator serves only this field: skipping it changes no other draw
        return batch
    return batch._replace(images=images + draws.normal(tuple(images.shape), images.dtype) * _column(std, images))


def _gaussian_kernels(sigmas: torch.Tensor, radius: int) -> torch.Tensor:
    """float64 ``[n, 2 * radius + 1]``: normalised 1D Gaussian kernels."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernels = torch.exp(-0.5 * (offsets[None] / sigmas[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def blur(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Separable Gaussian blur of the chosen slices (every channel alike)."""
    images = batch.images
    n, channels, height, width = images.shape
    chosen = draws.chosen(n, config.p_blur)
    sigmas = draws.uniform(n, config.blur_sigma)
    picked = torch.nonzero(chosen).flatten()
    if len(picked) == 0:
        return batch
    radius = max(1, int(math.ceil(3 * config.blur_sigma[1])))
    kernels = _gaussian_kernels(sigmas[picked], radius).to(device=images.device, dtype=torch.float32)
    kernels = kernels.repeat_interleave(channels, dim=0)  # one kernel per (slice, channel)
    index = picked.to(images.device)
    flat = images[index].float().reshape(1, len(picked) * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernels[:, None, None, :],
                    groups=flat.shape[1])
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernels[:, None, :, None],
                    groups=flat.shape[1])
    images = images.clone()
    images[index] = flat.reshape(len(picked), channels, height, width).to(images.dtype)
    return batch._replace(images=images)


def brightness(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Multiply the chosen slices' intensities by a factor drawn per slice."""
    images = batch.images
    chosen = draws.chosen(len(images), config.p_brightness)
    factors = torch.where(chosen, draws.uniform(len(images), config.brightness), torch.ones(len(images),
                                                                                            dtype=torch.float64))
    if not bool(chosen.any()):
        return batch
    return batch._replace(images=images * _column(factors, images))


def contrast(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Scale the chosen slices' intensities around their mean, clipped to their former range (per channel)."""
    images = batch.images
    chosen = draws.chosen(len(images), config.p_contrast)
    factors = draws.uniform(len(images), config.contrast)
    if not bool(chosen.any()):
        return batch
    mean = images.mean(dim=(2, 3), keepdim=True)
    low, high = images.amin(dim=(2, 3), keepdim=True), images.amax(dim=(2, 3), keepdim=True)
    scaled = torch.maximum(torch.minimum((images - mean) * _column(factors, images) + mean, high), low)
    return batch._replace(images=torch.where(_column(chosen, images).bool(), scaled, images))


def lowres(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Simulate a coarser acquisition: down-sample (nearest) by a drawn zoom, up-sample back (linear)."""
    images = batch.images
    n, _, height, width = images.shape
    chosen = draws.chosen(n, config.p_lowres)
    zooms = draws.uniform(n, config.lowres_zoom)
    picked = torch.nonzero(chosen).flatten().tolist()
    if not picked:
        return batch
    images = images.clone()
    for i in picked:  # each slice its own zoom, hence its own size
        size = (max(1, int(round(height * float(zooms[i])))), max(1, int(round(width * float(zooms[i])))))
        small = F.interpolate(images[i:i + 1].float(), size=size, mode="nearest")
        images[i:i + 1] = F.interpolate(small, size=(height, width), mode="bilinear",
                                        align_corners=False).to(images.dtype)
    return batch._replace(images=images)


def _gamma_values(draws: Draws, n: int, bounds: Range) -> torch.Tensor:
    """float64 ``[n]``: as nnU-Net, half of the draws in [low, 1), half in [1, high] (where the range allows)."""
    low, high = bounds
    below = draws.chosen(n, 0.5) & (low < 1.0)
    under = draws.uniform(n, (low, min(1.0, high)))
    over = draws.uniform(n, (max(1.0, low), max(1.0, high)))
    return torch.where(below | (high <= 1.0), under, over)


def gamma(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Gamma on intensities rescaled to [0, 1] (inverted gamma: of the negated image), mean and std kept."""
    images = batch.images
    n = len(images)
    inverted, plain = draws.chosen(n, config.p_gamma_inverted), draws.chosen(n, config.p_gamma)
    for chosen, sign, exponent in ((inverted, -1.0, _gamma_values(draws, n, config.gamma)),
                                   (plain, 1.0, _gamma_values(draws, n, config.gamma))):
        if not bool(chosen.any()):
            continue
        x = images * sign
        mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        span = (hi - lo).clamp(min=1e-7)
        y = ((x - lo) / span).clamp(min=0).pow(_column(exponent, x)) * span + lo
        y_mean, y_std = y.mean(dim=(2, 3), keepdim=True), y.std(dim=(2, 3), keepdim=True)
        y = (y - y_mean) / y_std.clamp(min=1e-7) * std + mean
        images = torch.where(_column(chosen, images).bool(), y * sign, images)
    return batch._replace(images=images)


def mirror(batch: Batch, config: AugmentConfig, draws: Draws) -> Batch:
    """Flip the chosen slices along each of ``mirror_axes`` (image, labels and weights together)."""
    images, labels, weights = batch
    n = len(images)
    for axis in (0, 1):
        chosen = draws.chosen(n, config.p_mirror)  # drawn for both axes, so the stream is the same
        if axis not in config.mirror_axes or not bool(chosen.any()):
            continue
        flag = chosen.to(images.device)
        images = torch.where(flag.view(-1, 1, 1, 1), images.flip(2 + axis), images)
        labels = torch.where(flag.view(-1, 1, 1), labels.flip(1 + axis), labels)
        weights = torch.where(flag.view(-1, 1, 1), weights.flip(1 + axis), weights)
    return Batch(images, labels, weights)


Transform = Callable[[Batch, AugmentConfig, Draws], Batch]
# name -> transform, in the order they run (nnU-Net's order: spatial, intensity, mirroring).
TRANSFORMS: Dict[str, Transform] = {
    "spatial": spatial, "noise": noise, "blur": blur, "brightness": brightness, "contrast": contrast,
    "lowres": lowres, "gamma": gamma, "mirror": mirror,
}


@torch.no_grad()
def augment_batch(batch: Batch, config: AugmentConfig, seed: int, rank: int, step: int) -> Batch:
    """The augmented batch of ``step``: a pure function of (batch, config, seed, rank, step) on a device.

    Shapes and dtypes are kept; labels that come from outside the slice are ``IGNORE_INDEX`` with weight 0.
    """
    draws = Draws(seed, rank, step, batch.images.device)
    for transform in TRANSFORMS.values():
        batch = transform(batch, config, draws)
    return batch

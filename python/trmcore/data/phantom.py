"""Procedural multi-site brain MRI phantom in the standard layout.

Each case is a skull-stripped brain (background exactly 0) with

* anatomy: white matter (WM), a folded cortical grey-matter ribbon (GM), deep
  grey nuclei, CSF in the lateral ventricles, the interhemispheric fissure and
  the sulci; brain shape, folding pattern and ventricle size vary per case;
* optionally a tumour laid out as in BraTS: oedema (ED) around, an enhancing
  rim (ET) inside it, a necrotic core (NCR) inside the rim;
* three contrasts that order tissues the way real sequences do:

  ======  ===========================  ===============================
  T1      WM > GM > CSF                 NCR dark, ED slightly dark
  T2      CSF > GM > WM (inverted)      NCR, ED bright
  FLAIR   GM > WM > CSF (CSF nulled)    ED, ET bright (lesions)
  ======  ===========================  ===============================

* per-site acquisition: multiplicative bias field (smooth plus a coil
  gradient), Rician noise, blur (point-spread function), contrast compression
  and a gamma nonlinearity, scanner gain.

The built-in sites differ strongly (see :data:`SITE_PROFILES`) so that transfer
between them, or between contrasts (T1 -> T2 inverts WM/CSF), can be negative.

Labels: background 0, CSF 1, GM 2, WM 3, NCR 4, ED 5, ET 6 (tumour labels only
with ``tumour``). Channels: 0 T1, 1 T2, 2 FLAIR.

Everything is NumPy; a case depends only on (seed, case index, site, shape),
so a dataset is reproducible bit for bit.

Example:
    >>> from trmcore.data import make_phantom, load_task_volumes, parse_task
    >>> root = make_phantom("/tmp/phantom-doc", n_cases=6, sites=3, overwrite=True)   # doctest: +SKIP
    >>> vols, info = load_task_volumes(root, parse_task("T2", "CSF", site="site-B"))   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import nibabel as nib
import numpy as np

from trmcore.fileio import atomic_write_json, prepare_output_folder, save_image

from .layout import DATASET_ENTRIES

CHANNELS = ("T1", "T2", "FLAIR")
TISSUE_LABELS = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
TUMOUR_LABELS = {"NCR": 4, "ED": 5, "ET": 6}

# Mean intensity of each label per contrast (arbitrary units, before site effects).
# Indexed by label value: [bg, CSF, GM, WM, NCR, ED, ET].
TISSUE_MEANS = {
    "T1": np.array([0.0, 0.22, 0.52, 0.80, 0.16, 0.42, 0.70]),
    "T2": np.array([0.0, 0.95, 0.58, 0.36, 0.88, 0.78, 0.52]),
    "FLAIR": np.array([0.0, 0.08, 0.60, 0.40, 0.30, 0.92, 0.80]),
}

# Field of view in mm of the whole volume: sets the voxel size in the affine.
FIELD_OF_VIEW_MM = (200.0, 220.0, 160.0)


@dataclass(frozen=True)
class SiteProfile:
    """How one site (scanner/protocol) acquires images.

    Attributes:
        name: site name written to dataset.json "sites".
        bias: standard deviation of the log bias field (0.1 mild, 0.5 strong).
        bias_gradient: strength of a linear coil gradient in the log bias field.
        noise: Rician noise sigma relative to the brightest tissue.
        blur_mm: Gaussian point-spread sigma in mm (0 = none).
        contrast: 1 keeps tissue contrast; < 1 pulls tissue means together.
        gamma: intensity nonlinearity I -> I**gamma (applied before bias and noise).
        gain: scanner intensity scale.
    """

    name: str
    bias: float = 0.1
    bias_gradient: float = 0.0
    noise: float = 0.02
    blur_mm: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0
    gain: float = 1000.0


#: Built-in sites, strongly different on purpose: a clean reference scanner, one
#: with a strong coil bias and a nonlinear response, a noisy low-contrast,
#: low-resolution one, and a bright-gain, high-contrast one with a mild bias.
SITE_PROFILES: Tuple[SiteProfile, ...] = (
    SiteProfile("site-A", bias=0.08, bias_gradient=0.0, noise=0.02, blur_mm=0.0, contrast=1.0, gamma=1.0, gain=1000.0),
    SiteProfile("site-B", bias=0.40, bias_gradient=0.8, noise=0.05, blur_mm=2.0, contrast=0.85, gamma=1.6, gain=420.0),
    SiteProfile("site-C", bias=0.20, bias_gradient=0.2, noise=0.06, blur_mm=2.5, contrast=0.65, gamma=0.7, gain=2600.0),
    SiteProfile("site-D", bias=0.15, bias_gradient=0.4, noise=0.04, blur_mm=1.0, contrast=1.35, gamma=2.2, gain=90.0),
)


@dataclass(frozen=True)
class PhantomCase:
    """One generated case: images float32 [3, X, Y, Z] (T1, T2, FLAIR), label uint8 [X, Y, Z]."""

    images: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    site: str


# The phantom of `make_phantom` and `trm phantom` when nothing else is asked for (quick on 2 CPU cores).
DEFAULT_CASES = 6
DEFAULT_SITES = 3
DEFAULT_SHAPE = (48, 48, 24)
DEFAULT_SEED = 0


def make_phantom(
    out_dir: Union[str, Path],
    n_cases: int = DEFAULT_CASES,
    sites: Union[int, Sequence[Union[str, SiteProfile]]] = DEFAULT_SITES,
    size: Sequence[int] = DEFAULT_SHAPE,
    tumour: Union[bool, float] = False,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a synthetic multi-site brain MRI dataset in the standard layout.

    Args:
        out_dir: dataset folder to create.
        n_cases: number of cases (assigned to sites in turn: case i -> site i % n_sites).
        sites: number of built-in sites (1-4), or a list of site names from
            :data:`SITE_PROFILES` or :class:`SiteProfile` objects.
        size: volume shape [X, Y, Z]; (48, 48, 24) is quick, (240, 240, 155) is BraTS size.
        tumour: True for a tumour in every case, a fraction in (0, 1) for that
            share of cases (chosen by seed), False for none.
        seed: everything is determined by it.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a progress bar.
    Returns:
        ``Path(out_dir)``.
    """
    out = Path(out_dir)
    profiles = resolve_sites(sites)
    shape = _check_shape(size)
    if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) or n_cases < 1:
        raise ValueError(f"n_cases must be a positive integer, got {n_cases!r}")
    tumour_fraction = _tumour_fraction(tumour)
    # overwrite replaces only an earlier phantom's entries (by its marker); other files in out stay.
    prepare_output_folder(out, "phantom", DATASET_ENTRIES, overwrite=overwrite)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)

    with_tumour = _tumour_cases(n_cases, tumour_fraction, seed)
    case_ids = [f"phantom_{i:03d}" for i in range(n_cases)]
    site_of = {case_id: profiles[i % len(profiles)].name for i, case_id in enumerate(case_ids)}
    labels = dict(TISSUE_LABELS)
    if tumour_fraction > 0:
        labels.update(TUMOUR_LABELS)
    meta = {
        "name": "trmcore-phantom",
        "description": "Procedural multi-site brain MRI phantom (trmcore.data.phantom)",
        "channel_names": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": labels,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "sites": site_of,
        "phantom": {
            "seed": seed,
            "size": list(shape),
            "tumour": tumour_fraction,
            "site_profiles": [asdict(p) for p in profiles],
        },
    }
    atomic_write_json(out / "dataset.json", meta, overwrite=False)

    indices = range(n_cases)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="phantom", unit="case")
    for i in indices:
        case = generate_case(shape, profiles[i % len(profiles)], seed=seed, index=i, tumour=bool(with_tumour[i]))
        for c in range(len(CHANNELS)):
            _save(case.images[c], case.affine, out / "imagesTr" / f"{case_ids[i]}_{c:04d}.nii.gz")
        _save(case.label, case.affine, out / "labelsTr" / f"{case_ids[i]}.nii.gz")
    return out


def resolve_sites(sites: Union[int, Sequence[Union[str, SiteProfile]]]) -> List[SiteProfile]:
    """Turn the ``sites`` argument of :func:`make_phantom` into profiles."""
    by_name = {p.name: p for p in SITE_PROFILES}
    if isinstance(sites, (int, np.integer)) and not isinstance(sites, bool):
        if not 1 <= sites <= len(SITE_PROFILES):
            raise ValueError(f"sites must be 1..{len(SITE_PROFILES)} built-in sites or a list of profiles, got {sites}")
        return list(SITE_PROFILES[:sites])
    if isinstance(sites, str):
        sites = [s.strip() for s in sites.split(",") if s.strip()]
    profiles = []
    for site in sites:
        if isinstance(site, SiteProfile):
            profiles.append(site)
        elif site in by_name:
            profiles.append(by_name[site])
        else:
            raise ValueError(f"unknown phantom site {site!r} (built-in: {', '.join(by_name)}; or pass SiteProfile objects)")
    if not profiles:
        raise ValueError("sites must name at least one site")
    if len({p.name for p in profiles}) != len(profiles):
        raise ValueError(f"site names must be unique, got {[p.name for p in profiles]}")
    return profiles


def generate_case(shape: Sequence[int], site: SiteProfile, seed: int = 0, index: int = 0, tumour: bool = False) -> PhantomCase:
    """Generate one case in memory (see the module docstring for what it holds)."""
    shape = _check_shape(shape)
    spacing = np.array([fov / n for fov, n in zip(FIELD_OF_VIEW_MM, shape)])
    # Anatomy depends on (seed, index) only, acquisition also on the site, so the
    # same subject "scanned" at another site keeps its anatomy.
    anatomy_rng = np.random.default_rng([seed, index, 0])
    label = _anatomy(shape, spacing, anatomy_rng, tumour)
    acq_rng = np.random.default_rng([seed, index, 1, _stable_hash(site.name)])
    images = np.stack([_acquire(label, name, site, spacing, acq_rng) for name in CHANNELS])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -0.5 * spacing * (np.array(shape) - 1)
    return PhantomCase(images, label, affine, site.name)


# ---------------------------------------------------------------------- anatomy
def _anatomy(shape: Tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator, tumour: bool) -> np.ndarray:
    """Label map uint8 [X, Y, Z]: background 0, CSF 1, GM 2, WM 3 (+ NCR 4, ED 5, ET 6)."""
    ux, uy, uz = _unit_grid(shape)
    # Normalised voxel size: anatomy thicknesses never drop below ~1-2 voxels so
    # the small default grid still shows a ribbon.
    voxel = 2.0 / min(shape)

    axes = np.array([0.74, 0.84, 0.76]) * rng.uniform(0.93, 1.05, 3)
    rho = np.sqrt((ux / axes[0]) ** 2 + (uy / axes[1]) ** 2 + (uz / axes[2]) ** 2)
    rho = rho + 0.05 * smooth_noise(shape, _sigma_vox(0.35, shape), rng)
    brain = rho < 1.0
    depth = 1.0 - rho

    label = np.zeros(shape, np.uint8)
    label[brain] = 3  # WM

    # Cortical ribbon: sulci are sheets along the zero set of a band-limited
    # field, reaching down to a random depth. `folded` approximates the
    # distance to the nearest CSF (brain surface or sulcus); bands of it give
    # a CSF lining, then a grey-matter ribbon of near-constant thickness.
    spacing_unit = max(0.08, 2.5 * voxel)
    field = smooth_noise(shape, _sigma_vox(spacing_unit, shape), rng)
    sulcal_depth = rng.uniform(0.17, 0.25)
    to_sulcus = 1.2 * spacing_unit * np.abs(field) + 3.0 * np.maximum(0.0, depth - sulcal_depth)
    folded = np.minimum(depth, to_sulcus)
    t_csf = max(0.012, 0.5 * voxel)
    t_gm = max(0.06, 1.8 * voxel)
    label[brain & (folded < t_csf + t_gm)] = 2
    label[brain & (folded < t_csf)] = 1

    # Interhemispheric fissure: a CSF sheet along x = 0 in the upper brain.
    fissure_width = max(0.02, 0.6 * voxel)
    label[brain & (np.abs(ux - 0.02 * rng.standard_normal()) < fissure_width) & (uz > -0.25) & (depth < 0.45)] = 1

    # Deep grey nuclei (thalamus / basal ganglia) either side of the ventricles.
    for side in (-1.0, 1.0):
        centre = np.array([side * 0.22, -0.05, -0.08]) + 0.02 * rng.standard_normal(3)
        radii = np.array([0.10, 0.16, 0.11]) * rng.uniform(0.9, 1.1, 3)
        label[brain & (_ellipsoid(ux, uy, uz, centre, radii) < 1.0)] = 2

    # Lateral ventricles: curved ellipsoids, size varies (atrophy).
    scale = rng.uniform(0.8, 1.5)
    wobble = 0.12 * smooth_noise(shape, _sigma_vox(0.1, shape), rng)
    for side in (-1.0, 1.0):
        centre = np.array([side * 0.10, 0.02, 0.10]) + 0.015 * rng.standard_normal(3)
        radii = np.array([max(0.05, 1.3 * voxel) * scale, 0.36, 0.10 * scale])
        bend = 0.18 * (uy / 0.36) ** 2  # horns curve downwards front and back
        r = _ellipsoid(ux, uy, uz + bend, centre, radii) + wobble
        label[brain & (r < 1.0)] = 1

    if tumour:
        _add_tumour(label, brain, depth, (ux, uy, uz), shape, rng)
    return label


def _add_tumour(label, brain, depth, grid, shape, rng) -> None:
    ux, uy, uz = grid
    candidates = np.argwhere(brain & (depth > 0.35))
    if candidates.size == 0:
        candidates = np.argwhere(brain)
    centre_idx = candidates[rng.integers(len(candidates))]
    centre = np.array([np.ravel(g)[i] for g, i in zip(grid, centre_idx)])
    # Shell radii in unit coordinates; each shell at least ~1.5 voxels thick
    # so the nesting survives the coarse default grid.
    voxel = 2.0 / min(shape)
    r_ed = rng.uniform(0.30, 0.40)
    r_et = min(r_ed * rng.uniform(0.60, 0.72), r_ed - 1.5 * voxel)
    r_ncr = max(min(r_et * rng.uniform(0.45, 0.60), r_et - 1.5 * voxel), 1.2 * voxel)
    dist = np.sqrt((ux - centre[0]) ** 2 + (uy - centre[1]) ** 2 + (uz - centre[2]) ** 2)
    irregular = 1.0 + 0.18 * smooth_noise(shape, _sigma_vox(0.08, shape), rng)
    # Oedema spreads along white matter; near the core it takes every tissue.
    scaled = dist * irregular
    oedema = brain & (scaled < r_ed) & ((label == 3) | (scaled < 0.8 * r_ed))
    label[oedema] = 5
    label[brain & (scaled < r_et)] = 6
    label[brain & (scaled < r_ncr)] = 4


# ------------------------------------------------------------------ acquisition
def _acquire(label: np.ndarray, channel: str, site: SiteProfile, spacing: np.ndarray, rng) -> np.ndarray:
    """Simulate one contrast of ``label`` at ``site``: float32 [X, Y, Z], 0 outside the brain."""
    shape = label.shape
    brain = label > 0
    means = TISSUE_MEANS[channel].copy()
    means[1:] *= rng.uniform(0.96, 1.04, len(means) - 1)  # per-case relaxation-time spread
    # Site contrast: pull or push tissue means about their middle.
    mid = 0.5 * (means[1:4].min() + means[1:4].max())
    means[1:] = np.clip(mid + site.contrast * (means[1:] - mid), 0.03, 1.2)
    clean = means[label].astype(np.float32)
    # Tissue texture (slow) and tumour heterogeneity (faster, stronger).
    clean *= 1.0 + 0.03 * smooth_noise(shape, _sigma_vox(0.12, shape), rng)
    lesion = label >= 4
    if lesion.any():
        clean[lesion] *= 1.0 + 0.10 * smooth_noise(shape, _sigma_vox(0.04, shape), rng)[lesion]
    if site.blur_mm > 0:
        clean = gaussian_blur(clean, site.blur_mm / spacing)
    clean = np.clip(clean, 0.0, None) ** site.gamma
    # Bias: smooth log field plus a coil gradient in a random direction.
    ux, uy, uz = _unit_grid(shape)
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    log_bias = site.bias * smooth_noise(shape, _sigma_vox(0.4, shape), rng)
    log_bias += site.bias_gradient * (direction[0] * ux + direction[1] * uy + direction[2] * uz)
    signal = clean * np.exp(log_bias).astype(np.float32)
    # Rician magnitude noise, relative to the brightest tissue of this contrast.
    sigma = np.float32(site.noise * means[1:4].max() ** site.gamma)
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    out = np.zeros(shape, np.float32)
    # Skull-stripped: background exactly 0, brain strictly positive.
    out[brain] = np.maximum(magnitude[brain], 1e-3) * np.float32(site.gain)
    return out


# --------------------------------------------------------------- numpy helpers
def smooth_noise(shape: Sequence[int], sigma_vox: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise, float32 [shape], mean ~0, std 1.

    Broad fields are generated on a coarse grid and linearly upsampled, so the
    cost stays small on large volumes.
    """
    shape = tuple(int(s) for s in shape)
    sigma = np.asarray(sigma_vox, np.float64)
    factor = max(1, int(np.floor(sigma.min() / 1.5)))
    coarse = tuple(max(2, -(-n // factor) + 1) for n in shape)
    if factor > 1:
        coarse = tuple(_nice_size(n) for n in coarse)  # FFT-friendly; upsampling absorbs the extra
    field = gaussian_blur(rng.standard_normal(coarse, dtype=np.float32), sigma / factor, wrap=True)
    if coarse != shape:
        field = _resize_linear(field, shape)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def gaussian_blur(volume: np.ndarray, sigma_vox: Sequence[float], wrap: bool = False) -> np.ndarray:
    """Separable Gaussian blur of a 3D float array via FFT (float32 result).

    Without ``wrap`` the volume is zero-padded by 3 sigma so nothing wraps round.
    """
    vol = np.asarray(volume, np.float32)
    sigma = np.broadcast_to(np.asarray(sigma_vox, np.float64), (vol.ndim,))
    if np.all(sigma <= 0):
        return vol.copy()
    # Pad to FFT-friendly sizes (factors 2, 3, 5): pocketfft is many times
    # slower on sizes with a large prime factor.
    pads = [(0, 0) if wrap else (0, _nice_size(n + int(np.ceil(3 * s))) - n) for n, s in zip(vol.shape, sigma)]
    padded = np.pad(vol, pads) if not wrap else vol
    spectrum = np.fft.rfftn(padded, axes=tuple(range(vol.ndim)))
    for axis, (n, s) in enumerate(zip(padded.shape, sigma)):
        freqs = np.fft.rfftfreq(n) if axis == vol.ndim - 1 else np.fft.fftfreq(n)
        kernel = np.exp(-2.0 * (np.pi * s * freqs) ** 2).astype(np.float32)
        view = [1] * vol.ndim
        view[axis] = kernel.size
        spectrum *= kernel.reshape(view)
    out = np.fft.irfftn(spectrum, s=padded.shape, axes=tuple(range(vol.ndim))).astype(np.float32)
    return out[tuple(slice(0, n) for n in vol.shape)]


def _nice_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5."""
    m = max(1, int(n))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _resize_linear(field: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    for axis, n in enumerate(shape):
        m = field.shape[axis]
        pos = np.linspace(0.0, m - 1.0, n)
        i0 = np.minimum(np.floor(pos).astype(np.int64), m - 2)
        w = (pos - i0).astype(np.float32)
        view = [1] * field.ndim
        view[axis] = n
        w = w.reshape(view)
        field = np.take(field, i0, axis=axis) * (1 - w) + np.take(field, i0 + 1, axis=axis) * w
    return field.astype(np.float32)


def _unit_grid(shape: Tuple[int, int, int]):
    """Voxel-centre coordinates in [-1, 1] per axis (broadcastable [X,1,1], [1,Y,1], [1,1,Z])."""
    return tuple(
        ((np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0).reshape([n if a == i else 1 for a in range(3)])
        for i, n in enumerate(shape)
    )


def _sigma_vox(sigma_unit: float, shape: Sequence[int]) -> Tuple[float, ...]:
    """A length in unit-grid coordinates ([-1, 1] per axis) as voxels per axis."""
    return tuple(sigma_unit * n / 2.0 for n in shape)


def _ellipsoid(ux, uy, uz, centre, radii) -> np.ndarray:
    return np.sqrt(((ux - centre[0]) / radii[0]) ** 2 + ((uy - centre[1]) / radii[1]) ** 2 + ((uz - centre[2]) / radii[2]) ** 2)


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    save_image(img, path, overwrite=False)


def _check_shape(size: Sequence[int]) -> Tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be three integers [X, Y, Z], got {size!r}") from None
    if len(shape) != 3 or any(s < 8 for s in shape) or any(int(s) != s for s in size):
        raise ValueError(f"size must be three integers >= 8 [X, Y, Z], got {tuple(size)}")
    return shape


def _tumour_fraction(tumour: Union[bool, float]) -> float:
    if isinstance(tumour, bool):
        return 1.0 if tumour else 0.0
    fraction = float(tumour)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"tumour must be True/False or a fraction in [0, 1], got {tumour!r}")
    return fraction


def _tumour_cases(n_cases: int, fraction: float, seed: int) -> np.ndarray:
    chosen = np.zeros(n_cases, bool)
    if fraction <= 0:
        return chosen
    count = max(1, int(round(fraction * n_cases)))
    chosen[np.random.default_rng([seed, 7]).permutation(n_cases)[:count]] = True
    return chosen


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; this is not.
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value

"""Rank candidate source models by LEEP on a target training set (SPEC sections 2 and 6).

For each source (a run folder ``RUN/model.safetensors + run.json``, an ONNX
model, an nnU-Net v2 2d result folder or a MONAI network: trmcore.training.sources), the source's logits over the target training slices feed
:class:`trmcore.ops.LeepAccumulator` batch by batch (first pass: the joint
P(y, z)); a second pass sums :func:`trmcore.ops.pixel_leep` with the
finished joint. LEEP = that sum / number of pixels (<= 0, higher = more
transferable). The source head's Z outputs are used as they are, whatever
the number of target classes.

``validate_ranking`` fine-tunes each source briefly with
:func:`trmcore.training.finetune`, evaluates 3D Dice on the held-out cases,
and reports Kendall's tau between LEEP and Dice.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from trmcore.training.methods import PLAIN_METHOD

PathLike = Union[str, Path]


@dataclass(frozen=True)
class RankConfig:
    """Target task and how its slices are made.

    Attributes:
        channel, labels, site: the target task (as ``trm train``'s options).
        val_fraction, seed: the case split; LEEP uses the training cases only,
            the same split fine-tuning makes.
        shots: keep N seeded training slices (few-shot), or None for all.
        axis, divisor: slicing for ONNX sources. None (default) takes them from
            the model's trmcore metadata (``trm export`` writes the run's), else
            2 and 16 for an ONNX model without it. Run folders always use their run.json.
        batch_size: slices per forward pass; device: torch device for run folders
            (a ``cuda`` device also lets ONNX sources use onnxruntime's CUDA provider).
        resample: load the target on each source's recorded grid (False: as stored).
        fold: the fold of nnU-Net sources (``fold_K``; trmcore.training.sources).
    """

    channel: str
    labels: str
    site: Optional[str] = None
    val_fraction: float = 0.2
    shots: Optional[int] = None
    axis: Optional[int] = None
    divisor: Optional[int] = None
    batch_size: int = 16
    device: Optional[str] = None
    seed: int = 0
    resample: bool = True
    fold: str = "0"


@dataclass(frozen=True)
class SourceScore:
    source: Path
    kind: str  # "onnx" or a kind of trmcore.training.sources.SOURCE_KINDS ("run", "nnunet", "monai")
    leep: float
    num_source_classes: int
    pixels: int

    def to_json(self) -> Dict[str, object]:
        return {"source": str(self.source), "kind": self.kind, "leep": self.leep,
                "num_source_classes": self.num_source_classes, "pixels": self.pixels}


LogitsFn = Callable[[np.ndarray], np.ndarray]

# Slicing of an ONNX model that carries no trmcore metadata (as `trm train`'s defaults).
FALLBACK_AXIS = 2
FALLBACK_DIVISOR = 16
# Fine-tuning iterations per source of `validate_ranking` / `trm rank --validate --iterations`.
VALIDATE_ITERATIONS = 200


@dataclass
class LoadedSource:
    """A source model ready to score.

    Attributes:
        logits: float32 ``[N, Cin, H, W]`` -> float32 ``[N, Z, H, W]``.
        in_channels: Cin the model takes (None when an ONNX model leaves it dynamic).
        channels: the model's input channel names in network order (None when unknown).
        axis, divisor: how the target volumes are sliced and padded for it.
        kind: ``"run"`` or ``"onnx"``.
        geometry, normalization: the grid and intensity normalisation the
            target volumes are loaded with (the model's recorded ones; None: as stored).
    """

    logits: LogitsFn
    in_channels: Optional[int]
    channels: Optional[List[str]]
    axis: int
    divisor: int
    kind: str
    geometry: Optional[Any] = None
    normalization: Any = "zscore-nonzero"
    source: Any = None  # a trmcore.training.sources.SourceModel (the 3-D sources are scored from it)


def _run_source(path: Path, device: Optional[str], resample: bool = True) -> LoadedSource:
    """A run folder (``model.safetensors`` + ``run.json``), sliced as its run.json says."""
    import torch

    from trmcore.training import load_run
    from trmcore.training.distributed import resolve_device

    resolved = resolve_device(device)
    model, info = load_run(path, device=resolved)
    model.eval()

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(resolved)).float().cpu().numpy()

    return LoadedSource(logits, info.model.in_channels, list(info.channels), info.axis, info.divisor, "run",
                        info.geometry(f"source run {path}", resample), info.normalization)


def _registry_source(path: Path, config: RankConfig) -> LoadedSource:
    """An nnU-Net 2d result folder or a MONAI network (trmcore.training.sources), on its grid and normalisation.

    Channels are taken in the target's order (the source's own scheme normalises them in that order).
    """
    import torch

    from trmcore.training.distributed import resolve_device
    from trmcore.training.sources import SourceOptions, load_source

    resolved = resolve_device(config.device)
    model = load_source(path, SourceOptions(fold=str(config.fold), device=resolved, resample=config.resample))
    network = model.network

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch).to(resolved)).float().cpu().numpy()

    if model.spatial_dims == 3 and config.shots is not None:
        raise ValueError(f"source {path} is a 3-D network: it scores whole volumes, not --shots slices")
    return LoadedSource(logits, model.in_channels, None, model.axis, model.divisor, model.kind, model.geometry,
                        model.normalization, model)


def _onnx_source(path: Path, config: RankConfig) -> LoadedSource:
    """An ONNX model; slicing from its trmcore metadata unless ``config`` sets it.

    Raises:
        ValueError naming ``path``: not a loadable ONNX model, not one image
            input, invalid trmcore metadata, or onnxruntime missing.
    """
    try:
        from trmcore.infer.metadata import METADATA_KEY, ModelMetadata
        from trmcore.infer.runtime import create_session
    except ImportError:
        raise ValueError(f"ranking the ONNX model {path} needs onnxruntime (pip install onnxruntime)") from None
    wants_cuda = config.device is not None and str(config.device).startswith("cuda")
    session = create_session(path, providers="auto" if wants_cuda else "cpu")
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"ONNX model {path} has {len(inputs)} inputs; expected one image input [N, Cin, H, W]")
    name, shape = inputs[0].name, inputs[0].shape
    if len(shape) != 4:
        raise ValueError(f"ONNX model {path}: input {name!r} has shape {shape}; expected [N, Cin, H, W]")
    input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
    in_channels = shape[1] if isinstance(shape[1], int) else None

    props = session.get_modelmeta().custom_metadata_map
    metadata = ModelMetadata.from_props(props, str(path)) if METADATA_KEY in props else None
    channels = list(metadata.channels) if metadata is not None else None
    if metadata is not None and in_channels is None:
        in_channels = metadata.num_channels
    axis = config.axis if config.axis is not None else (metadata.axis if metadata else FALLBACK_AXIS)
    divisor = config.divisor if config.divisor is not None else (metadata.divisor if metadata else FALLBACK_DIVISOR)

    def logits(batch: np.ndarray) -> np.ndarray:
        try:
            out = session.run(None, {name: batch.astype(input_dtype, copy=False)})[0]
        except Exception as err:  # onnxruntime raises its own exception types
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"ONNX model {path} failed on a batch of shape {batch.shape}: {first_line}") from None
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
            raise ValueError(f"ONNX model {path} returned shape {out.shape} for input {batch.shape}; "
                             "expected logits [N, Z, H, W] of the input's size")
        return out

    geometry = metadata.geometry(f"source model {path}", config.resample) if metadata is not None else None
    normalization = metadata.normalization if metadata is not None else "zscore-nonzero"
    return LoadedSource(logits, in_channels, channels, axis, divisor, "onnx", geometry, normalization)


def _channel_order(source: Path, loaded: LoadedSource, target_channels: Sequence[str]) -> Optional[List[int]]:
    """Indices putting the target's channels in the model's order, or None to keep them.

    Raises ValueError when the model takes a different number of channels.
    When the model names exactly the target's channels in another order
    (``T2,T1`` vs ``T1,T2``), they are reordered; names that differ (a T1
    model scored on a T2 target) are the cross-modality case and are kept as given.
    """
    if loaded.in_channels is not None and loaded.in_channels != len(target_channels):
        raise ValueError(f"source {source} takes {loaded.in_channels} input channel(s); the target task has "
                         f"{len(target_channels)} ({', '.join(target_channels)})")
    if loaded.channels and sorted(loaded.channels) == sorted(target_channels) \
            and list(loaded.channels) != list(target_channels):
        return [list(target_channels).index(c) for c in loaded.channels]
    return None


def _batches(n: int, size: int) -> Iterable[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def source_leep(logits_fn: LogitsFn, images: np.ndarray, labels: np.ndarray, num_classes: int,
                batch_size: int = 16) -> Tuple[float, int, int]:
    """Dataset LEEP of one source over slices, in two batched passes.

    Args:
        logits_fn: float32 ``[N, Cin, H, W]`` -> ``[N, Z, H, W]``.
        images: float32 ``[S, Cin, H, W]``; labels: int64 ``[S, H, W]`` (0..C-1).
        num_classes: C.

    Returns:
        (LEEP, Z, number of pixels).
    """
    from trmcore.ops import LeepAccumulator, pixel_leep

    accumulator = LeepAccumulator(num_classes)
    for part in _batches(len(images), batch_size):
        accumulator.update(logits_fn(images[part]), labels[part])
    joint = accumulator.joint
    if joint.count == 0:
        raise ValueError("the target training set has no pixel to score")
    total = 0.0
    for part in _batches(len(images), batch_size):
        total += float(np.sum(pixel_leep(logits_fn(images[part]), labels[part], joint), dtype=np.float64))
    return total / joint.count, joint.num_source_classes, joint.count


def _target_slices(data: PathLike, config: RankConfig, model: LoadedSource, cache: Dict):
    """The target's training slices as ``model`` sees them (its grid, normalisation, slicing), cached."""
    from trmcore.data.geometry import native_geometry

    geometry = model.geometry if model.geometry is not None and config.resample else native_geometry(model.axis)
    loaded = ("volumes", geometry, model.normalization)
    key = (model.axis, model.divisor, geometry, model.normalization)
    if key not in cache:
        from trmcore.data import few_shot, load_task_volumes, parse_task, split_cases, volumes_to_slices

        if loaded not in cache:
            volumes, info = load_task_volumes(data, parse_task(config.channel, config.labels, config.site),
                                              progress=False, geometry=geometry, normalization=model.normalization)
            train, _ = split_cases(volumes, config.val_fraction, config.seed)
            cache[loaded] = train, info
        train, info = cache[loaded]
        slices = volumes_to_slices(train, axis=model.axis, divisor=model.divisor, skip_empty=True)
        if config.shots is not None:
            slices = few_shot(slices, config.shots, seed=config.seed)
        cache[key] = slices, info
    return cache[key]


def _volume_leep(data: PathLike, config: RankConfig, model: LoadedSource, cache: Dict) -> Tuple[float, int, int]:
    """(LEEP, Z, voxels) of a 3-D source over the target's training volumes on its grid (padding not scored)."""
    from trmcore.data import load_task_volumes, parse_task, split_cases
    from trmcore.data.geometry import native_geometry
    from trmcore.training.distributed import resolve_device
    from trmcore.training.riskmap3d import source_leep_3d
    from trmcore.training.sources import check_volume_spacing

    geometry = model.geometry if config.resample else native_geometry(model.axis)
    key = ("volumes", geometry, model.normalization)
    if key not in cache:
        volumes, info = load_task_volumes(data, parse_task(config.channel, config.labels, config.site),
                                          progress=False, geometry=geometry, normalization=model.normalization)
        train, _ = split_cases(volumes, config.val_fraction, config.seed)
        cache[key] = train, info
    train, info = cache[key]
    check_volume_spacing(model.source, train)
    return source_leep_3d(model.source.network, train, info.num_classes, model.source.divisors,
                          resolve_device(config.device))


def _load_source(source: Path, config: RankConfig) -> LoadedSource:
    if source.is_file() and source.suffix == ".onnx":
        return _onnx_source(source, config)
    if source.is_file() and source.suffix.lower() != ".json":
        raise ValueError(f"source {source} is neither a run folder nor an .onnx model (nor an nnU-Net result "
                         "folder or a MONAI bundle / network JSON)")
    if not source.exists():
        raise FileNotFoundError(f"source {source} not found (give a run folder, an .onnx model, an nnU-Net "
                                "result folder or a MONAI bundle / network JSON)")
    from trmcore.training.sources import source_kind

    if source_kind(source) == "run":  # one line naming the path when no kind, or several, recognise it
        return _run_source(source, config.device, config.resample)
    return _registry_source(source, config)


def rank_sources(data: PathLike, sources: Sequence[PathLike], config: RankConfig) -> List[SourceScore]:
    """LEEP of every source on the target training slices, best (highest) first.

    Run folders are sliced as their run.json says, ONNX models as their
    embedded trmcore metadata says (or ``config.axis``/``config.divisor``), so a
    run and its ``trm export`` score the same slices.

    Raises:
        FileNotFoundError: a source path that does not exist, or a folder without run.json.
        ValueError: a file that is not an .onnx model or that onnxruntime cannot
            load (the message names the file), or a source whose number of input
            channels differs from the target's.
    """
    if not sources:
        raise ValueError("no source models given")
    from trmcore.data import parse_task

    channels = parse_task(config.channel, config.labels, config.site).channels
    # Open and check every source before scoring any, so a bad one fails at once, not after minutes of work.
    loaded = []
    for source in map(Path, sources):
        model = _load_source(source, config)
        loaded.append((source, model, _channel_order(source, model, channels)))
    cache: Dict = {}
    scores = []
    for source, model, order in loaded:
        if model.source is not None and model.source.spatial_dims == 3:  # whole volumes (trmcore.training.riskmap3d)
            scores.append(SourceScore(source, model.kind, *_volume_leep(data, config, model, cache)))
            continue
        slices, info = _target_slices(data, config, model, cache)
        images = slices.images if order is None else np.ascontiguousarray(slices.images[:, order])
        value, z, pixels = source_leep(model.logits, images, slices.labels, info.num_classes, config.batch_size)
        scores.append(SourceScore(source, model.kind, value, z, pixels))
    return sorted(scores, key=lambda s: -s.leep)


@dataclass(frozen=True)
class RankValidation:
    dice: List[float]
    tau: float
    p_value: float
    iterations: int
    method: str

    def to_json(self) -> Dict[str, object]:
        return {"dice": self.dice, "kendall_tau": self.tau, "p_value": self.p_value,
                "iterations": self.iterations, "method": self.method}


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
    """Kendall's tau-b and its p-value (scipy.stats.kendalltau); NaN when undefined (n < 2 or constant)."""
    from scipy.stats import kendalltau

    if len(x) < 2:
        return float("nan"), float("nan")
    result = kendalltau(x, y)
    return float(result.statistic), float(result.pvalue)


def validate_ranking(data: PathLike, ranking: Sequence[SourceScore], config: RankConfig,
                     iterations: int = VALIDATE_ITERATIONS, method: str = PLAIN_METHOD, work_dir: Optional[PathLike] = None,
                     progress: bool = False) -> RankValidation:
    """Fine-tune each source (not ONNX models) briefly on the target; Kendall tau between LEEP and Dice.

    Uses :func:`trmcore.training.finetune` (same split: ``config.val_fraction``
    and ``config.seed``) and the validation Dice it reports.
    """
    from trmcore.data import parse_task
    from trmcore.training import TrainConfig, evaluate_run, finetune

    for score in ranking:  # every kind of trmcore.training.sources fine-tunes; an ONNX model does not
        if score.kind == "onnx":
            raise ValueError(f"--validate needs sources to fine-tune (run folders, nnU-Net 2d folders, MONAI "
                             f"networks); {score.source} is an ONNX model")
    task = parse_task(config.channel, config.labels, config.site)
    train_config = TrainConfig(iterations=iterations, method=method, few_shot=config.shots, seed=config.seed,
                               val_fraction=config.val_fraction, val_every=0)
    dice: List[float] = []
    with tempfile.TemporaryDirectory(prefix="trm-rank-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for k, score in enumerate(ranking):
            run_dir = root / f"validate-{k:02d}-{score.source.name}"
            info = finetune(data, task, score.source, run_dir, train_config, device=config.device,
                            progress=progress, fold=str(config.fold))
            if info.val_dice is not None:
                dice.append(float(info.val_dice))
            else:
                result = evaluate_run(str(run_dir), str(data), site=config.site, cases=info.val_cases,
                                      device=config.device, progress=progress)
                dice.append(float(result.mean))
    tau, p_value = kendall_tau([s.leep for s in ranking], dice)
    return RankValidation(dice, tau, p_value, iterations, method)

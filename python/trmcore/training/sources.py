"""What ``--source`` accepts: a registry of source kinds (``name -> SourceKind``), timm style.

A source is a pre-trained segmenter whose risk maps, LEEP and fine-tuning
``trm riskmap``, ``trm rank`` and ``trm finetune`` compute on a target task.
Each kind says how to recognise its path and how to load it as a
:class:`SourceModel`: a ``torch.nn.Module`` giving logits ``[N, Z, H, W]`` for
a batch of the target's 2-D slices ``[N, C, H, W]``, with the grid, intensity
normalisation, slice axis and padding multiple its inputs need.

| kind | path | grid and normalisation |
|---|---|---|
| ``run`` | a trmcore run folder (``run.json`` + ``model.safetensors``) | as its run.json records |
| ``nnunet`` | an nnU-Net v2 result folder ``.../DatasetXXX/TRAINER__PLANS__CONFIG`` (``--fold``) | RAS, the configuration's spacing, nnU-Net's per-channel scheme; 2d: its slice axis and in-plane axis order (``transpose_forward``); 3d: whole volumes in its axis order (risk maps and LEEP only) |
| ``monai`` | a MONAI bundle folder (``configs/inference.json`` + ``models/model.pt``) or a network JSON (trmcore.models.monai_net) | RAS without resampling, the JSON's ``normalization`` (a trmcore name, or ``none``), its ``divisor`` |

A path no kind recognises, or more than one recognises, is refused with one
line naming it (exit code 2 from ``trm``). A new kind is one
:func:`register_source_kind` call.

nnU-Net's array axes are the stored voxel axes reversed (its NIfTI and
SimpleITK readers both give ``z, y, x``); ``transpose_forward`` permutes them
and a 2d network slices along the first permuted axis with the other two, in
that order, as rows and columns. trmcore slices along one voxel axis with the
two others in increasing order as rows and columns, so where nnU-Net's order
is the other one the network sees each slice transposed back
(:class:`SliceNetwork`), and its logits are transposed to trmcore's order.
Volumes are reoriented to RAS (nnU-Net's NibabelIOWithReorient; a model
trained on scans as stored, SimpleITKIO, sees them flipped to RAS, which
nnU-Net's mirroring augmentation trains it for).

Example::

    source = load_source("nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__2d",
                         SourceOptions(fold=0))
    logits = source.network(torch.from_numpy(slices.images[:8]))   # [8, Z, H, W]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from trmcore.data.geometry import DEFAULT_ORIENTATION, Geometry, native_geometry
from trmcore.data.preprocess import DEFAULT_NORMALIZATION, NORMALIZATIONS
from trmcore.registry import Registry

PathLike = Union[str, Path]
#: The normalisation name of a MONAI network JSON that means "inputs as stored" (no normalisation).
NO_NORMALIZATION = "none"
#: Padding multiple of a MONAI network that names none and whose strides are unknown.
FALLBACK_DIVISOR = 16


@dataclass(frozen=True)
class SourceOptions:
    """How to open a source: ``fold`` of an nnU-Net folder, the torch ``device``, ``resample`` to its grid."""

    fold: str = "0"
    device: Any = "cpu"
    resample: bool = True


@dataclass
class SourceModel:
    """A source segmenter ready for the target's slices.

    Attributes:
        kind: the registry name (``run``, ``nnunet``, ``monai``); path: what was given.
        network: eval mode on the device: float32 ``[N, C, H, W]`` -> logits ``[N, Z, H, W]``.
        in_channels: C (None when the source does not say); channels: their names, network order.
        num_classes: Z, background included (None when unknown before a forward pass).
        axis: the slice axis of the working grid; divisor: H and W are padded to a multiple of it.
        geometry: the grid target volumes are loaded on (:func:`trmcore.data.load_task_volumes`).
        normalization: a name of ``trmcore.data.preprocess.NORMALIZATIONS`` or a callable over a
            case's image ``[C, X, Y, Z]`` (the source's own scheme).
        files: the files the source was read from (outputs must never land on them); the last holds
            the weights.
        record: how a run fine-tuned from this source rebuilds its network (run.json ``network``,
            trmcore.models.foreign); None for a trmcore run.
        spatial_dims: 2, or 3 for a 3-D source (nnU-Net 3d configurations): then ``network`` takes
            whole volumes ``[N, C, X, Y, Z]`` on the working grid and gives ``[N, Z, X, Y, Z']``
            (:class:`VolumeNetwork`), ``divisors`` the size multiple per voxel axis; risk maps and
            LEEP only (trmcore.training.riskmap3d), no fine-tuning.
        run_info: the RunInfo of a ``run`` source; native: the loader's own object
            (:class:`~trmcore.models.nnunet.NnunetModel`, :class:`~trmcore.models.monai_net.MonaiNetwork`).
    """

    kind: str
    path: Path
    network: nn.Module
    in_channels: Optional[int]
    channels: Optional[List[str]]
    num_classes: Optional[int]
    axis: int
    divisor: int
    geometry: Geometry
    normalization: Union[str, Callable[[np.ndarray], np.ndarray]]
    files: List[Path] = field(default_factory=list)
    run_info: Any = None
    native: Any = None
    record: Optional[dict] = None
    spatial_dims: int = 2
    divisors: Optional[Tuple[int, int, int]] = None

    @property
    def weights_file(self) -> Path:
        return self.files[-1]

    def check_channels(self, target_channels: List[str]) -> None:
        """ValueError naming the source when it takes another number of channels than the target gives."""
        if self.in_channels is not None and self.in_channels != len(target_channels):
            named = f" {self.channels}" if self.channels else ""
            raise ValueError(f"source {self.path} takes {self.in_channels} channel(s){named}; the target task has "
                             f"{len(target_channels)} {list(target_channels)}")


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: ``recognise(path) -> bool`` (cheap, no weights read) and ``load(path, options)``."""

    name: str
    summary: str
    recognise: Callable[[Path], bool]
    load: Callable[[Path, SourceOptions], SourceModel]


SOURCE_KINDS: Registry[SourceKind] = Registry("source kind")


def register_source_kind(kind: SourceKind) -> SourceKind:
    return SOURCE_KINDS.add(kind.name, kind)


class SliceNetwork(nn.Module):
    """A foreign network on trmcore's slices: ``[N, C, H, W]`` -> logits ``[N, Z, H, W]``.

    ``swap``: the network reads rows and columns the other way round (nnU-Net's in-plane order),
    so the input is transposed on the way in and the logits on the way out. A deep-supervision
    list gives its first (full-resolution) output.
    """

    def __init__(self, network: nn.Module, swap: bool = False) -> None:
        super().__init__()
        self.network = network
        self.swap = bool(swap)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        from trmcore.training.loss import model_logits

        if self.swap:
            images = images.transpose(-1, -2)
        logits = model_logits(self.network(images))
        return logits.transpose(-1, -2).contiguous() if self.swap else logits


class VolumeNetwork(nn.Module):
    """A 3-D network on trmcore's volumes: ``[N, C, X, Y, Z]`` -> logits ``[N, K, X, Y, Z]``.

    ``order``: the voxel axis of each of the network's spatial axes (nnU-Net: the reversed
    voxel axes, permuted by ``transpose_forward``); the input is permuted to it and the logits back.
    """

    def __init__(self, network: nn.Module, order: Tuple[int, int, int]) -> None:
        super().__init__()
        self.network = network
        self.order = tuple(int(a) for a in order)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        from trmcore.training.loss import model_logits

        forward = (0, 1) + tuple(2 + a for a in self.order)
        logits = model_logits(self.network(volumes.permute(*forward)))
        back = (0, 1) + tuple(2 + self.order.index(a) for a in range(3))
        return logits.permute(*back).contiguous()


@dataclass(frozen=True)
class ChannelwiseNormalization:
    """A source's per-channel normalisation over a case's image ``[C, X, Y, Z]`` (hashable, for caches).

    ``schemes``: one object per channel with ``apply(channel, mask) -> float32`` (nnU-Net's
    :class:`~trmcore.models.nnunet.ChannelNormalization`); the mask is where any channel is
    nonzero, as nnU-Net's crop-to-nonzero mask. ``name`` is what TaskInfo records.
    """

    name: str
    schemes: Tuple[Any, ...]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.shape[0] != len(self.schemes):
            raise ValueError(f"{self.name}: the source normalises {len(self.schemes)} channel(s), the task gives "
                             f"{image.shape[0]}")
        mask = (image != 0).any(axis=0)
        return np.stack([scheme.apply(channel, mask) for scheme, channel in zip(self.schemes, image)])


@dataclass(frozen=True)
class _AsStored:
    """Intensities as stored, as float32 (a MONAI network JSON's ``"normalization": "none"``)."""

    name: str = NO_NORMALIZATION

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return np.asarray(image, np.float32)


def _device(options: SourceOptions) -> torch.device:
    return options.device if isinstance(options.device, torch.device) else torch.device(options.device)


# ---------------------------------------------------------------------------------------------------- run
def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / "run.json").is_file()


def _load_run(path: Path, options: SourceOptions) -> SourceModel:
    from trmcore.training.checkpoint import load_run
    from trmcore.training.runinfo import RUN_INFO_FILE, WEIGHTS_FILE

    model, info = load_run(path, device=_device(options))
    # A run fine-tuned from a foreign network fine-tunes on as that network (its run.json record).
    return SourceModel("run", path, model, info.model.in_channels, list(info.channels), info.num_classes,
                       info.axis, info.divisor, info.geometry(f"source run {path}", options.resample),
                       info.normalization, [path / RUN_INFO_FILE, path / WEIGHTS_FILE], run_info=info,
                       record=info.network)


# ------------------------------------------------------------------------------------------------- nnunet
def _is_nnunet(path: Path) -> bool:
    from trmcore.models.nnunet import is_nnunet_folder

    return is_nnunet_folder(path)


def nnunet_slicing(transpose_forward: Tuple[int, ...]) -> Tuple[int, Tuple[int, int], bool]:
    """(slice axis, in-plane voxel axes in nnU-Net's row/column order, swap) of a 2d configuration.

    nnU-Net's array axis ``i`` is voxel axis ``2 - i``; a 2d network slices along permuted axis 0.
    ``swap``: nnU-Net's rows are trmcore's columns (trmcore puts the lower voxel axis first).

    >>> nnunet_slicing((0, 1, 2))   # nnU-Net (z, y, x): slices along voxel z, rows y, columns x
    (2, (1, 0), True)
    >>> nnunet_slicing((2, 0, 1))
    (0, (2, 1), True)
    >>> nnunet_slicing((1, 2, 0))
    (1, (0, 2), False)
    """
    voxel = [2 - int(a) for a in transpose_forward]
    return voxel[0], (voxel[1], voxel[2]), voxel[1] > voxel[2]


def _load_nnunet(path: Path, options: SourceOptions) -> SourceModel:
    from trmcore.models.nnunet import load_nnunet_model

    from trmcore.models.nnunet import _configuration, _read_json

    model = load_nnunet_model(path, fold=options.fold, device=_device(options))
    configuration = _configuration(_read_json(path / "plans.json"), model.configuration, path / "plans.json")
    schemes = "+".join(norm.scheme.replace("Normalization", "") for norm in model.normalization)
    normalization = ChannelwiseNormalization(f"nnunet:{schemes}", tuple(model.normalization))
    files = [path / "plans.json", path / "dataset.json", model.checkpoint]
    if model.spatial_dims == 3:
        return _nnunet_3d(path, model, normalization, files, options)
    axis, (rows, columns), swap = nnunet_slicing(model.transpose_forward)
    spacing = [1.0, 1.0, 1.0]
    try:  # the slice axis is never resampled; its recorded value is the plans' median, for the record only
        median = json.loads((path / "plans.json").read_text()).get("original_median_spacing_after_transp")
        spacing[axis] = float(median[0])
    except (OSError, ValueError, TypeError, IndexError, KeyError, AttributeError):
        pass
    spacing[rows], spacing[columns] = float(model.spacing[0]), float(model.spacing[1])
    geometry = Geometry(DEFAULT_ORIENTATION, tuple(spacing), axis) if options.resample else native_geometry(axis)
    return SourceModel("nnunet", path, SliceNetwork(model.network, swap).eval(), len(model.channels),
                       list(model.channels), model.num_source_classes, axis, math.lcm(*model.divisor), geometry,
                       normalization, files, native=model,
                       record={"kind": "nnunet", "architecture": configuration["architecture"], "swap": swap})


def _nnunet_3d(path: Path, model: Any, normalization: Any, files: List[Path], options: SourceOptions) -> SourceModel:
    """A 3d configuration: whole volumes on the configuration's spacing in every axis (risk maps and LEEP).

    trmcore's working grid is never resampled along its slice axis; the axis nnU-Net resamples least
    (its first permuted axis, the coarsest) takes that role, and :func:`check_volume_spacing` refuses
    target cases whose spacing differs there.
    """
    order = tuple(2 - int(a) for a in model.transpose_forward)  # network axis j -> voxel axis
    spacing, divisors = [1.0] * 3, [1] * 3
    for j, voxel in enumerate(order):
        spacing[voxel], divisors[voxel] = float(model.spacing[j]), int(model.divisor[j])
    axis = order[0]
    geometry = Geometry(DEFAULT_ORIENTATION, tuple(spacing), axis) if options.resample else native_geometry(axis)
    return SourceModel("nnunet", path, VolumeNetwork(model.network, order).eval(), len(model.channels),
                       list(model.channels), model.num_source_classes, axis, max(divisors), geometry,
                       normalization, files, native=model, spatial_dims=3, divisors=tuple(divisors))


def check_volume_spacing(source: SourceModel, volumes: Any) -> None:
    """For a 3-D source: ValueError naming the first case whose spacing along the slice axis (never resampled)
    differs from the source's by more than the geometry's tolerance."""
    from trmcore.data.geometry import voxel_spacing

    geometry = source.geometry
    if source.spatial_dims != 3 or geometry.native or geometry.spacing is None:
        return
    axis, wanted = geometry.axis, geometry.spacing[geometry.axis]
    for volume in volumes:
        have = voxel_spacing(volume.affine)[axis]
        if abs(have - wanted) > geometry.tolerance * wanted:
            raise ValueError(f"case {volume.case_id}: {have:g} mm along voxel axis {axis}, the 3-D source "
                             f"{source.path} works at {wanted:g} mm there and trmcore resamples only the two other "
                             "axes; resample the target first, or use --no-resample to take volumes as stored")


# -------------------------------------------------------------------------------------------------- monai
def _is_monai(path: Path) -> bool:
    if path.is_dir():
        return (path / "configs" / "inference.json").is_file()
    return path.is_file() and path.suffix.lower() == ".json"


def _strides_divisor(kwargs: dict) -> Optional[int]:
    """The product of a MONAI UNet's ``strides`` (per axis, the largest), or None."""
    strides = kwargs.get("strides")
    if not isinstance(strides, (list, tuple)) or not strides:
        return None
    divisor = 1
    for stride in strides:
        values = stride if isinstance(stride, (list, tuple)) else [stride]
        if not values or not all(isinstance(v, int) and v >= 1 for v in values):
            return None
        divisor *= max(values)
    return divisor


def _load_monai(path: Path, options: SourceOptions) -> SourceModel:
    from trmcore.models.monai_net import load_monai_network

    loaded = load_monai_network(path)
    kwargs = loaded.kwargs
    dims = kwargs.get("spatial_dims", kwargs.get("dimensions", 2))
    if dims != 2:
        raise ValueError(f"MONAI source {path} is a {dims}-D network (spatial_dims); trm riskmap, rank and finetune "
                         "take 2-D networks. For 3-D risk maps and LEEP use trmcore.training.loss.source_risk_maps "
                         "(docs/api.md)")
    name = loaded.normalization
    if name is None:
        normalization: Any = DEFAULT_NORMALIZATION
    elif name == NO_NORMALIZATION:
        normalization = _AsStored()
    elif name in NORMALIZATIONS:
        normalization = name
    else:
        raise ValueError(f"{path}: normalization {name!r} is not one of {', '.join(NORMALIZATIONS)}, "
                         f"{NO_NORMALIZATION}")
    divisor = loaded.divisor or _strides_divisor(kwargs) or FALLBACK_DIVISOR
    in_channels = kwargs.get("in_channels")
    out_channels = kwargs.get("out_channels")
    if loaded.channels is not None and isinstance(in_channels, int) and len(loaded.channels) != in_channels:
        raise ValueError(f"{path}: {len(loaded.channels)} channel names for a network with in_channels "
                         f"{in_channels}")
    axis = 2
    geometry = Geometry(DEFAULT_ORIENTATION, None, axis) if options.resample else native_geometry(axis)
    if path.is_dir():
        files = [path / "configs" / "inference.json", path / "models" / "model.pt"]
    else:
        weights = json.loads(path.read_text()).get("weights")
        files = [path] + ([path.parent / weights] if isinstance(weights, str) else [])
    network = SliceNetwork(loaded.network).to(_device(options)).eval()
    return SourceModel("monai", path, network, in_channels if isinstance(in_channels, int) else None,
                       loaded.channels, out_channels if isinstance(out_channels, int) else None, axis, divisor,
                       geometry, normalization, files, native=loaded,
                       record={"kind": "monai", "network": loaded.network_name, "kwargs": kwargs})


register_source_kind(SourceKind("run", "a trmcore run folder (run.json, model.safetensors)", _is_run, _load_run))
register_source_kind(SourceKind("nnunet", "an nnU-Net v2 result folder .../TRAINER__PLANS__2d (with --fold)",
                                _is_nnunet, _load_nnunet))
register_source_kind(SourceKind("monai", "a MONAI bundle folder (configs/inference.json, models/model.pt) or "
                                "network JSON", _is_monai, _load_monai))


def source_kind(path: PathLike) -> str:
    """The kind of source ``path`` is.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: one line naming ``path`` when no kind, or more than one, recognises it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"source {path} not found")
    kinds = [kind.name for kind in SOURCE_KINDS.values() if kind.recognise(path)]
    if len(kinds) > 1:
        raise ValueError(f"source {path} looks like more than one kind of source ({', '.join(kinds)}); "
                         "give a folder of one kind")
    if not kinds:
        raise ValueError(f"source {path} is none of the source kinds: "
                         + "; ".join(f"{kind.name}: {kind.summary}" for kind in SOURCE_KINDS.values()))
    return kinds[0]


def load_source(path: PathLike, options: SourceOptions = SourceOptions()) -> SourceModel:
    """Open ``path`` as the kind it is (:func:`source_kind`) with ``options``."""
    path = Path(path)
    return SOURCE_KINDS[source_kind(path)].load(path, options)


def load_source_task(source: PathLike, data_root: PathLike, channel: Optional[str] = None,
                     labels: Optional[str] = None, site: Optional[str] = None, *, cases=None,
                     device: Optional[str] = None, progress: bool = True, sites=None, resample: bool = True,
                     fold: str = "0"):
    """A source of any kind and a task's volumes on its grid and normalisation.

    Channels and labels default to a run's own (a foreign source: its channel names; the
    labels must be given). Returns ``(source: SourceModel, volumes, task_info, device)``.
    """
    from trmcore.data import load_task_volumes, parse_task
    from trmcore.training.distributed import resolve_device

    resolved = resolve_device(device)
    model = load_source(source, SourceOptions(fold=str(fold), device=resolved, resample=resample))
    if channel is None and not model.channels:
        raise ValueError(f"source {source} does not name its input channels: give --channel")
    if labels is None:
        if model.run_info is None:
            raise ValueError(f"source {source} is a {model.kind} source: give the target's --labels")
        labels = model.run_info.label_names[1:]
    task = parse_task(channel or model.channels, labels, site)
    model.check_channels(task.channels)
    volumes, task_info = load_task_volumes(data_root, task, cases=cases, progress=progress, sites=sites,
                                           geometry=model.geometry, normalization=model.normalization)
    check_volume_spacing(model, volumes)
    return model, volumes, task_info, resolved


# The trmcore normalisation nearest to nnU-Net's per-channel z-score ("use_mask_for_norm": over the
# nonzero voxels, else over the whole volume: trmcore's foreground); other schemes have none.
_NNUNET_NEAREST = {("ZScoreNormalization", True): "zscore-nonzero", ("ZScoreNormalization", False): "zscore-foreground"}


def finetune_normalization(source: SourceModel) -> str:
    """The trmcore normalisation a run fine-tuned from ``source`` trains and serves with.

    A fine-tuned run is served by ``trm predict``, which applies the normalisations of
    ``trmcore.data.preprocess.NORMALIZATIONS``: an nnU-Net source's z-score maps to the nearest
    (``zscore-nonzero`` with ``use_mask_for_norm``, else ``zscore-foreground``); its CT, rescale or
    no normalisation, and a MONAI network's ``none``, have no trmcore counterpart and are refused.
    """
    if isinstance(source.normalization, str):
        return source.normalization
    schemes = getattr(source.normalization, "schemes", None)
    if schemes:
        names = {_NNUNET_NEAREST.get((norm.scheme, bool(norm.use_mask))) for norm in schemes}
        if len(names) == 1 and None not in names:
            return names.pop()
        used = ", ".join(f"{norm.scheme}{' (mask)' if norm.use_mask else ''}" for norm in schemes)
        raise ValueError(f"source {source.path} normalises its channels with {used}; a fine-tuned run is served "
                         f"with one of {', '.join(NORMALIZATIONS)} for every channel (an nnU-Net z-score), so "
                         "this source can give risk maps and LEEP but not be fine-tuned")
    raise ValueError(f"source {source.path} takes intensities as stored (normalization none); fine-tuned runs are "
                     f"served with one of {', '.join(NORMALIZATIONS)}: name one in its network JSON")


def target_network(source: SourceModel, in_channels: int, num_classes: int, reset_head: Optional[bool],
                   seed: int) -> nn.Module:
    """The network to fine-tune from a foreign source: its weights, a new head for ``num_classes``.

    Built from ``source.record`` (trmcore.models.foreign.ForeignNet, seeded with ``seed``); every
    source weight whose name and shape fit is copied. The head (nnU-Net: every
    ``decoder.seg_layers`` convolution; MONAI: the layers whose shape depends on the classes) is
    fresh when the class counts differ or ``reset_head`` is True.
    """
    from trmcore.models.foreign import ForeignNet, stand_in_config

    if source.record is None:
        raise ValueError(f"source {source.path} is trmcore's U-Net, not a foreign network")
    if source.spatial_dims != 2:
        raise ValueError(f"source {source.path} is a 3-D network: trm finetune trains on 2-D slices (use the 2d "
                         "configuration); its risk maps and LEEP come from trm riskmap and trm rank")
    reset = bool(reset_head) or (reset_head is None and num_classes != source.num_classes)
    config = stand_in_config(in_channels, num_classes, source.divisor)
    torch.manual_seed(seed)
    target = ForeignNet.from_record(source.record, config, source.path)
    own = target.network.state_dict()
    bare = getattr(source.network, "network", source.network)  # inside SliceNetwork or a run's ForeignNet
    nnunet = source.record.get("kind") == "nnunet"
    head = (lambda key: key.startswith("decoder.seg_layers.")) if nnunet else (lambda key: False)
    keep = {key: value for key, value in bare.state_dict().items()
            if key in own and own[key].shape == value.shape and not (reset and head(key))}
    if reset and not nnunet and len(keep) == len(own):
        raise ValueError(f"source {source.path}: the head of a {source.kind} network is new only when the target has "
                         "another number of classes; leave out --reset-head")
    target.network.load_state_dict(keep, strict=False)
    return target.to(next(iter(bare.parameters())).device)

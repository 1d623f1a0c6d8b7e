"""nnU-Net v2 trained models as source segmenters, loaded without running pickled code.

An nnU-Net v2 result folder (``.../DatasetXXX_Name/nnUNetTrainer__nnUNetPlans__2d``)
holds ``plans.json``, ``dataset.json`` and ``fold_K/checkpoint_final.pth``.
nnU-Net itself reads the checkpoint with ``torch.load(weights_only=False)``,
which runs whatever the pickle says. Here:

- the checkpoint is read with ``torch.load(weights_only=True)`` plus an
  allow-list of the plain types an nnU-Net checkpoint holds besides tensors
  (NumPy scalars in its training log, a ``torch.device`` in its init args);
  anything else is refused with one line naming the file and the type, and
  nothing of the pickle runs;
- the network is built from ``plans.json`` with dynamic_network_architectures,
  as nnU-Net does, but the class must live in
  ``dynamic_network_architectures.architectures`` and the ops it names
  (``conv_op``, ``norm_op``, ...) in ``torch.nn``: a plans file cannot make us
  import or call anything else;
- nnU-Net's intensity normalisation (per-channel z-score, over the nonzero
  region when ``use_mask_for_norm``; the CT scheme with the dataset's
  percentiles, mean and std; none; rescale to [0, 1]) is
  :meth:`NnunetModel.normalize`; its target spacing, ``transpose_forward`` and the
  size multiple the network needs are attributes, for the caller's resampling.

Plans written by nnU-Net >= 2.4 (the ``architecture`` entry of a configuration)
are supported; older plans are refused with a message. 2-D configurations give
logits ``[N, Z, H, W]``, 3-D ones ``[N, Z, D, H, W]``; both go to
:mod:`trmcore.ops` and :func:`trmcore.training.loss.source_risk_maps` as they are.

Example::

    model = load_nnunet_model("nnUNet_results/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__2d", fold=0)
    image = model.normalize(volume)                 # [C, *spatial] float32, nnU-Net's scheme per channel
    logits = model.network(torch.from_numpy(image[None, :, k]))  # a slice: [1, Z, H, W]
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, Path]

CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
# Where a plans file may point the network class and the ops it builds with.
NETWORK_MODULE_PREFIX = "dynamic_network_architectures.architectures."
OP_MODULE_PREFIX = "torch.nn."
# nnU-Net's normalisation schemes (nnunetv2.preprocessing.normalization) that normalize() implements.
NORMALIZATION_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization")
_EPS = 1e-8


def _checkpoint_safe_globals() -> List[Any]:
    """The types besides tensors that nnUNetTrainer.save_checkpoint pickles: NumPy scalars and their dtypes."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 / 1
    allowed: List[Any] = [core.scalar, (core.scalar, "numpy.core.multiarray.scalar"), np.dtype]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles a dtype through its class
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType",
                                                        "Int32DType", "BoolDType") if hasattr(dtypes, name)]
    return allowed


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """An nnU-Net checkpoint as a dict, read with ``weights_only=True`` and the plain-type allow-list.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming ``path``: a pickled object outside the allow-list (it is
            not created: the unpickler stops before), not a torch checkpoint, or no network weights.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nnU-Net checkpoint {path} not found")
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError, RuntimeError (not a zip/pickle), EOFError...
        message = str(err)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(r"global ([\w.]+)", message)
        if found:
            raise ValueError(f"nnU-Net checkpoint {path} holds a pickled {found.group(1)}, which trmcore does not "
                             "load (it could run code); only tensors and plain types are read") from None
        first = message.strip().splitlines()[0] if message.strip() else type(err).__name__
        raise ValueError(f"nnU-Net checkpoint {path} cannot be read as a torch checkpoint: {first}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise ValueError(f"nnU-Net checkpoint {path} has no 'network_weights' (not an nnU-Net v2 checkpoint)")
    return checkpoint


def _locate(name: Any, prefix: str, what: str, source: Path) -> Any:
    """The class ``name`` (a dotted path under ``prefix``) without importing anything outside it."""
    if not isinstance(name, str) or not name.startswith(prefix) or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
        raise ValueError(f"{source}: {what} {name!r} is not under {prefix.rstrip('.')}; trmcore builds nnU-Net "
                         "networks only from dynamic_network_architectures and torch.nn")
    module_name, _, attribute = name.rpartition(".")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except ImportError as err:
        if module_name.startswith("dynamic_network_architectures"):
            raise ValueError(f"{source}: building nnU-Net networks needs dynamic_network_architectures "
                             "(pip install trmcore[nnunet])") from None
        raise ValueError(f"{source}: cannot import {name}: {err}") from None
    except AttributeError:
        raise ValueError(f"{source}: {what} {name} does not exist") from None
    if not isinstance(value, type):
        raise ValueError(f"{source}: {what} {name} is not a class")
    return value


@dataclass(frozen=True)
class ChannelNormalization:
    """nnU-Net's normalisation of one input channel (plans: ``normalization_schemes``, ``use_mask_for_norm``,
    ``foreground_intensity_properties_per_channel``)."""

    scheme: str
    use_mask: bool = False
    mean: Optional[float] = None
    std: Optional[float] = None
    lower: Optional[float] = None  # percentile_00_5
    upper: Optional[float] = None  # percentile_99_5

    def apply(self, image: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
        """float32 copy of one channel normalised as nnU-Net's scheme of the same name."""
        image = np.array(image, dtype=np.float32)
        if self.scheme == "ZScoreNormalization":
            if self.use_mask and mask is not None:
                values = image[mask]
                if values.size:
                    image[mask] = (values - values.mean()) / max(float(values.std()), _EPS)
                return image
            return (image - image.mean()) / max(float(image.std()), _EPS)
        if self.scheme == "CTNormalization":
            np.clip(image, self.lower, self.upper, out=image)
            return (image - self.mean) / max(float(self.std), _EPS)
        if self.scheme == "RescaleTo01Normalization":
            image -= image.min()
            return image / max(float(image.max()), _EPS)
        return image  # NoNormalization


@dataclass
class NnunetModel:
    """An nnU-Net v2 network with what its inputs need.

    Attributes:
        network: the ``torch.nn.Module`` (eval mode, deep supervision off): ``[N, C, *patch]`` ->
            logits ``[N, Z, *patch]``, Z = ``len(labels)`` (background included).
        configuration: "2d", "3d_fullres", ...; ``spatial_dims`` 2 or 3.
        channels: dataset.json ``channel_names`` in network order; labels: name -> value.
        normalization: one :class:`ChannelNormalization` per channel.
        spacing: target spacing of the configuration, on the transposed axes.
        transpose_forward: axis order nnU-Net applies to a volume before the network.
        divisor: per spatial axis, the size multiple the network needs (product of its strides).
        patch_size: the configuration's patch size.
    """

    network: Any
    folder: Path
    fold: str
    configuration: str
    channels: List[str]
    labels: Dict[str, int]
    normalization: List[ChannelNormalization]
    spacing: Tuple[float, ...]
    transpose_forward: Tuple[int, ...]
    divisor: Tuple[int, ...]
    patch_size: Tuple[int, ...]
    checkpoint: Path = field(default=Path())

    @property
    def spatial_dims(self) -> int:
        return len(self.patch_size)

    @property
    def num_source_classes(self) -> int:
        return len(self.labels)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """nnU-Net's normalisation of ``image`` float ``[C, *spatial]`` (C = ``len(channels)``): float32.

        The nonzero mask of ``use_mask_for_norm`` is where any channel is nonzero (nnU-Net's
        crop-to-nonzero mask, without its hole filling).
        """
        image = np.asarray(image)
        if image.ndim < 2 or image.shape[0] != len(self.channels):
            raise ValueError(f"image has shape {image.shape}; expected [{len(self.channels)}, *spatial] "
                             f"(channels {', '.join(self.channels)})")
        mask = (image != 0).any(axis=0)
        return np.stack([norm.apply(channel, mask) for norm, channel in zip(self.normalization, image)])


def _read_json(path: Path) -> Dict[str, Any]:
    """A JSON object through the one bounded reader (trmcore.schema: size, depth, duplicate keys, NaN)."""
    from trmcore.schema import AnyJson, Map, read_json

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (an nnU-Net v2 result folder holds plans.json and dataset.json)")
    return read_json(path, Map(AnyJson(), expected="a JSON object"))


def _configuration(plans: Dict[str, Any], name: str, source: Path) -> Dict[str, Any]:
    """The configuration ``name`` with nnU-Net's ``inherits_from`` resolved."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        raise ValueError(f"{source}: plans.json has no configuration {name!r}")
    config = dict(configurations[name])
    seen = {name}
    while "inherits_from" in config:
        parent = config.pop("inherits_from")
        if parent in seen or parent not in configurations:
            raise ValueError(f"{source}: configuration {name!r} inherits from unknown or circular {parent!r}")
        seen.add(parent)
        config = {**configurations[parent], **config}
    return config


def _configuration_name(folder: Path, plans: Dict[str, Any]) -> str:
    """The configuration of a result folder: the part of ``Trainer__Plans__CONFIG`` after the plans name."""
    parts = folder.resolve().name.split("__")
    if len(parts) == 3 and parts[2] in plans.get("configurations", {}):
        return parts[2]
    raise ValueError(f"{folder}: not an nnU-Net v2 result folder name (TRAINER__PLANS__CONFIGURATION with a "
                     "configuration of its plans.json)")


def build_network(plans: Dict[str, Any], configuration: Dict[str, Any], in_channels: int, num_classes: int,
                  source: Path) -> Any:
    """The configuration's network from dynamic_network_architectures, deep supervision off."""
    architecture = configuration.get("architecture")
    if not isinstance(architecture, dict):
        raise ValueError(f"{source}: plans.json has no 'architecture' entry in its configuration (plans of "
                         "nnU-Net >= 2.4 are supported; re-plan with a current nnU-Net)")
    network_class = _locate(architecture.get("network_class_name"), NETWORK_MODULE_PREFIX, "network class", source)
    kwargs = dict(architecture.get("arch_kwargs") or {})
    for key in architecture.get("_kw_requires_import") or ():
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key], OP_MODULE_PREFIX, f"arch_kwargs[{key!r}]", source)
    try:
        network = network_class(input_channels=in_channels, num_classes=num_classes, deep_supervision=False, **kwargs)
    except TypeError as err:
        raise ValueError(f"{source}: plans.json arch_kwargs do not fit {network_class.__name__}: {err}") from None
    return network


def _divisor(configuration: Dict[str, Any], dims: int) -> Tuple[int, ...]:
    strides = (configuration.get("architecture") or {}).get("arch_kwargs", {}).get("strides") or []
    divisor = [1] * dims
    for stride in strides:
        stride = [stride] * dims if isinstance(stride, int) else list(stride)
        divisor = [d * int(s) for d, s in zip(divisor, stride)]
    return tuple(divisor)


def _normalizations(plans: Dict[str, Any], configuration: Dict[str, Any], channels: int,
                    source: Path) -> List[ChannelNormalization]:
    schemes = configuration.get("normalization_schemes") or []
    masks = configuration.get("use_mask_for_norm") or [False] * channels
    properties = plans.get("foreground_intensity_properties_per_channel") or {}
    if len(schemes) != channels:
        raise ValueError(f"{source}: plans.json has {len(schemes)} normalization_schemes for {channels} channels")
    out = []
    for index, (scheme, use_mask) in enumerate(zip(schemes, masks)):
        if scheme not in NORMALIZATION_SCHEMES:
            raise ValueError(f"{source}: normalisation {scheme!r} of channel {index} is not supported "
                             f"(known: {', '.join(NORMALIZATION_SCHEMES)})")
        stats = properties.get(str(index)) or {}
        if scheme == "CTNormalization" and not all(k in stats for k in ("mean", "std", "percentile_00_5",
                                                                          "percentile_99_5")):
            raise ValueError(f"{source}: CTNormalization of channel {index} needs "
                             "foreground_intensity_properties_per_channel (mean, std, percentiles) in plans.json")
        out.append(ChannelNormalization(scheme, bool(use_mask), stats.get("mean"), stats.get("std"),
                                        stats.get("percentile_00_5"), stats.get("percentile_99_5")))
    return out


def find_checkpoint(folder: Path, fold: Union[int, str]) -> Path:
    fold_dir = folder / f"fold_{fold}"
    for name in CHECKPOINT_NAMES:
        if (fold_dir / name).is_file():
            return fold_dir / name
    folds = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
    raise FileNotFoundError(f"{fold_dir} holds no {' or '.join(CHECKPOINT_NAMES)} (folds here: "
                            f"{', '.join(folds) or 'none'}; choose one with --fold)")


def is_nnunet_folder(path: PathLike) -> bool:
    """Whether ``path`` looks like an nnU-Net v2 result folder (plans.json, dataset.json, fold_*)."""
    path = Path(path)
    return path.is_dir() and (path / "plans.json").is_file() and (path / "dataset.json").is_file() \
        and any(p.is_dir() for p in path.glob("fold_*"))


def load_nnunet_model(folder: PathLike, fold: Union[int, str] = 0, device: Any = "cpu",
                      checkpoint: Optional[PathLike] = None) -> NnunetModel:
    """Load an nnU-Net v2 result folder's network for one fold (see the module docstring).

    Args:
        folder: ``.../DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``.
        fold: the fold folder ``fold_K`` (or ``"all"``).
        checkpoint: a checkpoint file instead of ``fold_K/checkpoint_final.pth`` (or ``_best``).

    Raises:
        FileNotFoundError: a missing plans.json, dataset.json or checkpoint.
        ValueError: one line naming the file: a refused pickle, unsupported plans, weights
            that do not fit the network.
    """
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nnU-Net result folder {folder} not found")
    plans = _read_json(folder / "plans.json")
    dataset = _read_json(folder / "dataset.json")
    name = _configuration_name(folder, plans)
    configuration = _configuration(plans, name, folder / "plans.json")
    channel_names = dataset.get("channel_names") or dataset.get("modality")
    labels = dataset.get("labels")
    if not isinstance(channel_names, dict) or not isinstance(labels, dict) or not labels:
        raise ValueError(f"{folder / 'dataset.json'}: needs 'channel_names' and 'labels'")
    if "regions_class_order" in dataset:
        raise ValueError(f"{folder / 'dataset.json'}: region-based nnU-Net models (sigmoid outputs) are not "
                         "supported as sources; LEEP needs softmax over classes")
    # nnU-Net's "ignore" label is not an output of the network (LabelManager.num_segmentation_heads).
    labels = {str(k): v for k, v in labels.items() if k != "ignore"}
    if not all(isinstance(v, int) for v in labels.values()):
        raise ValueError(f"{folder / 'dataset.json'}: labels must map names to integers (regions are not supported)")
    channels = [str(channel_names[k]) for k in sorted(channel_names, key=lambda k: int(k))]
    network = build_network(plans, configuration, len(channels), len(labels), folder / "plans.json")
    path = Path(checkpoint) if checkpoint is not None else find_checkpoint(folder, fold)
    state = read_checkpoint(path)["network_weights"]
    # nnU-Net saves torch.compile'd networks with an _orig_mod. prefix on every key.
    state = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in state.items()}
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"nnU-Net checkpoint {path} does not fit the network of {folder / 'plans.json'}: "
                         f"{first}") from None
    network.to(torch.device(device) if not isinstance(device, torch.device) else device).eval()
    patch_size = tuple(int(s) for s in configuration.get("patch_size", ()))
    dims = len(patch_size)
    transpose = tuple(int(a) for a in plans.get("transpose_forward", range(3)))
    return NnunetModel(network, folder, str(fold), name, channels, labels,
                       _normalizations(plans, configuration, len(channels), folder / "plans.json"),
                       tuple(float(s) for s in configuration.get("spacing", ())), transpose,
                       _divisor(configuration, dims), patch_size, path)


def replace_head(network: Any, num_classes: int) -> Any:
    """Give a dynamic_network_architectures U-Net new segmentation layers for ``num_classes`` (SPEC 5).

    Every ``decoder.seg_layers`` entry (one per decoder stage; the last is the full-resolution
    head) becomes a freshly initialised 1x1 convolution of the same kind. Returns ``network``.
    """
    from torch import nn

    decoder = getattr(network, "decoder", None)
    layers = getattr(decoder, "seg_layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(isinstance(layer, nn.modules.conv._ConvNd)
                                                         for layer in layers):
        raise ValueError(f"{type(network).__name__} has no decoder.seg_layers of convolutions to replace")
    decoder.seg_layers = nn.ModuleList(
        type(layer)(layer.in_channels, int(num_classes), 1, 1, 0, bias=True).to(layer.weight.device)
        for layer in layers)
    if hasattr(decoder, "num_classes"):
        decoder.num_classes = int(num_classes)
    return network


def freeze_encoder(network: Any) -> Any:
    """Freeze ``network.encoder`` (SPEC 5: contracting path frozen; its norm layers kept in eval mode).

    Call :func:`encoder_eval` after every ``network.train()``, as the trainer does for trmcore's U-Net.
    """
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise ValueError(f"{type(network).__name__} has no encoder to freeze")
    encoder.requires_grad_(False)
    return encoder_eval(network)


def encoder_eval(network: Any) -> Any:
    """Put the encoder of ``network`` in eval mode (frozen norm statistics); returns ``network``."""
    network.encoder.eval()
    return network

"""MONAI networks as sources: a bundle folder or a small JSON, built without evaluating code.

Two ways to name a MONAI network and its weights:

- a MONAI bundle folder: ``configs/inference.json`` (JSON; a YAML config is not read)
  whose ``network_def`` is ``{"_target_": "UNet" or "monai.networks.nets.UNet", ...}``
  with literal arguments, and the weights in ``models/model.pt`` (a state dict);
- a JSON file ``{"network": "monai.networks.nets:UNet", "kwargs": {...},
  "weights": "model.pt" (or .safetensors), "channels": ["T1"], "normalization":
  "zscore-nonzero", "divisor": 16}``, paths relative to the JSON.

MONAI's own ConfigParser evaluates ``$`` expressions and instantiates any
``_target_``; here the target must be a class of ``monai.networks.nets`` (or, for
the JSON form, of ``monai.networks``), arguments must be literals (a ``$``
expression or ``@`` reference is refused with one line), and the weights are
read with ``torch.load(weights_only=True)`` or safetensors, so no file in the
folder can run code.

Example::

    source = load_monai_network("bundles/spleen_ct_segmentation")
    risk = source_risk_maps(source.network, loader, num_classes=2)
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

PathLike = Union[str, Path]

NETS_MODULE = "monai.networks.nets"
ALLOWED_PREFIX = "monai.networks."


@dataclass
class MonaiNetwork:
    """A MONAI network with its input conventions (from the JSON; None where a bundle does not say)."""

    network: Any
    source: Path
    channels: Optional[List[str]] = None
    normalization: Optional[str] = None
    divisor: Optional[int] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    network_name: str = ""  # the class as the file names it ("UNet", "monai.networks.nets:UNet"): to rebuild it


def _read_json(path: Path) -> Dict[str, Any]:
    """A JSON object through the one bounded reader (trmcore.schema: size, depth, duplicate keys, NaN)."""
    from trmcore.schema import AnyJson, Map, read_json

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return read_json(path, Map(AnyJson(), expected="a JSON object"))


def _literal(value: Any, where: str, source: Path) -> Any:
    """``value`` when it holds only JSON literals; refuses MONAI's ``$`` expressions and ``@`` references."""
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"{source}: {where} is the expression {value!r}; trmcore evaluates no code from a "
                         "bundle (give literal arguments)")
    if isinstance(value, dict):
        if "_target_" in value:
            raise ValueError(f"{source}: {where} instantiates {value['_target_']!r}; only the network itself may")
        return {k: _literal(v, f"{where}.{k}", source) for k, v in value.items()}
    if isinstance(value, list):
        return [_literal(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    return value


def _network_class(name: Any, source: Path) -> Any:
    """The class ``name`` ("UNet", "monai.networks.nets.UNet" or "monai.networks.nets:UNet") under monai.networks."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.:]*", name):
        raise ValueError(f"{source}: network {name!r} is not a class name")
    if ":" in name:
        module_name, _, attribute = name.partition(":")
    elif "." in name:
        module_name, _, attribute = name.rpartition(".")
    else:
        module_name, attribute = NETS_MODULE, name
    if not (module_name + ".").startswith(ALLOWED_PREFIX):
        raise ValueError(f"{source}: network {name!r} is not in monai.networks; trmcore builds only MONAI's "
                         "networks from a file (for your own module, build the network in Python and use "
                         "trmcore.training.loss)")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except ImportError:
        raise ValueError(f"{source}: MONAI networks need monai (pip install trmcore[monai])") from None
    except AttributeError:
        raise ValueError(f"{source}: {module_name} has no {attribute}") from None
    if not isinstance(value, type):
        raise ValueError(f"{source}: {name} is not a class")
    return value


def read_weights(path: Path) -> Dict[str, Any]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only=True`` (one line if refused)."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"weights {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"weights {path} cannot be read as plain tensors (weights_only): {first}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path} are not a state dict of tensors")
    return state


def _build(cls: Any, kwargs: Dict[str, Any], weights: Path, source: Path) -> Any:
    try:
        network = cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{source}: the arguments do not fit {cls.__name__}: {err}") from None
    try:
        network.load_state_dict(read_weights(weights))
    except RuntimeError as err:
        raise ValueError(f"weights {weights} do not fit the network of {source}: "
                         f"{str(err).strip().splitlines()[0]}") from None
    return network.eval()


def load_monai_network(path: PathLike) -> MonaiNetwork:
    """A MONAI bundle folder or a network JSON (see the module docstring), in eval mode on the CPU.

    Raises:
        FileNotFoundError: a missing config or weights file.
        ValueError: one line naming the file: a target outside monai.networks, an expression
            or reference among the arguments, weights that are not plain tensors or do not fit.
    """
    path = Path(path)
    if path.is_dir():
        config_path = path / "configs" / "inference.json"
        config = _read_json(config_path)
        definition = config.get("network_def")
        if not isinstance(definition, dict) or "_target_" not in definition:
            raise ValueError(f"{config_path}: no network_def with a _target_")
        kwargs = {k: _literal(v, f"network_def.{k}", config_path) for k, v in definition.items()
                  if k not in ("_target_", "_requires_", "_disabled_", "_desc_", "_mode_")}
        network = _build(_network_class(definition["_target_"], config_path), kwargs, path / "models" / "model.pt",
                         config_path)
        return MonaiNetwork(network, path, kwargs=kwargs, network_name=str(definition["_target_"]))
    spec = _read_json(path)
    unknown = set(spec) - {"network", "kwargs", "weights", "channels", "normalization", "divisor"}
    if unknown or "network" not in spec or "weights" not in spec:
        raise ValueError(f"{path}: needs 'network' and 'weights' (optional: kwargs, channels, normalization, "
                         f"divisor){'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
    kwargs = _literal(spec.get("kwargs") or {}, "kwargs", path)
    network = _build(_network_class(spec["network"], path), kwargs, path.parent / spec["weights"], path)
    channels = spec.get("channels")
    divisor = spec.get("divisor")
    if channels is not None and not (isinstance(channels, list) and all(isinstance(c, str) for c in channels)):
        raise ValueError(f"{path}: channels must be a list of names")
    if divisor is not None and not (isinstance(divisor, int) and divisor >= 1):
        raise ValueError(f"{path}: divisor must be a positive integer")
    return MonaiNetwork(network, path, channels, spec.get("normalization"), divisor, kwargs, str(spec["network"]))

"""The registry of fine-tuning methods (loss weightings, SPEC section 5), torch-free.

One entry per method names the :class:`~trmcore.training.weighting.LossWeighting`
subclass that implements it (as ``"module:Class"``, imported only when a run
is built, so the CLI and ``TrainConfig`` validation stay torch-free). The CLI
choices of ``trm train`` / ``trm finetune``, ``TrainConfig.method`` validation
and the study's default method list all read this table: adding a method is
one :func:`register_method` call plus its class (see docs/architecture.md).
A method with settings of its own names a torch-free dataclass of them
(:mod:`trmcore.training.method_settings`): ``trm finetune`` builds its options
from the fields and the weighting reads them with ``config.method_settings_of()``.

Example:
    >>> list(METHODS)
    ['vanilla', 'class-weight', 'trs-map', 'trm']
    >>> METHODS["trm"].needs_source, source_method_names()
    (True, ('vanilla', 'class-weight'))
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Optional, Tuple

from trmcore.registry import Registry
from trmcore.training.method_settings import TrmSettings, TrsMapSettings


@dataclass(frozen=True)
class MethodEntry:
    """One fine-tuning method.

    Attributes:
        name: the ``--method`` value and ``TrainConfig.method``.
        target: ``"module:Class"`` of its LossWeighting subclass; the class builds itself with
            ``Class.from_config(config, model_config, data, num_classes, ctx, source)``.
        summary: one line for ``--help``.
        needs_source: the weights come from the frozen source model (LEEP), so only fine-tuning can use it.
        source_training: ``trm train`` (a source model from scratch) may use it.
        settings: a frozen dataclass of the method's own settings (None: it has none), importable
            without torch: each field is a ``trm finetune`` option (its metadata has the help text,
            see :func:`trmcore.training.method_settings.setting`) and its ``__post_init__`` checks them.
    """

    name: str
    target: str
    summary: str
    needs_source: bool = False
    source_training: bool = False
    settings: Optional[type] = None

    def load(self) -> type:
        """The LossWeighting subclass (imports its module, hence torch)."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


# name -> entry, in the order of --help and of the study's tables.
METHODS: Registry[MethodEntry] = Registry("method")


def register_method(entry: MethodEntry) -> MethodEntry:
    """Add ``entry`` to :data:`METHODS` (ValueError if the name is taken) and return it.

    ValueError too when its ``settings`` is not a dataclass, a field has no help text, or a field
    name is another method's setting with a different type or default (one option per name).
    """
    if entry.settings is not None:
        if not dataclasses.is_dataclass(entry.settings):
            raise ValueError(f"method {entry.name!r}: settings must be a dataclass, got {entry.settings!r}")
        others = {f.name: (other.name, f) for other in METHODS.values() if other.settings is not None
                  for f in dataclasses.fields(other.settings)}
        for f in dataclasses.fields(entry.settings):
            if not f.metadata.get("help"):
                raise ValueError(f"method {entry.name!r}: setting {f.name!r} has no help text (metadata 'help')")
            if f.name in others and (others[f.name][1].type, others[f.name][1].default) != (f.type, f.default):
                raise ValueError(f"method {entry.name!r}: setting {f.name!r} is already method "
                                 f"{others[f.name][0]!r}'s, with another type or default")
    return METHODS.add(entry.name, entry)


def get_method(name: str) -> MethodEntry:
    """The entry of ``name``; ValueError naming the registered methods for any other."""
    return METHODS.lookup(name)


def method_names() -> Tuple[str, ...]:
    """Every registered method (the choices of ``trm finetune --method``)."""
    return tuple(METHODS)


def source_method_names() -> Tuple[str, ...]:
    """The methods a source model may train with (the choices of ``trm train --method``)."""
    return tuple(name for name, entry in METHODS.items() if entry.source_training)


# The one name of plain (unweighted) cross-entropy: the method of a source model unless told otherwise.
PLAIN_METHOD = "vanilla"

_WEIGHTING = "trmcore.training.weighting"
register_method(MethodEntry(PLAIN_METHOD, f"{_WEIGHTING}:LossWeighting", "plain cross-entropy",
                            source_training=True))
register_method(MethodEntry("class-weight", f"{_WEIGHTING}:ClassWeighting",
                            "inverse class frequency weights", source_training=True))
register_method(MethodEntry("trs-map", f"{_WEIGHTING}:TrsMapWeighting",
                            "block-local LEEP weights exp(-LEEP) [TRS]", needs_source=True,
                            settings=TrsMapSettings))
register_method(MethodEntry("trm", f"{_WEIGHTING}:RiskMapWeighting",
                            "transfer risk maps from pixel-level LEEP (TRM)", needs_source=True,
                            settings=TrmSettings))

# The method of `trm finetune`, `finetune()` and `trm transfer-path` when none is given.
DEFAULT_METHOD = "trm"

"""The settings of the fine-tuning methods that have their own (torch-free dataclasses).

Each is the ``settings`` of its :class:`~trmcore.training.methods.MethodEntry`:
its fields are the method's knobs, their defaults and allowed values are
written here once, ``__post_init__`` checks them, and field metadata gives the
command line:

- ``help``: the ``--help`` text (required; ``trm finetune`` prefixes the method's name);
- ``flag``: the option (default ``--`` + the field name with dashes);
- ``choices``, ``metavar``: as argparse's.

``trm finetune`` builds one option per field (:func:`trmcore.cli.common.add_settings_options`)
and passes the values to :class:`~trmcore.training.config.TrainConfig`; the
weighting reads them back with ``config.method_settings_of()``. The settings of
trs-map and trm are also flat ``TrainConfig`` fields (run.json keeps its keys);
those of a method added later travel in ``TrainConfig.method_settings``.

Example:
    >>> TrmSettings().risk_base, TrmSettings(risk_scaling="robust").risk_quantile
    (10.0, 0.05)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

from trmcore.ops import RISK_BASE, RISK_SCOPE, RISK_SCOPES

# How trm's Eq. 7 denominator is formed (trmcore.training.loss_denominator): "bounded" (default) floors the
# batch's foreground count at E / trm_bound, "batch" is TRM Eq. 7 as published, "image" per image, "mean" the
# mean over valid pixels as vanilla (no Eq. 7: with class-balanced weights, only the emphasis within a class differs).
TRM_DENOMINATORS = ("bounded", "batch", "image", "mean")
# How T becomes T' before R = base ** T' (trmcore.training.risk_scaling): "minmax" is TRM Eq. 5,
# "robust" clips T to per-class quantiles first.
RISK_SCALINGS = ("minmax", "robust")
# How R is balanced between the target classes (trmcore.training.risk_scaling.balance_risk): "none" is TRM
# Eq. 7's weights as published; "per-class" divides R by its mean over the training pixels of the pixel's
# class (mean weight 1 in every class: only the emphasis inside a class changes, the class balance stays
# vanilla's); "foreground" does so on foreground classes and gives background pixels weight 1.
RISK_BALANCES = ("none", "per-class", "foreground")


def setting(default: Any, help: str, flag: Optional[str] = None, choices: Optional[Sequence[Any]] = None,
            metavar: Optional[str] = None) -> Any:
    """A settings field: ``default`` plus the metadata its command-line option is built from."""
    metadata: Dict[str, Any] = {"help": help}
    for key, value in (("flag", flag), ("choices", None if choices is None else tuple(choices)),
                       ("metavar", metavar)):
        if value is not None:
            metadata[key] = value
    return field(default=default, metadata=metadata)


def _one_of(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")


@dataclass(frozen=True)
class TrsMapSettings:
    """[TRS] block-local LEEP weights."""

    trs_stride: int = setting(4, "block size")

    def __post_init__(self) -> None:
        if self.trs_stride < 1:
            raise ValueError(f"trs_stride must be >= 1, got {self.trs_stride!r}")


@dataclass(frozen=True)
class TrmSettings:
    """Transfer risk maps (TRM, SPEC 3 and 5)."""

    risk_refresh: int = setting(0, "recompute the risk maps every K iterations with the current model "
                                   "(0: static)", metavar="K")
    risk_base: float = setting(RISK_BASE, "risk = base**T'", metavar="BASE")
    risk_scope: str = setting(RISK_SCOPE, "rescale T per image or per batch", choices=RISK_SCOPES)
    trm_normalize: str = setting("bounded", "loss denominator; 'batch' = TRM Eq. 7 as published, 'bounded' = Eq. 7 "
                                            "with a floor, 'mean' = the mean over pixels as vanilla",
                                 choices=TRM_DENOMINATORS)
    trm_bound: float = setting(4.0, "bounded: no batch weighs more than K x a batch with the expected foreground",
                               metavar="K")
    risk_scaling: str = setting("minmax", "'minmax' = TRM Eq. 5; 'robust' clips T to per-class quantiles first",
                                choices=RISK_SCALINGS)
    risk_quantile: float = setting(0.05, "robust: the clipping quantiles Q and 1-Q", metavar="Q")
    risk_balance: str = setting("none", "'none' = the risk map R as the weight (TRM Eq. 7); 'per-class' = R divided "
                                        "by its class's mean (mean weight 1 in every class: the class balance stays "
                                        "vanilla's); 'foreground' = per-class on foreground, 1 on background",
                                flag="--trm-class-balance", choices=RISK_BALANCES)
    risk_anneal: bool = setting(False, "move the weights linearly to 1 over the run")

    def __post_init__(self) -> None:
        if self.risk_refresh < 0:
            raise ValueError(f"risk_refresh must be >= 0, got {self.risk_refresh!r}")
        _one_of("risk_scope", self.risk_scope, RISK_SCOPES)
        if not self.risk_base > 1:
            raise ValueError(f"risk_base must be > 1, got {self.risk_base!r}")
        _one_of("trm_normalize", self.trm_normalize, TRM_DENOMINATORS)
        if not 1.0 <= self.trm_bound < float("inf"):
            raise ValueError(f"trm_bound must be a finite number >= 1, got {self.trm_bound!r}")
        _one_of("risk_scaling", self.risk_scaling, RISK_SCALINGS)
        if not 0.0 <= self.risk_quantile < 0.5:
            raise ValueError(f"risk_quantile must be in [0, 0.5), got {self.risk_quantile!r}")
        _one_of("risk_balance", self.risk_balance, RISK_BALANCES)

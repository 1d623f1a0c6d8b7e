"""Training configuration (torch-free dataclasses)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Mapping, Optional

from trmcore.ops import RISK_SCOPES  # noqa: F401  (the allowed values of TrainConfig fields, read here by users)
from trmcore.training.method_settings import (RISK_BALANCES, RISK_SCALINGS, TRM_DENOMINATORS, TrmSettings,
                                              TrsMapSettings)
from trmcore.training.methods import METHODS, PLAIN_METHOD, MethodEntry, get_method
from trmcore.training.schedule import LR_SCHEDULES

# Allowed values of the TrainConfig fields with a fixed set (the CLI reads its choices here; RISK_SCOPES and
# RISK_BASE are the ops' own, SPEC 3; those of the methods' own settings are in trmcore.training.method_settings).
FREEZE_CHOICES = ("encoder", "none")
AXES = (0, 1, 2)
# The optimiser: Adam, or SGD with Nesterov momentum (nnU-Net: lr 0.01, momentum 0.99, weight decay 3e-5).
OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainConfig:
    """How one run trains; stored in run.json.

    Args:
        iterations: optimiser steps.
        lr: base learning rate (the peak of the schedule).
        lr_schedule: "poly" (nnU-Net's lr * (1 - t / H) ** 0.9, the default) or "constant";
            see trmcore.training.schedule.
        warmup: linear warm-up steps before the schedule (0 = none).
        lr_horizon: H, the steps the poly decay is planned for (None = ``iterations``); a run
            stopped before H (``--iterations`` < H) extends up to H exactly as one trained at once.
        optimizer: "adam" or "sgd" (SGD with Nesterov momentum, as nnU-Net).
        momentum: SGD momentum (nnU-Net: 0.99); Adam ignores it.
        weight_decay: L2 weight decay of the optimiser (nnU-Net's SGD: 3e-5).
        batch_size: slices per step (per process under DDP).
        method: loss weighting, a name of the METHODS registry (trmcore.training.methods);
            plain cross-entropy is ``"vanilla"`` (``PLAIN_METHOD``), the default.
        freeze: "encoder" (contracting path + bottleneck frozen, SPEC 5) or "none".
        few_shot: keep only this many target training slices (seeded), or None for all.
        risk_refresh: 0 = static risk maps (default); K > 0 recomputes them every K iterations
            with the current model (trm only).
        risk_base, risk_scope: SPEC 3 (base 10, per "image" or per "batch").
        trs_stride: block size of the trs-map baseline (SPEC 5).
        seed: seeds data order, initialisation and few-shot sampling.
        val_every: validate (3D Dice on the validation volumes) every this many iterations;
            0 = only at the end.
        val_fraction: share of cases held out for validation (when ``fold`` is None).
        fold: K, validate on fold K of the dataset's splits_final.json (written once, 5 folds,
            nnU-Net's format; trmcore.data.splits) instead of a ``val_fraction`` split.
        axis: slicing axis of the volumes (2 = axial).
        skip_empty: drop training slices without brain (all-zero image).
        resample: bring volumes to RAS and the median in-plane spacing (fine-tuning:
            the source run's); False (``--no-resample``) uses them as stored.
        amp: autocast on CUDA (ignored on CPU).
        augment: augment every batch on the fly (trmcore.training.augment, nnU-Net-like defaults);
            False (``--no-augment``) trains on the slices as they are.
        checkpoint_every: write a resumable state every this many iterations (0 = at validation only).
        foreground_share: share of each batch drawn from slices holding foreground (nnU-Net's
            oversampling, every method alike); 0 = uniform batches.
        trm_normalize: trm's loss denominator, one of TRM_DENOMINATORS; "batch" is the paper's Eq. 7.
        trm_bound: with "bounded", no batch weighs more than this factor above a batch with the
            expected foreground count E (the denominator is at least E / trm_bound).
        risk_scaling: "minmax" (TRM Eq. 5) or "robust" (T clipped to the per-class quantiles
            risk_quantile and 1 - risk_quantile before the min-max).
        risk_balance: one of RISK_BALANCES; "none" keeps TRM's weights R as published.
        risk_anneal: move trm's weights linearly from their value at iteration 0 to 1 at the last
            iteration (the end of training is plain cross-entropy).
    """

    iterations: int = 5000
    lr: float = 1e-4
    lr_schedule: str = "poly"
    warmup: int = 0
    lr_horizon: Optional[int] = None
    optimizer: str = "adam"
    momentum: float = 0.99
    weight_decay: float = 0.0
    batch_size: int = 8
    method: str = PLAIN_METHOD
    freeze: str = "encoder"
    few_shot: Optional[int] = None
    # The settings of trs-map and trm, flat as run.json has them; defaults and checks are the settings dataclasses'.
    risk_refresh: int = TrmSettings.risk_refresh
    risk_base: float = TrmSettings.risk_base
    risk_scope: str = TrmSettings.risk_scope
    trs_stride: int = TrsMapSettings.trs_stride
    seed: int = 0
    val_every: int = 500
    val_fraction: float = 0.2
    fold: Optional[int] = None
    axis: int = 2
    skip_empty: bool = True
    resample: bool = True
    amp: bool = True
    augment: bool = True
    checkpoint_every: int = 0
    foreground_share: float = 1.0 / 3.0
    trm_normalize: str = TrmSettings.trm_normalize
    trm_bound: float = TrmSettings.trm_bound
    risk_scaling: str = TrmSettings.risk_scaling
    risk_quantile: float = TrmSettings.risk_quantile
    risk_balance: str = TrmSettings.risk_balance
    risk_anneal: bool = TrmSettings.risk_anneal
    # The settings of methods registered with a settings dataclass whose fields are not flat fields above
    # (field name -> value; absent: the dataclass default). run.json has the key only when it is not empty.
    method_settings: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = {"iterations": self.iterations, "batch_size": self.batch_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.iterations:
            raise ValueError(f"warmup must be an integer in [0, iterations), got {self.warmup!r}")
        if self.lr_horizon is not None and (not isinstance(self.lr_horizon, int) or self.lr_horizon < self.iterations):
            raise ValueError(f"lr_horizon must be an integer >= iterations ({self.iterations}), got {self.lr_horizon!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, got {self.freeze!r}")
        if self.few_shot is not None and self.few_shot < 1:
            raise ValueError(f"few_shot must be >= 1, got {self.few_shot!r}")
        for name in ("val_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.fold is not None and (not isinstance(self.fold, int) or self.fold < 0):
            raise ValueError(f"fold must be an integer >= 0, got {self.fold!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not 0.0 <= self.foreground_share <= 1.0:
            raise ValueError(f"foreground_share must be in [0, 1], got {self.foreground_share!r}")
        if self.axis not in AXES:
            raise ValueError(f"axis must be 0, 1 or 2, got {self.axis!r}")
        if not isinstance(self.method_settings, dict):
            raise ValueError(f"method_settings must be a mapping of setting names to values, got "
                             f"{self.method_settings!r}")
        known = {f.name for entry in METHODS.values() if entry.settings is not None
                 for f in fields(entry.settings)} - {f.name for f in fields(self)}
        unknown = sorted(set(self.method_settings) - known)
        if unknown:
            raise ValueError(f"method_settings: no registered method has the setting(s) {', '.join(unknown)}")
        for entry in METHODS.values():  # every method's settings are checked by its own dataclass
            self._settings(entry)

    @property
    def planned_horizon(self) -> int:
        """The steps the learning-rate decay is planned for: ``lr_horizon`` or ``iterations``."""
        return self.iterations if self.lr_horizon is None else self.lr_horizon

    def method_settings_of(self, method: Optional[str] = None) -> Any:
        """The settings dataclass of ``method`` (default: this run's) filled from this config; None if it has none.

        Example:
            >>> TrainConfig(method="trs-map", trs_stride=2).method_settings_of()
            TrsMapSettings(trs_stride=2)
        """
        return self._settings(get_method(self.method if method is None else method))

    def _settings(self, entry: MethodEntry) -> Any:
        if entry.settings is None:
            return None
        flat = {f.name for f in fields(self)}
        values = {f.name: getattr(self, f.name) for f in fields(entry.settings) if f.name in flat}
        values.update({f.name: self.method_settings[f.name] for f in fields(entry.settings)
                       if f.name not in flat and f.name in self.method_settings})
        return entry.settings(**values)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        if not record["method_settings"]:
            del record["method_settings"]  # run.json of the built-in methods keeps its keys
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """A TrainConfig from a saved dict (checkpoint, run.json); unknown keys ignored.

        Files written before plain cross-entropy had one name record it as ``method: null``.
        """
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "method" in values:
            values["method"] = read_method(values["method"])
        return cls(**values)


def read_method(value: Any) -> Any:
    """A method as saved on disk: ``None`` (files from before ``PLAIN_METHOD``) is plain cross-entropy."""
    return PLAIN_METHOD if value is None else value

"""The learning-rate schedule of a run: nnU-Net's poly decay (default) or constant, optional warm-up.

Torch-free (run.json records it; ``trm`` reads run.json without torch).

Poly (nnU-Net, Isensee et al. 2021): the step ``t`` (0-based, the ``t``-th
optimiser step) of a run planned for ``H`` steps uses

    lr_t = lr * (1 - t / H) ** 0.9

so the first step uses ``lr`` and the last ``lr * (1 / H) ** 0.9``. With a
linear warm-up of ``W`` steps, steps ``t < W`` use ``lr * (t + 1) / W`` and the
poly decay runs over the rest: ``lr * (1 - (t - W) / (H - W)) ** 0.9``.

Extending a run (``--resume --iterations N`` beyond the planned horizon)
cannot change the steps already taken: the schedule is a list of *segments*
``(start, horizon)``; a step uses the horizon of the last segment that
starts at or before it. A run planned for ``N1`` and extended to ``N`` has
the segments ``[(0, N1), (N1, N)]``: its first ``N1`` steps decayed towards
``N1``, the rest follows the poly curve of an ``N``-step run from step
``N1`` on (the learning rate jumps up at ``N1``). run.json records the
segments, so this is never hidden. A run planned with ``lr_horizon = N``
(``--lr-horizon N``) and stopped earlier extends to ``N`` with one segment,
exactly as a run trained for ``N`` steps at once.

Example:
    >>> schedule = LRSchedule("poly", lr=0.01, segments=((0, 100),))
    >>> round(schedule.lr_at(0), 6), round(schedule.lr_at(50), 6)
    (0.01, 0.005359)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

LR_SCHEDULES = ("poly", "constant")
POLY_EXPONENT = 0.9


def lr_factor(kind: str, step: int, horizon: int, warmup: int = 0, exponent: float = POLY_EXPONENT) -> float:
    """The multiplier of the base learning rate at 0-based ``step`` of a run planned for ``horizon`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind != "poly":
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    span = horizon - warmup
    # A step past the horizon (never planned so) keeps the last factor rather than a negative base.
    done = min(step - warmup, span - 1)
    return (1.0 - done / span) ** exponent


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every step of a run.

    Args:
        kind: one of :data:`LR_SCHEDULES`.
        lr: the base (peak) learning rate.
        warmup: linear warm-up steps (0 = none).
        segments: ``((start, horizon), ...)``, starts increasing from 0; a step uses the horizon of
            the last segment starting at or before it (see the module docstring).
    """

    kind: str
    lr: float
    warmup: int = 0
    segments: Tuple[Tuple[int, int], ...] = field(default=((0, 1),))
    exponent: float = POLY_EXPONENT

    def __post_init__(self) -> None:
        if self.kind not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {self.kind!r}")
        segments = tuple((int(s), int(h)) for s, h in self.segments)
        object.__setattr__(self, "segments", segments)
        if not segments or segments[0][0] != 0:
            raise ValueError(f"lr schedule segments must start at step 0, got {segments}")
        for (s0, _), (s1, _) in zip(segments, segments[1:]):
            if s1 <= s0:
                raise ValueError(f"lr schedule segments must start at increasing steps, got {segments}")
        for start, horizon in segments:
            if horizon <= max(start, self.warmup):
                raise ValueError(f"lr schedule horizon {horizon} must exceed the segment start {start} "
                                 f"and the warm-up {self.warmup}")

    @classmethod
    def planned(cls, kind: str, lr: float, horizon: int, warmup: int = 0) -> "LRSchedule":
        """A new run's schedule: one segment over ``horizon`` steps."""
        return cls(kind, lr, warmup, ((0, horizon),))

    @property
    def horizon(self) -> int:
        """The horizon of the last segment (the one new steps follow)."""
        return self.segments[-1][1]

    def horizon_at(self, step: int) -> int:
        horizon = self.segments[0][1]
        for start, segment_horizon in self.segments:
            if start > step:
                break
            horizon = segment_horizon
        return horizon

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based optimiser step ``step``."""
        return self.lr * lr_factor(self.kind, step, self.horizon_at(step), self.warmup, self.exponent)

    def extended(self, start: int, horizon: int) -> "LRSchedule":
        """This schedule continued at ``start`` towards ``horizon`` (itself when the horizon does not grow)."""
        if horizon <= self.horizon:
            return self
        if self.kind == "constant":  # the horizon changes no step's rate: one segment, as a run trained at once
            return LRSchedule(self.kind, self.lr, self.warmup, ((0, horizon),), self.exponent)
        if start <= self.segments[-1][0]:  # nothing ran under the last segment yet: re-plan it
            return LRSchedule(self.kind, self.lr, self.warmup, self.segments[:-1] + ((self.segments[-1][0], horizon),),
                              self.exponent)
        return LRSchedule(self.kind, self.lr, self.warmup, self.segments + ((start, horizon),), self.exponent)

    def to_dict(self) -> Dict[str, Any]:
        """run.json's ``lr_schedule``: kind, base lr, warm-up, exponent and the segments."""
        record: Dict[str, Any] = {"kind": self.kind, "lr": self.lr, "warmup": self.warmup,
                                  "exponent": self.exponent,
                                  "segments": [{"start": s, "horizon": h} for s, h in self.segments]}
        if len(self.segments) > 1:
            record["note"] = ("extended run: steps from each segment's start use the poly decay planned for "
                              "its horizon; earlier steps ran under the earlier horizon")
        return record

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LRSchedule":
        return cls(data["kind"], float(data["lr"]), int(data.get("warmup", 0)),
                   tuple((int(s["start"]), int(s["horizon"])) for s in data["segments"]),
                   float(data.get("exponent", POLY_EXPONENT)))

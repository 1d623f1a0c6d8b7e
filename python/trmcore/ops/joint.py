"""The LEEP joint statistics: unnormalised sums that add across batches and ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LeepJoint:
    """Sums of source softmax per (target label, source class) over valid pixels.

    Attributes:
        sums: float64 ``[C, Z]`` (NumPy array or torch tensor, matching the input
            of :func:`trmcore.ops.leep_joint`): ``M * J[y, z]`` of SPEC section 2.
        count: M, the number of valid pixels summed.
        ignore_index: the label that marked ignored pixels; :func:`pixel_leep`
            uses the same one by default.

    Joints of disjoint batches add: ``leep_joint(a) + leep_joint(b)`` equals the
    joint of both batches together.
    """

    sums: Any
    count: int
    ignore_index: int = -100

    @property
    def num_classes(self) -> int:
        """C, the number of target classes."""
        return int(self.sums.shape[0])

    @property
    def num_source_classes(self) -> int:
        """Z, the number of source classes."""
        return int(self.sums.shape[1])

    def conditional(self) -> Any:
        """P(y | z) = J[y, z] / P(z), float64 ``[C, Z]``; a column with P(z) = 0 is zeros."""
        column = self.sums.sum(0, keepdims=True) if _is_numpy(self.sums) else self.sums.sum(0, keepdim=True)
        positive = column > 0
        safe = column * positive + (~positive) * 1.0  # 1 where the column is empty: 0 / 1 = 0
        return (self.sums / safe) * positive

    def __add__(self, other: "LeepJoint") -> "LeepJoint":
        if not isinstance(other, LeepJoint):
            return NotImplemented
        if tuple(self.sums.shape) != tuple(other.sums.shape):
            raise ValueError(f"cannot add joints of shapes {tuple(self.sums.shape)} and {tuple(other.sums.shape)}")
        if self.ignore_index != other.ignore_index:
            raise ValueError(f"cannot add joints with ignore_index {self.ignore_index} and {other.ignore_index}")
        return LeepJoint(self.sums + other.sums, self.count + other.count, self.ignore_index)


def _is_numpy(array: Any) -> bool:
    return type(array).__module__ == "numpy"

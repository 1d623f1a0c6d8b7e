"""Segmentation tasks: which channels go in, which labels come out, which site.

A task is written on the command line as ``--channel T1 --labels CSF [--site A]``.
Class 0 is always background; class k is the k-th name of ``labels``. Voxels
whose dataset label is not one of the task's labels count as background, so
``--labels CSF`` on a CSF/GM/WM dataset is a binary task and ``--labels
NCR,ED,ET`` a 4-class one.

Example:
    >>> parse_task("T1", "CSF")
    TaskSpec(channels=['T1'], labels=['CSF'], site=None)
    >>> parse_task("T1,T2", "NCR, ED, ET", site="13").labels
    ['NCR', 'ED', 'ET']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np

from .layout import DatasetLayout, LabelValue, _values

#: Task class of unannotated voxels (dataset.json label ``ignore``): losses and
#: scores leave them out. The same value as PyTorch's cross-entropy default.
IGNORE_INDEX = -100


@dataclass
class TaskSpec:
    """A task as asked for: channel names, label names, optional site."""

    channels: List[str]
    labels: List[str]
    site: Optional[str] = None

    def __post_init__(self) -> None:
        self.channels = _name_list(self.channels, "channels")
        self.labels = _name_list(self.labels, "labels", allow_empty=True)
        if not self.channels:
            raise ValueError("a task needs at least one channel, e.g. channel='T1'")
        if any(name.lower() == "background" for name in self.labels):
            raise ValueError("'background' is class 0 of every task; list only the foreground labels")
        if len({n.lower() for n in self.labels}) != len(self.labels):
            raise ValueError(f"task labels repeat a name: {self.labels}")
        if len({n.lower() for n in self.channels}) != len(self.channels):
            raise ValueError(f"task channels repeat a name: {self.channels}")
        if self.site is not None:
            self.site = str(self.site).strip()
            if not self.site:
                self.site = None

    def __str__(self) -> str:
        text = f"{'+'.join(self.channels)}:{','.join(self.labels) or 'unlabelled'}"
        return f"{text}@{self.site}" if self.site else text


def parse_task(channel: Union[str, Sequence[str]], labels: Union[str, Sequence[str]], site: Optional[str] = None) -> TaskSpec:
    """Build a :class:`TaskSpec` from command-line style strings.

    Args:
        channel: "T1" or "T1,T2" (or a list of names).
        labels: "CSF" or "NCR,ED,ET" (or a list); "" for an unlabelled (inference) task.
        site: keep only cases of this site (partition), or None for all.
    """
    return TaskSpec(_split(channel), _split(labels), site)


@dataclass
class TaskInfo:
    """A task resolved against a dataset.

    Attributes:
        channels: channel names in input order (the dataset's spelling).
        label_names: ["background", *labels].
        label_values: dataset value per class (background 0); a tuple for a
            region label made of several values.
        num_classes: len(label_names).
        site: the site filter, or None.
        channel_indices: file index (``_0000``...) of each channel.
        dataset_values: every label value dataset.json declares (for checking files).
        ignore_value: the dataset value of the ``ignore`` label (mapped to
            :data:`IGNORE_INDEX`), or None.
    """

    channels: List[str]
    label_names: List[str]
    label_values: List[LabelValue]
    num_classes: int
    site: Optional[str] = None
    channel_indices: List[int] = field(default_factory=list)
    dataset_values: List[int] = field(default_factory=list)
    ignore_value: Optional[int] = None
    geometry: Optional[object] = None  # trmcore.data.geometry.Geometry the volumes were loaded on
    normalization: Optional[str] = None  # and the intensity normalisation they got

    @classmethod
    def resolve(cls, layout: DatasetLayout, task: TaskSpec) -> "TaskInfo":
        """Match ``task`` against ``layout``; unknown channel/label names raise ValueError."""
        indices = [layout.channel_index(name) for name in task.channels]
        channels = [layout.channel_names[i] for i in indices]
        names = [layout.label_name(name) for name in task.labels]
        values = [0] + [layout.labels[name] for name in names]
        declared = sorted({v for value in layout.labels.values() for v in _values(value)})
        return cls(channels, ["background", *names], values, len(values), task.site, indices, declared,
                   layout.ignore_value)

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """Dataset label values -> task classes 0..num_classes-1 (int64, same shape).

        Values of no task label become background, except the dataset's
        ``ignore`` value, which becomes :data:`IGNORE_INDEX`. For region labels
        that overlap, the later class wins.
        """
        raw = np.asarray(raw)
        out = np.zeros(raw.shape, np.int64)
        for cls_index in range(1, self.num_classes):
            values = _values(self.label_values[cls_index])
            mask = raw == values[0] if len(values) == 1 else np.isin(raw, values)
            out[mask] = cls_index
        if self.ignore_value is not None:
            out[raw == self.ignore_value] = IGNORE_INDEX
        return out


def _split(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(part).strip() for part in value]


def _name_list(value, what: str, allow_empty: bool = False) -> List[str]:
    if isinstance(value, str):
        value = _split(value)
    try:
        names = [str(v).strip() for v in value]
    except TypeError:
        raise TypeError(f"task {what} must be a list of names, got {value!r}") from None
    if any(not n for n in names):
        raise ValueError(f"task {what} contain an empty name: {value!r}")
    if not names and not allow_empty:
        raise ValueError(f"task {what} must not be empty")
    return names

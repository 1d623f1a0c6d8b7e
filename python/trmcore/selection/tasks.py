"""Tasks of the path search: (site, input channels, label set) [SEQ].

A task is named ``SITE/CHANNELS/LABELS`` with ``+`` between several channels or
labels, e.g. ``site-A/T1/CSF`` or ``14/T2/NCR+ED+ET``; ``*`` as the site means
every case of the dataset. Names hold no commas, so ``--path A,B,TARGET``
lists tasks unambiguously.

A tasks file has one task per line, either as a name or as three
whitespace-separated fields ``SITE CHANNELS LABELS`` (channels and labels
separated by ``,`` or ``+``); blank lines and ``#`` comments are skipped.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ALL_SITES = "*"


@dataclass(frozen=True)
class SelectionTask:
    """One node of the task graph.

    Attributes:
        site: the site / partition name, or None for every case.
        channels: input channel names (the modality), e.g. ``("T1",)``.
        labels: foreground label names, class k = k-th name, e.g. ``("CSF",)``.
    """

    site: Optional[str]
    channels: Tuple[str, ...]
    labels: Tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.site if self.site is not None else ALL_SITES}/{'+'.join(self.channels)}/{'+'.join(self.labels)}"

    @property
    def num_classes(self) -> int:
        return len(self.labels) + 1

    def shares_modality(self, other: "SelectionTask") -> bool:
        return set(self.channels) == set(other.channels)

    def shares_label_set(self, other: "SelectionTask") -> bool:
        return set(self.labels) == set(other.labels)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "site": self.site, "channels": list(self.channels), "labels": list(self.labels)}

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "SelectionTask":
        return cls(obj.get("site"), tuple(obj["channels"]), tuple(obj["labels"]))


def _split_names(text: str, what: str, source: str) -> Tuple[str, ...]:
    names = tuple(part.strip() for part in text.replace("+", ",").split(",") if part.strip())
    if not names:
        raise ValueError(f"{source}: empty {what} in task {text!r}")
    return names


def parse_task_name(text: str, source: str = "task") -> SelectionTask:
    """``"SITE/CH[+CH]/LABEL[+LABEL]"`` (or the three fields separated by spaces) -> SelectionTask.

    Example:
        >>> parse_task_name("A/T1/CSF").name
        'A/T1/CSF'
        >>> parse_task_name("* T1,T2 NCR,ED,ET").name
        '*/T1+T2/NCR+ED+ET'
    """
    fields = text.split("/") if "/" in text else text.split()
    if len(fields) != 3:
        raise ValueError(f"{source}: cannot read task {text!r}; expected SITE/CHANNELS/LABELS "
                         "(e.g. 'site-A/T1/CSF', '*' for all sites)")
    site = fields[0].strip()
    return SelectionTask(None if site in ("", ALL_SITES) else site,
                         _split_names(fields[1], "channel list", source),
                         _split_names(fields[2], "label set", source))


def read_tasks_file(path: Path) -> List[SelectionTask]:
    """Tasks listed in a file, in order, duplicates removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tasks file not found: {path}")
    tasks: List[SelectionTask] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            task = parse_task_name(line, source=f"{path}:{number}")
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError(f"tasks file {path} lists no task")
    return tasks


@dataclass(frozen=True)
class DatasetIndex:
    """What a dataset root offers: channels, labels, and the labelled cases per site.

    Read from ``DATA/dataset.json`` and ``DATA/labelsTr`` (nnU-Net v2 raw layout);
    the optional ``"sites"`` mapping of dataset.json assigns cases to sites.
    """

    root: Path
    channels: Tuple[str, ...]
    labels: Tuple[str, ...]  # foreground label names (background excluded)
    case_sites: Dict[str, Optional[str]]  # labelled case id -> site

    @property
    def sites(self) -> List[str]:
        return sorted({site for site in self.case_sites.values() if site is not None})

    def cases(self, site: Optional[str]) -> List[str]:
        """Labelled case ids of a site (all of them for None), sorted."""
        return sorted(case for case, case_site in self.case_sites.items() if site is None or case_site == site)

    def check(self, task: SelectionTask) -> None:
        """Raise ValueError naming what the dataset lacks for this task."""
        missing_channels = [c for c in task.channels if c not in self.channels]
        if missing_channels:
            raise ValueError(f"task {task.name}: channel(s) {missing_channels} not in {self.root}/dataset.json "
                             f"(available: {list(self.channels)})")
        missing_labels = [label for label in task.labels if label not in self.labels]
        if missing_labels:
            raise ValueError(f"task {task.name}: label(s) {missing_labels} do not exist in {self.root}/dataset.json "
                             f"(available: {list(self.labels)})")
        if task.site is not None and task.site not in self.sites:
            raise ValueError(f"task {task.name}: site {task.site!r} has no labelled case in {self.root} "
                             f"(sites: {self.sites or 'none declared'})")
        if not self.cases(task.site):
            raise ValueError(f"task {task.name}: no labelled volume in {self.root}/labelsTr")


def read_dataset_index(root: Path) -> DatasetIndex:
    """Index a dataset in the standard layout without loading any volume."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} is not a dataset: {meta_path} not found")
    meta = json.loads(meta_path.read_text())
    try:
        channel_names = meta["channel_names"]
        label_map = meta["labels"]
    except KeyError as err:
        raise ValueError(f"{meta_path} lacks {err.args[0]!r}") from None
    channels = tuple(channel_names[key] for key in sorted(channel_names, key=int))
    labels = tuple(name for name, value in sorted(label_map.items(), key=lambda kv: _label_order(kv[1]))
                   if _label_order(value) != 0)
    ending = meta.get("file_ending", ".nii.gz")
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"{labels_dir} not found")
    case_ids = sorted(p.name[: -len(ending)] for p in labels_dir.iterdir() if p.name.endswith(ending))
    sites = meta.get("sites") or {}
    return DatasetIndex(root, channels, labels, {case: sites.get(case) for case in case_ids})


def _label_order(value: Any) -> int:
    # nnU-Net allows a list of values for region-based labels; order by the first.
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


def all_tasks(index: DatasetIndex) -> List[SelectionTask]:
    """Every site x single channel x label set of a dataset.

    Label sets: each single label (binary tasks, as iSeg's {CSF, GM, WM}) and,
    when the dataset has several, all of them together (as FeTS's NCR+ED+ET).
    Without declared sites the site is ``*`` (every case).
    """
    sites: Sequence[Optional[str]] = index.sites or [None]
    label_sets = [(label,) for label in index.labels]
    if len(index.labels) > 1:
        label_sets.append(tuple(index.labels))
    return [SelectionTask(site, (channel,), labels)
            for site, channel, labels in itertools.product(sites, index.channels, label_sets)]


def resolve_tasks(spec: str, index: DatasetIndex) -> List[SelectionTask]:
    """``--tasks`` value: ``all``, or a tasks file; every task checked against the dataset."""
    tasks = all_tasks(index) if spec == "all" else read_tasks_file(Path(spec))
    for task in tasks:
        index.check(task)
    return tasks

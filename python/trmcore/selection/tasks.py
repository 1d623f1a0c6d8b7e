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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from trmcore.schema import List as JsonList, Maybe, Object, Str, read_text_file

if TYPE_CHECKING:
    from trmcore.data import TaskSpec

ALL_SITES = "*"
# Girvan-Newman communities of the source tasks in the path search (SPEC 6); here, not in path.py,
# so that the CLI reads it without importing networkx.
DEFAULT_COMMUNITIES = 9
# Longest transfer path of `select_paths` / `trm path --max-hops`: 2 = the paper's one intermediate task.
DEFAULT_MAX_HOPS = 2


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

    def to_spec(self) -> "TaskSpec":
        """The :class:`trmcore.data.TaskSpec` that loads this task's volumes."""
        from trmcore.data import TaskSpec

        return TaskSpec(list(self.channels), list(self.labels), self.site)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "site": self.site, "channels": list(self.channels), "labels": list(self.labels)}

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "SelectionTask":
        """From :meth:`to_json`'s record, already checked against :data:`TASK_JSON`."""
        return cls(obj.get("site"), tuple(obj["channels"]), tuple(obj["labels"]))


# Names of sites, channels and labels inside a task name: no "/" (it separates the fields), no "," or "+"
# (they separate names in lists).
_NAME = Str(nonempty=True, max_len=256, pattern=r"[^/,+]+", expected="a name without '/', ',' or '+'")
#: The schema of one task record in affinity.json (trmcore.schema); other keys (n_cases ...) are the file's.
TASK_JSON = Object({"name": Str(), "site": Maybe(_NAME), "channels": JsonList(_NAME, min_len=1),
                    "labels": JsonList(_NAME, min_len=1)}, required=("channels", "labels"))


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
    try:
        text = read_text_file(path, what="tasks file")
    except FileNotFoundError:
        raise FileNotFoundError(f"tasks file not found: {path}") from None
    tasks: List[SelectionTask] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            task = parse_task_name(line, source=f"{path}:{number}")
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise ValueError(f"tasks file {path} lists no task")
    return tasks


def labelled_cases(layout, task: SelectionTask) -> List[str]:
    """Case ids of ``task``'s site that have a label file (sorted).

    Args:
        layout: a :class:`trmcore.data.DatasetLayout`.
    """
    return [case for case in layout.cases("Tr")
            if (task.site is None or layout.site_of(case) == task.site) and layout.label_path(case).is_file()]


def check_task(layout, task: SelectionTask) -> None:
    """Raise ValueError naming what the dataset lacks for ``task`` (channel, label, site, cases)."""
    channels = list(layout.channel_names.values())
    missing = [c for c in task.channels if c.lower() not in {n.lower() for n in channels}]
    if missing:
        raise ValueError(f"task {task.name}: channel(s) {missing} not in {layout.root}/dataset.json "
                         f"(available: {channels})")
    labels = [n for n in layout.labels if n != "background"]
    missing = [label for label in task.labels if label.lower() not in {n.lower() for n in labels}]
    if missing:
        raise ValueError(f"task {task.name}: label set {list(task.labels)} does not exist in {layout.root}/dataset.json "
                         f"(unknown: {missing}; available: {labels})")
    sites = sorted(set(layout.sites.values()))
    if task.site is not None and task.site not in sites:
        raise ValueError(f"task {task.name}: site {task.site!r} not found in {layout.root} "
                         f"(sites: {sites or 'none declared; give a sites CSV'})")
    if not labelled_cases(layout, task):
        raise ValueError(f"task {task.name}: no labelled volume in {layout.root}/labelsTr")


def all_tasks(layout) -> List[SelectionTask]:
    """Every site x single channel x label set of a dataset (a :class:`trmcore.data.DatasetLayout`).

    Label sets: each single label (binary tasks, as iSeg's {CSF, GM, WM}) and,
    when the dataset has several, all of them together (as FeTS's NCR+ED+ET).
    Without declared sites the site is ``*`` (every case). Combinations
    without a labelled case are left out.
    """
    sites: Sequence[Optional[str]] = sorted(set(layout.sites.values())) or [None]
    labels = [n for n in layout.labels if n != "background"]
    label_sets = [(label,) for label in labels]
    if len(labels) > 1:
        label_sets.append(tuple(labels))
    tasks = [SelectionTask(site, (channel,), label_set)
             for site, channel, label_set in itertools.product(sites, layout.channel_names.values(), label_sets)]
    return [task for task in tasks if labelled_cases(layout, task)]


def resolve_tasks(spec: str, layout) -> List[SelectionTask]:
    """``--tasks`` value: ``all``, or a tasks file; every task checked against the dataset."""
    tasks = all_tasks(layout) if spec == "all" else read_tasks_file(Path(spec))
    if not tasks:
        raise ValueError(f"no task with labelled volumes in {layout.root}")
    for task in tasks:
        check_task(layout, task)
    return tasks

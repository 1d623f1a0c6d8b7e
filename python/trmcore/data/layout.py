"""The standard dataset layout (nnU-Net v2 raw data) and per-case sites.

::

    DATA/dataset.json              channel_names, labels, file_ending, optional sites
    DATA/imagesTr/CASE_0000.nii.gz one file per channel, 4-digit channel index
    DATA/labelsTr/CASE.nii.gz      integer label map (values from dataset.json "labels")
    DATA/imagesTs/CASE_0000.nii.gz optional unlabelled cases

``dataset.json`` example::

    {"channel_names": {"0": "T1", "1": "T2"},
     "labels": {"background": 0, "CSF": 10, "GM": 150, "WM": 250},
     "file_ending": ".nii.gz",
     "sites": {"subject-1": "site-A"}}

A label may also be a list of values (an nnU-Net "region"); a task class then
covers every voxel holding one of them. The label named ``ignore`` (nnU-Net's
convention) marks voxels that are not annotated: they are left out of losses
and scores (``trmcore.data.tasks.IGNORE_INDEX``), never counted as background.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

from trmcore.schema import Int, List as JsonList, Map, Maybe, Object, OneOf, Str, read_csv_rows, read_json

LabelValue = Union[int, Tuple[int, ...]]

#: nnU-Net's name for the label of unannotated voxels.
IGNORE_LABEL = "ignore"

_CASE_COLUMNS = ("subject_id", "case", "case_id", "subject", "id")
_SITE_COLUMNS = ("partition_id", "site", "partition", "center", "centre", "institution")
# What `trm phantom` / `trm import` write into a dataset folder; their --overwrite removes only these.
DATASET_ENTRIES = ("dataset.json", "imagesTr", "labelsTr", "imagesTs")
# A channel_names key: the file suffix number, plain ASCII decimal (int() alone would also take " 1", "1_0", "٣").
_CHANNEL_KEY = re.compile(r"^(0|[1-9][0-9]{0,3}|0[0-9]{1,3})$", re.ASCII)


@dataclass
class DatasetLayout:
    """What ``dataset.json`` says about a dataset in the standard layout.

    Attributes:
        root: the dataset folder.
        channel_names: channel index -> name, e.g. {0: "T1", 1: "T2"}.
        labels: label name -> value (int, or tuple of ints for a region),
            including "background": 0.
        file_ending: e.g. ".nii.gz".
        sites: case id -> site name (from dataset.json "sites" and/or a CSV).
        name: dataset name, if given.
    """

    root: Path
    channel_names: Dict[int, str]
    labels: Dict[str, LabelValue]
    file_ending: str = ".nii.gz"
    sites: Dict[str, str] = field(default_factory=dict)
    name: Optional[str] = None

    @classmethod
    def read(cls, root: Union[str, Path], sites: Union[str, Path, Mapping[str, str], None] = None) -> "DatasetLayout":
        """Read ``root/dataset.json``; ``sites`` (CSV path or mapping) overrides its "sites"."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        meta_path = root / "dataset.json"
        meta = read_dataset_json(meta_path)
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path} must hold a JSON object")
        channels = parse_channel_names(declared_channels(meta), meta_path)
        labels = _parse_labels(meta.get("labels"), meta_path)
        file_ending = meta.get("file_ending", ".nii.gz")
        if not isinstance(file_ending, str) or not file_ending.startswith("."):
            raise ValueError(f"{meta_path}: file_ending must be a string like '.nii.gz', got {file_ending!r}")
        site_map = _parse_sites(meta.get("sites", {}), meta_path)
        if sites is not None:
            site_map.update(read_sites_csv(sites) if isinstance(sites, (str, Path)) else {str(k): str(v) for k, v in sites.items()})
        return cls(root, channels, labels, file_ending, site_map, meta.get("name"))

    # ----------------------------------------------------------------- files
    def image_path(self, case: str, channel_index: int, split: str = "Tr") -> Path:
        return self.root / f"images{split}" / channel_file_name(case, channel_index, self.file_ending)

    def label_path(self, case: str, split: str = "Tr") -> Path:
        return self.root / f"labels{split}" / f"{case}{self.file_ending}"

    def cases(self, split: str = "Tr") -> List[str]:
        """Sorted case ids found in ``images{split}`` and ``labels{split}``."""
        found = set()
        pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(self.file_ending) + r"$")
        images = self.root / f"images{split}"
        if images.is_dir():
            for path in images.iterdir():
                match = pattern.match(path.name)
                if match:
                    found.add(match.group("case"))
        labels = self.root / f"labels{split}"
        if labels.is_dir():
            for path in labels.iterdir():
                if path.name.endswith(self.file_ending) and not path.name.startswith("."):
                    found.add(path.name[: -len(self.file_ending)])
        return sorted(found)

    # ---------------------------------------------------------------- lookups
    def channel_index(self, name: str) -> int:
        """Index of channel ``name`` (exact, else unique case-insensitive match)."""
        by_name = {v: k for k, v in self.channel_names.items()}
        return by_name[_match_name(name, list(by_name), "channel", self.root)]

    def label_name(self, name: str) -> str:
        """The dataset's spelling of label ``name`` (exact, else case-insensitive)."""
        if str(name).lower() == IGNORE_LABEL:
            raise ValueError(f"label {name!r} of dataset {self.root} marks unannotated voxels; it cannot be a task class")
        return _match_name(name, [n for n in self.labels if n not in ("background", IGNORE_LABEL)], "label", self.root)

    @property
    def ignore_value(self) -> Optional[int]:
        """The value of the ``ignore`` label (unannotated voxels), or None."""
        value = self.labels.get(IGNORE_LABEL)
        return None if value is None else int(_values(value)[0])

    def site_of(self, case: str) -> Optional[str]:
        return self.sites.get(case)


def declared_channels(meta: Mapping) -> object:
    """The raw channel mapping of a parsed ``dataset.json``: ``channel_names`` (nnU-Net v2) or ``modality`` (v1)."""
    return meta["channel_names"] if "channel_names" in meta else meta.get("modality")


def read_sites_csv(path: Union[str, Path]) -> Dict[str, str]:
    """Read a case -> site table.

    Accepts a header naming the columns (FeTS ``Partition_ID,Subject_ID``, or
    ``case,site``; case-insensitive, any order) or, without a recognised header,
    two columns case,site.
    """
    path = Path(path)
    try:
        rows = [row for row in read_csv_rows(path, what="sites CSV") if row and any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise FileNotFoundError(f"sites CSV not found: {path}") from None
    if not rows:
        raise ValueError(f"sites CSV {path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    case_col = next((header.index(c) for c in _CASE_COLUMNS if c in header), None)
    site_col = next((header.index(c) for c in _SITE_COLUMNS if c in header), None)
    if case_col is not None and site_col is not None:
        body = rows[1:]
    elif case_col is None and site_col is None and len(header) >= 2:
        case_col, site_col, body = 0, 1, rows
    else:
        raise ValueError(
            f"sites CSV {path}: cannot tell the case and site columns from header {rows[0]}; "
            "use Subject_ID,Partition_ID or case,site"
        )
    sites: Dict[str, str] = {}
    for line, row in enumerate(body, start=2 if body is not rows else 1):
        if len(row) <= max(case_col, site_col):
            raise ValueError(f"sites CSV {path}, line {line}: expected at least {max(case_col, site_col) + 1} columns, got {row}")
        case, site = row[case_col].strip(), row[site_col].strip()
        if not case or not site:
            raise ValueError(f"sites CSV {path}, line {line}: empty case or site in {row}")
        if case in sites and sites[case] != site:
            raise ValueError(f"sites CSV {path}, line {line}: case {case!r} listed with two sites ({sites[case]!r}, {site!r})")
        sites[case] = site
    return sites


def parse_channel_names(raw, source: Union[str, Path]) -> Dict[int, str]:
    """The one channel-to-file rule: ``dataset.json`` ``channel_names`` -> {file index: name}, sorted by index.

    The key is the file's 4-digit suffix number (nnU-Net's convention): ``{"0": "T2", "2": "T1"}``
    means ``CASE_0000`` is T2 and ``CASE_0002`` is T1 (``CASE_0001``, if present, is not a declared
    channel and is never read). Every reader (training, evaluation, risk maps, transferability,
    ``trm predict``) maps files to names through this function, so they all read the same file for
    a channel. Keys must be plain decimal numbers 0..9999 (``"01"`` and ``"1"`` would name one file
    twice); names must be non-empty strings, unique ignoring case (tasks pick channels by name,
    case-insensitively). ValueError names ``source`` and the problem.
    """
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{source}: 'channel_names' must be a non-empty object like {{\"0\": \"T1\"}}")
    channels: Dict[int, str] = {}
    for key, name in raw.items():
        if not isinstance(key, str) or _CHANNEL_KEY.match(key) is None:
            raise ValueError(f"{source}: channel key {key!r} in 'channel_names' is not a file index 0..9999 "
                             "(the key is the CASE_XXXX suffix number)")
        index = int(key)
        if index in channels:
            raise ValueError(f"{source}: channel keys {index!r} and {key!r} name the same file suffix "
                             f"_{index:04d} in 'channel_names'")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: channel {key} has no name")
        channels[index] = name
    folded: Dict[str, str] = {}
    for name in channels.values():
        if name.lower() in folded:
            raise ValueError(f"{source}: channel names must be unique (ignoring case), got {folded[name.lower()]!r} "
                             f"and {name!r}")
        folded[name.lower()] = name
    return dict(sorted(channels.items()))


def channel_file_name(case: str, index: int, file_ending: str) -> str:
    """``("case", 2, ".nii.gz") -> "case_0002.nii.gz"``: the file of channel key ``index`` (see :func:`parse_channel_names`)."""
    return f"{case}_{int(index):04d}{file_ending}"


def _parse_labels(raw, meta_path: Path) -> Dict[str, LabelValue]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{meta_path}: 'labels' must be a non-empty object like {{\"background\": 0, \"CSF\": 1}}")
    labels: Dict[str, LabelValue] = {}
    for name, value in raw.items():
        if isinstance(value, bool):
            value = None
        if isinstance(value, int):
            labels[name] = int(value)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            labels[name] = tuple(int(v) for v in value)
        else:
            raise ValueError(f"{meta_path}: label {name!r} must be an integer (or list of integers), got {value!r}")
        if any(v < 0 for v in _values(labels[name])):
            raise ValueError(f"{meta_path}: label {name!r} has a negative value {value!r}")
    if labels.get("background") != 0:
        raise ValueError(f"{meta_path}: 'labels' must contain \"background\": 0")
    if isinstance(labels.get(IGNORE_LABEL), tuple):
        raise ValueError(f"{meta_path}: the 'ignore' label must be one integer, got {list(labels[IGNORE_LABEL])}")
    named: Dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, int):  # regions (lists) may share values with plain labels on purpose
            if value in named:
                raise ValueError(f"{meta_path}: labels {named[value]!r} and {name!r} have the same value {value}; "
                                 "each label needs its own value (use a list for a region of several labels)")
            named[value] = name
    return labels


def _parse_sites(raw, meta_path: Path) -> Dict[str, str]:
    if not isinstance(raw, dict):
        raise ValueError(f"{meta_path}: 'sites' must be an object {{case: site}}")
    return {str(case): str(site) for case, site in raw.items()}


def _values(value: LabelValue) -> Tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _match_name(name: str, names: List[str], kind: str, root: Path) -> str:
    if name in names:
        return name
    folded = [n for n in names if n.lower() == str(name).lower()]
    if len(folded) == 1:
        return folded[0]
    raise ValueError(f"{kind} {name!r} not in dataset {root} (its {kind}s: {', '.join(names)})")


# ------------------------------------------------------------------ the file's schema
_CHANNEL_NAMES = Map(Str(nonempty=True), keys=Str(pattern=r"[0-9]{1,4}", expected="a channel index such as \"0\""),
                     nonempty=True, expected='a non-empty object like {"0": "T1"}')
#: The schema of dataset.json (trmcore.schema): the keys trmcore reads; other keys (nnU-Net's
#: numTraining, a phantom's settings ...) are left to their readers. What the keys must mean
#: together (background 0, distinct values ...) is checked by DatasetLayout.read.
DATASET_JSON = Object({
    "channel_names": _CHANNEL_NAMES,
    "modality": _CHANNEL_NAMES,  # the nnU-Net v1 spelling
    "labels": Map(OneOf(Int(minimum=0), JsonList(Int(minimum=0), min_len=1),
                        expected="an integer >= 0 or a non-empty list of them"),
                  nonempty=True, expected='a non-empty object like {"background": 0, "CSF": 1}'),
    "file_ending": Str(pattern=r"\.[^/\\]+", expected="a file ending such as '.nii.gz'"),
    "sites": Map(OneOf(Str(nonempty=True), Int(), expected="a site name"), expected="an object {case: site}"),
    "name": Maybe(Str()),
})


def read_dataset_json(path: Union[str, Path]) -> dict:
    """``path`` (a dataset.json) checked against :data:`DATASET_JSON`: the keys it declares, typed.

    FileNotFoundError when absent; other OSErrors (permission denied ...) name the file and the cause;
    a malformed file is one ValueError naming the file and the key.
    """
    try:
        return read_json(path, DATASET_JSON)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: a dataset in the standard layout needs a dataset.json") from None

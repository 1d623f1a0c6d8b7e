"""The grid of the reproduction study: every training run as a job, every table entry as a cell (torch-free).

A :class:`Job` is one run: a source model trained from scratch, a fine-tuning
run started from another job's model, or the Fig. 2 risk maps of a pair. Jobs
are identified by a key derived from everything that determines their result,
so the same run shared by two tables (a source model, a hop of a path) is
trained once, and a finished job is found again in the cache.

A :class:`Cell` ties a table entry (table, seed, target, source, method,
few-shot size) to the job whose Dice it reports.

Example:
    >>> from trmcore.study.profiles import get_profile
    >>> grid = build_grid(get_profile("tiny"), seeds=[0], tables=["I"])
    >>> sorted({j.kind for j in grid.jobs})
    ['finetune', 'source']
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from trmcore.study.profiles import StudyProfile

TABLES = ("I", "II", "III", "seq", "fig2")
# The study's seeds and the tables that run every seed (the others run the first) when none are given.
DEFAULT_SEEDS = (0,)
DEFAULT_SEEDED_TABLES = ("I",)
TISSUE, TUMOUR = "tissue", "tumour"
JOB_KINDS = ("source", "finetune", "riskmap")


@dataclass(frozen=True)
class Job:
    """One run of the study.

    Attributes:
        kind: "source" (train from scratch on ``target``), "finetune" (fine-tune the
            model of job ``parent`` on ``target``) or "riskmap" (Fig. 2 maps of the
            source job ``parent`` and the fine-tuned job ``after`` on ``target``).
        dataset: "tissue" or "tumour" (which dataset the tasks live in).
        target: the task trained (or drawn), ``SITE/CHANNEL/LABELS``.
        seed: seeds initialisation, data order, validation split and few-shot subset.
        parent: key of the job whose model is the starting point (finetune, riskmap).
        source: the parent's task, or the path ``A > B`` of a sequential hop (for the tables).
        method: fine-tuning method (finetune only).
        shots: target training slices (None: all).
        reset_head: re-initialise the head (None: only when the class count differs).
        after: key of the fine-tuned job drawn "after" (riskmap only).
        foreground_share: the batches' foreground share (None: TrainConfig's default).
        trm_normalize: trm's loss denominator (None: TrainConfig's default).
        risk_scaling: trm's scaling of T (None: TrainConfig's default, "minmax").
        risk_balance, risk_anneal: trm's class balance and annealing of the weights (None: TrainConfig's).
    """

    kind: str
    dataset: str
    target: str
    seed: int
    parent: Optional[str] = None
    source: Optional[str] = None
    method: Optional[str] = None
    shots: Optional[int] = None
    reset_head: Optional[bool] = None
    after: Optional[str] = None
    foreground_share: Optional[float] = None
    trm_normalize: Optional[str] = None
    risk_scaling: Optional[str] = None
    risk_balance: Optional[str] = None
    risk_anneal: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {JOB_KINDS}, got {self.kind!r}")
        if self.kind != "source" and self.parent is None:
            raise ValueError(f"a {self.kind} job needs a parent job")

    @property
    def key(self) -> str:
        """Readable and unique: kind, target, source, method, shots, seed and a hash of all fields."""
        # Unset (None) fields stay out of the hash, so a field added later with default None keeps old keys.
        fields_set = {k: v for k, v in asdict(self).items() if v is not None}
        digest = hashlib.sha1(json.dumps(fields_set, sort_keys=True).encode()).hexdigest()[:10]
        parts = [self.kind, task_slug(self.target)]
        if self.source:
            parts.append("from-" + task_slug(self.source))
        if self.method:
            parts.append(self.method)
        if self.shots is not None:
            parts.append(f"n{self.shots}")
        if self.foreground_share is not None:
            parts.append(f"fg{self.foreground_share:g}")
        if self.trm_normalize is not None:
            parts.append(self.trm_normalize)
        if self.risk_scaling is not None:
            parts.append(self.risk_scaling)
        if self.risk_balance is not None:
            parts.append(f"bal-{self.risk_balance}")
        if self.risk_anneal:
            parts.append("anneal")
        parts.append(f"s{self.seed}")
        return "_".join(parts) + "_" + digest

    @property
    def depends_on(self) -> Tuple[str, ...]:
        return tuple(k for k in (self.parent, self.after) if k is not None)

    def describe(self) -> str:
        if self.kind == "source":
            return f"source {self.target} (seed {self.seed})"
        shots = "all" if self.shots is None else self.shots
        if self.kind == "riskmap":
            return f"risk maps {self.source} -> {self.target} (seed {self.seed})"
        variant = "".join(f", {k} {v}" for k, v in (("foreground share", self.foreground_share),
                                                        ("trm normalize", self.trm_normalize),
                                                        ("risk scaling", self.risk_scaling),
                                                        ("risk balance", self.risk_balance),
                                                        ("risk anneal", self.risk_anneal)) if v is not None)
        return f"{self.method} {self.source} -> {self.target}, {shots} slices{variant} (seed {self.seed})"


@dataclass(frozen=True)
class Column:
    """One column of Tables I-III: a method with a batch sampling and (trm) a loss denominator.

    ``label`` is the method's name for the defaults, with " uniform" (foreground share 0) or
    " fgP", and " eq7" (TRM Eq. 7 as published) / " image" / " robust" (robust risk scaling)
    appended otherwise; ``None`` settings mean TrainConfig's defaults.
    """

    label: str
    method: str
    foreground_share: Optional[float] = None
    trm_normalize: Optional[str] = None
    risk_scaling: Optional[str] = None

    @property
    def reference(self) -> str:
        """The vanilla column with the same sampling (what a collapse is measured against)."""
        return "vanilla" + ("" if self.foreground_share is None else _sampling_suffix(self.foreground_share))


def _sampling_suffix(share: float) -> str:
    return " uniform" if share == 0 else f" fg{share:g}"


def study_columns(profile: StudyProfile, methods: Sequence[str]) -> List[Column]:
    """The columns of a table with ``methods``: defaults first, then each of the profile's variants.

    Sampling variants apply to every method, normalisation variants to trm only (the other methods
    average over valid pixels).
    """
    columns = []
    for share in (None, *profile.sampling_variants):
        suffix = "" if share is None else _sampling_suffix(share)
        for method in methods:
            columns.append(Column(method + suffix, method, share))
            if method == "trm":
                for normalize in profile.normalize_variants:
                    name = {"batch": " eq7"}.get(normalize, f" {normalize}")
                    columns.append(Column(method + suffix + name, method, share, normalize))
                for scaling in profile.scaling_variants:
                    columns.append(Column(f"{method}{suffix} {scaling}", method, share, risk_scaling=scaling))
    return columns


@dataclass(frozen=True)
class Cell:
    """One entry of a table: the Dice of job ``key``.

    ``role`` distinguishes the kinds of entry of the sequential table:
    "direct" (single-source transfer from ``source``) and "path" (the selected path,
    ``source`` = the path's tasks joined by " > ").
    """

    table: str
    seed: int
    target: str
    source: str
    method: str
    key: str
    shots: Optional[int] = None
    role: str = ""


@dataclass
class StudyGrid:
    """All jobs (unique, dependencies first) and all table cells."""

    jobs: List[Job] = field(default_factory=list)
    cells: List[Cell] = field(default_factory=list)
    _seen: Dict[str, Job] = field(default_factory=dict, repr=False)

    def add(self, job: Job) -> str:
        key = job.key
        if key not in self._seen:
            self._seen[key] = job
            self.jobs.append(job)
        return key

    def job(self, key: str) -> Job:
        return self._seen[key]

    def cells_of(self, table: str) -> List[Cell]:
        return [c for c in self.cells if c.table == table]


@dataclass(frozen=True)
class SeqPlan:
    """The sequential-transfer choice for one target: the path of ``trm path`` and every direct source.

    ``path`` runs from the first task (a source model) through intermediate tasks to the
    target; ``direct_sources`` are the single sources compared with it, ``nearest_source`` the
    one the task distance ranks first.
    """

    target: str
    path: Tuple[str, ...]
    direct_sources: Tuple[str, ...]
    nearest_source: str
    path_cost: float


def task_slug(name: str) -> str:
    """A task name or path as a file-name part: ``*/T1/CSF`` -> ``T1-CSF``, ``A/T1/NCR+ED`` -> ``A-T1-NCRED``."""
    return (name.replace("*/", "").replace("/", "-").replace("+", "").replace(" > ", "~").replace("*", "all"))


def parse_tables(text: Optional[Iterable[str]]) -> Tuple[str, ...]:
    """``"I,II,seq"`` or a list -> the tables, in the canonical order; ValueError for unknown names."""
    if text is None:
        return TABLES
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in items if t not in TABLES]
    if unknown or not items:
        raise ValueError(f"unknown table(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(TABLES)}")
    return tuple(t for t in TABLES if t in items)


def _source_job(dataset: str, task: str, seed: int) -> Job:
    return Job("source", dataset, task, seed)


def _pairwise(grid: StudyGrid, table: str, dataset: str, tasks: Sequence[str], columns: Sequence[Column],
              seed: int) -> None:
    """Every task as source, every other as target, every column (Tables I and II)."""
    for target in tasks:
        for source in tasks:
            if source == target:
                continue
            parent = grid.add(_source_job(dataset, source, seed))
            for column in columns:
                key = grid.add(Job("finetune", dataset, target, seed, parent=parent, source=source,
                                   method=column.method, foreground_share=column.foreground_share,
                                   trm_normalize=column.trm_normalize, risk_scaling=column.risk_scaling))
                grid.cells.append(Cell(table, seed, target, source, column.label, key))


def _few_shot(grid: StudyGrid, profile: StudyProfile, seed: int) -> None:
    for source, target in profile.few_shot_pairs:
        parent = grid.add(_source_job(TISSUE, source, seed))
        for shots in profile.few_shot_sizes:
            for column in study_columns(profile, profile.few_shot_methods):
                key = grid.add(Job("finetune", TISSUE, target, seed, parent=parent, source=source,
                                   method=column.method, shots=shots, foreground_share=column.foreground_share,
                                   trm_normalize=column.trm_normalize, risk_scaling=column.risk_scaling))
                grid.cells.append(Cell("III", seed, target, source, column.label, key, shots=shots))


def _sequential(grid: StudyGrid, profile: StudyProfile, plans: Sequence[SeqPlan], seed: int) -> None:
    """Direct transfer from every source and the selected path, head re-initialised at every hop (SPEC 6)."""
    method, shots = profile.seq_method, profile.seq_shots
    for plan in plans:
        for source in plan.direct_sources:
            parent = grid.add(_source_job(TISSUE, source, seed))
            key = grid.add(Job("finetune", TISSUE, plan.target, seed, parent=parent, source=source, method=method,
                               shots=shots, reset_head=True))
            grid.cells.append(Cell("seq", seed, plan.target, source, method, key, shots, role="direct"))
        previous = grid.add(_source_job(TISSUE, plan.path[0], seed))
        for k, task in enumerate(plan.path[1:], start=1):
            last = k == len(plan.path) - 1
            # Intermediate hops train on all of their task's slices; only the target is few-shot.
            previous = grid.add(Job("finetune", TISSUE, task, seed, parent=previous,
                                    source=" > ".join(plan.path[:k]), method=method,
                                    shots=shots if last else None, reset_head=True))
        grid.cells.append(Cell("seq", seed, plan.target, " > ".join(plan.path[:-1]), method, previous, shots,
                               role="path"))


def _fig2(grid: StudyGrid, profile: StudyProfile, seed: int) -> None:
    for source, target in profile.fig2_pairs:
        parent = grid.add(_source_job(TISSUE, source, seed))
        tuned = grid.add(Job("finetune", TISSUE, target, seed, parent=parent, source=source, method="trm"))
        key = grid.add(Job("riskmap", TISSUE, target, seed, parent=parent, source=source, after=tuned))
        grid.cells.append(Cell("fig2", seed, target, source, "trm", key))


def build_grid(profile: StudyProfile, seeds: Sequence[int], tables: Sequence[str] = TABLES,
               seq_plans: Optional[Sequence[SeqPlan]] = None,
               extra_seed_tables: Sequence[str] = ("I",)) -> StudyGrid:
    """All jobs and cells of the study.

    Args:
        profile: sizes and tasks.
        seeds: Table I (and any table in ``extra_seed_tables``) runs every seed; the other
            tables run the first seed only.
        tables: subset of :data:`TABLES`.
        seq_plans: the sequential-transfer plans (required when "seq" is in ``tables``).
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    tables = parse_tables(tables)
    grid = StudyGrid()
    for index, seed in enumerate(seeds):
        def wanted(table: str) -> bool:
            return table in tables and (index == 0 or table in extra_seed_tables)

        if wanted("I"):
            _pairwise(grid, "I", TISSUE, profile.table1_tasks, study_columns(profile, profile.methods), seed)
        if wanted("II"):
            _pairwise(grid, "II", TUMOUR, profile.table2_tasks, study_columns(profile, profile.methods), seed)
        if wanted("III"):
            _few_shot(grid, profile, seed)
        if wanted("seq"):
            if not seq_plans:
                raise ValueError("the sequential table needs the path plans (seq_plans)")
            _sequential(grid, profile, seq_plans, seed)
        if wanted("fig2"):
            _fig2(grid, profile, seed)
    return grid

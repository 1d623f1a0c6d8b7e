"""``reproduce``: the whole reproduction study, from data to results.md.

1. the data: two generated phantoms (a single-site tissue dataset as iSeg, a
   four-site tumour dataset as FeTS) or real datasets in the standard layout;
2. the sequential-transfer plans (task affinity + path selection, SPEC 6);
3. the grid of jobs (:mod:`trmcore.study.grid`), run with a per-job cache
   (:mod:`trmcore.study.runner`);
4. tables (CSV), figures (PNG) and ``results.md`` from the cached results.

Example:
    >>> reproduce("study-quick", profile="quick", seeds=[0, 1, 2], tables=["I"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from trmcore.fileio import atomic_write_json, make_folder, visible_entries
from trmcore.schema import AnyJson, Map, Maybe, Object, Str, read_json
from trmcore.study.grid import (DEFAULT_SEEDED_TABLES, DEFAULT_SEEDS, TISSUE, TUMOUR, SeqPlan, StudyGrid, build_grid,
                                parse_tables)
from trmcore.study.profiles import DEFAULT_PROFILE, StudyProfile, get_profile
from trmcore.study.runner import RunSummary, StudyContext, load_results, run_grid

PathLike = Union[str, Path]


@dataclass
class StudyOutcome:
    """What :func:`reproduce` produced."""

    out_dir: Path
    grid: StudyGrid
    summary: RunSummary
    files: List[Path] = field(default_factory=list)
    plans: List[SeqPlan] = field(default_factory=list)


def parse_seeds(text: Union[str, Sequence[int]]) -> List[int]:
    """``"0,1,2"`` or a list -> distinct non-negative seeds in the given order; ValueError otherwise."""
    items = text.split(",") if isinstance(text, str) else list(text)
    seeds: List[int] = []
    for item in items:
        try:
            seed = int(str(item).strip())
        except ValueError:
            raise ValueError(f"seeds must be integers separated by commas, got {text!r}") from None
        if seed < 0:
            raise ValueError(f"seeds must be >= 0, got {seed}")
        if seed not in seeds:
            seeds.append(seed)
    if not seeds:
        raise ValueError("at least one seed is needed")
    return seeds


# Profile fields that change what a cached job holds; a study folder refuses a profile that differs in any.
RESULT_FIELDS = ("depth", "width", "batch_size", "lr", "source_iterations", "finetune_iterations", "val_fraction",
                 "tissue_data", "tumour_data", "tumour_source_iterations", "lr_schedule", "augment", "optimizer")
# The training recipe of study folders written before issue 22 (their study.json lacks these keys).
_LEGACY_TRAINING = {"lr_schedule": "constant", "augment": False, "optimizer": "adam"}


#: The schema of OUT/study.json (trmcore.schema): the profile as written (free-form, NaN allowed) and the
#: dataset of each kind (None: the phantom).
STUDY_JSON = Object({"profile": Map(AnyJson(finite=False)), "datasets": Map(Maybe(Str()))}, extra="keep")


def read_study_json(out: Path) -> dict:
    """OUT/study.json checked against :data:`STUDY_JSON` ({} when absent); ValueError naming it when malformed."""
    try:
        return read_json(Path(out) / "study.json", STUDY_JSON)
    except FileNotFoundError:
        return {}


def _flat_profile(profile: dict) -> dict:
    """The RESULT_FIELDS of a study.json profile, whether it nests model and training (now) or not (before)."""
    model, training = profile.get("model"), profile.get("training")
    profile = {**_LEGACY_TRAINING, **profile}
    if isinstance(model, dict) and isinstance(training, dict):
        training = {**_LEGACY_TRAINING, **training}
        profile = {**profile, **{k: training[k] for k in _LEGACY_TRAINING}, "depth": model.get("depth"),
                   "width": model.get("width"),
                   "batch_size": training.get("batch_size"), "lr": training.get("lr"),
                   "finetune_iterations": training.get("iterations"), "val_fraction": training.get("val_fraction")}
    return profile


def _fingerprint(record: dict) -> dict:
    profile = _flat_profile(record.get("profile", {}))
    return json.loads(json.dumps({"profile": {k: profile.get(k) for k in RESULT_FIELDS},
                                  "datasets": record.get("datasets")}))


def _check_study_folder(out: Path, profile: StudyProfile, datasets: Dict[str, Optional[str]]) -> None:
    """Refuse to mix two studies of different settings in one folder (their cache keys would collide).

    Only the settings that change a job's result count (:data:`RESULT_FIELDS` and the datasets);
    the task lists may change, so a study can be extended with more tables or seeds.
    """
    record = {"profile": profile.to_dict(), "datasets": datasets}
    marker = out / "study.json"
    if not marker.is_file() and visible_entries(out):
        # A study resumes in its own folder; any other non-empty folder is not ours to write into.
        raise FileExistsError(f"{out} exists, is not empty and holds no study (no study.json); "
                              "choose a new -o, or the folder of an earlier `trm reproduce` to resume it")
    if marker.is_file():
        try:
            previous = read_study_json(out)
        except ValueError:
            previous = None  # unreadable: nothing to compare with; rewritten below
        if previous and _fingerprint(previous) != _fingerprint(record):
            differing = [k for k in RESULT_FIELDS
                         if _fingerprint(previous)["profile"].get(k) != _fingerprint(record)["profile"].get(k)]
            if _fingerprint(previous)["datasets"] != _fingerprint(record)["datasets"]:
                differing.append("datasets")
            raise ValueError(f"{out} holds a study with other settings (profile "
                             f"{previous.get('profile', {}).get('name')!r}; differing: {', '.join(differing)}); "
                             "choose another -o")
    make_folder(out)
    atomic_write_json(marker, record, overwrite=True, indent=1)


def _phantom(out: Path, spec, progress: bool) -> Path:
    """The phantom of ``spec`` in ``out``: reused when complete and made with the same settings, else (re)generated."""
    from trmcore.data import make_phantom

    try:
        meta = read_json(out / "dataset.json")
        made = meta.get("phantom", {})
        same = (made.get("size") == list(spec.size) and made.get("seed") == spec.seed
                and [p.get("name") for p in made.get("site_profiles", [])] == list(spec.sites)
                and bool(made.get("tumour")) == bool(spec.tumour)
                and len(list((out / "labelsTr").glob("*.nii.gz"))) == spec.n_cases)
    except (OSError, ValueError, AttributeError):
        same = False
    if same:
        return out
    return make_phantom(out, n_cases=spec.n_cases, sites=list(spec.sites), size=spec.size, tumour=spec.tumour,
                        seed=spec.seed, overwrite=True, progress=progress)


def _check_tasks(root: Path, tasks: Sequence[str], what: str) -> None:
    from trmcore.data import DatasetLayout
    from trmcore.selection.tasks import check_task, parse_task_name

    layout = DatasetLayout.read(root)
    for name in tasks:
        try:
            check_task(layout, parse_task_name(name, source=what))
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None


def prepare_datasets(out: Path, profile: StudyProfile, tables: Sequence[str], data: Optional[PathLike],
                     tumour_data: Optional[PathLike], progress: bool) -> Dict[str, str]:
    """The dataset folder of each kind the tables need: given ones checked, phantoms generated (once)."""
    datasets: Dict[str, str] = {}
    tissue_tables = {"I", "III", "seq", "fig2"} & set(tables)
    if tissue_tables:
        if data is not None:
            root = Path(data)
            if not (root / "dataset.json").is_file():
                raise FileNotFoundError(f"--data {root}: no dataset.json (expected the standard layout)")
            tissue_tasks = set(profile.table1_tasks) | set(profile.seq_tasks) | {
                t for pair in profile.few_shot_pairs + profile.fig2_pairs for t in pair}
            _check_tasks(root, sorted(tissue_tasks), "--data")
        else:
            root = _phantom(out / "data" / TISSUE, profile.tissue_data, progress)
        datasets[TISSUE] = str(root.resolve())
    if "II" in tables:
        if tumour_data is not None:
            root = Path(tumour_data)
            if not (root / "dataset.json").is_file():
                raise FileNotFoundError(f"--tumour-data {root}: no dataset.json (expected the standard layout)")
            _check_tasks(root, profile.table2_tasks, "--tumour-data")
        else:
            root = _phantom(out / "data" / TUMOUR, profile.tumour_data, progress)
        datasets[TUMOUR] = str(root.resolve())
    return datasets


def default_workers(profile: StudyProfile, device: Optional[str], threads: Optional[int] = None) -> int:
    """Worker processes that fill the CPU without oversubscribing it.

    One process on a GPU (they would share it) or when every process uses all torch threads
    (``threads == 0``); otherwise as many single- or few-threaded processes as the cores allow, at
    most 4. The quick profile's tiny U-Nets run faster as 2 one-thread processes than as one
    two-thread process on 2 cores (measured: 39 vs 94 ms per source iteration on a loaded machine).
    """
    import os

    threads = profile.threads if threads is None else threads
    if (device is not None and device.startswith("cuda")) or threads == 0:
        return 1
    if device is None:
        try:
            import torch

            if torch.cuda.is_available():
                return 1
        except ImportError:
            pass
    return max(1, min(4, (os.cpu_count() or 1) // threads))


def reproduce(out_dir: PathLike, profile: Union[str, StudyProfile] = DEFAULT_PROFILE,
              seeds: Union[str, Sequence[int]] = DEFAULT_SEEDS,
              tables: Union[str, Sequence[str], None] = None, data: Optional[PathLike] = None,
              tumour_data: Optional[PathLike] = None, device: Optional[str] = None, workers: Optional[int] = None,
              threads: Optional[int] = None, progress: bool = True,
              seeded_tables: Union[str, Sequence[str]] = DEFAULT_SEEDED_TABLES) -> StudyOutcome:
    """Run (or resume) the study into ``out_dir`` and write its tables, figures and results.md.

    Args:
        out_dir: study folder (data/, runs/, cache/, tables/, figures/, results.md).
        profile: "quick", "full", "tiny" or a :class:`StudyProfile`.
        seeds: the tables in ``seeded_tables`` (default Table I) run every seed; the others the first one.
        tables: subset of I, II, III, seq, fig2 (default all).
        data: a real tissue dataset (standard layout) instead of the phantom;
            tumour_data: the same for Table II.
        device: cpu / cuda / cuda:N (default: cuda when available).
        workers: parallel processes (default: :func:`default_workers`); threads: torch threads per
            process (default: the profile's).
    """
    from trmcore.study.report import write_outputs
    from trmcore.study.sequential import plan_paths

    started = time.perf_counter()
    profile = get_profile(profile) if isinstance(profile, str) else profile
    tables = parse_tables(tables)
    seeded_tables = parse_tables(seeded_tables)
    seeds = parse_seeds(seeds)
    if workers is None:
        workers = default_workers(profile, device, threads)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    _check_study_folder(out, profile, {"tissue": None if data is None else str(Path(data).resolve()),
                                       "tumour": None if tumour_data is None else str(Path(tumour_data).resolve())})
    datasets = prepare_datasets(out, profile, tables, data, tumour_data, progress)
    plans = plan_paths(datasets[TISSUE], profile, out / "affinity") if "seq" in tables else []
    grid = build_grid(profile, seeds, tables, seq_plans=plans, extra_seed_tables=seeded_tables)
    ctx = StudyContext(str(out.resolve()), datasets, profile, device,
                       profile.threads if threads is None else threads)
    summary = run_grid(grid, ctx, workers=workers, progress=progress)
    results = load_results(ctx, grid)
    files = write_outputs(out, profile, grid, results, plans, seeds, tables, summary,
                          wall_s=time.perf_counter() - started, seeded_tables=seeded_tables)
    return StudyOutcome(out, grid, summary, files, plans)

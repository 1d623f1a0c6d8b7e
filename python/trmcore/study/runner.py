"""Run the study's jobs with a per-job cache, so an interrupted study resumes where it stopped.

Layout under the study folder ``DIR``:

- ``DIR/runs/KEY/``: the run folder of job KEY (trmcore.training's model.safetensors, run.json, ...);
- ``DIR/cache/KEY.json``: the job's result, written (atomically) only once the job finished;
- ``DIR/figures/fig2/KEY/``: risk-map panels of riskmap jobs.

A job counts as done when its cache entry reads back with the right key and
its run folder still holds run.json; anything else (no entry, a truncated or
foreign entry, a lost run folder) is run again from scratch, after removing the
half-written run folder. Jobs run in dependency order, in this process or in
``workers`` spawned processes (each with ``threads`` torch threads), under one
progress bar over the whole grid. A failing job is reported, never cached; the
jobs that need it are skipped, the rest go on.
"""

from __future__ import annotations

import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from trmcore.fileio import atomic_write_json, make_folder, remove_output_folder
from trmcore.schema import AnyJson, Int, Map, Object, Str, read_json
from trmcore.study.grid import TUMOUR, Job, StudyGrid
from trmcore.study.profiles import StudyProfile
from trmcore.training.methods import PLAIN_METHOD

CACHE_VERSION = 1


@dataclass(frozen=True)
class StudyContext:
    """What a worker needs to run a job: where to write, which data, the profile, the device."""

    out_dir: str
    datasets: Dict[str, str]
    profile: StudyProfile
    device: Optional[str] = None
    threads: int = 1

    def run_dir(self, key: str) -> Path:
        return Path(self.out_dir) / "runs" / key

    def cache_file(self, key: str) -> Path:
        return Path(self.out_dir) / "cache" / f"{key}.json"

    def data(self, job: Job) -> str:
        if job.dataset not in self.datasets:
            raise ValueError(f"job {job.key} needs the {job.dataset!r} dataset, which this study has not got")
        return self.datasets[job.dataset]


@dataclass
class RunSummary:
    """What :func:`run_grid` did: keys executed now, found in the cache, failed (with the error) and skipped."""

    executed: List[str] = field(default_factory=list)
    cached: List[str] = field(default_factory=list)
    failed: Dict[str, str] = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)
    wall_s: float = 0.0


#: The schema of a cache entry (trmcore.schema); a result may hold NaN (a class without voxels: no Dice).
CACHE_JSON = Object({"version": Int(), "key": Str(), "job": Map(AnyJson(finite=False)),
                     "result": Map(AnyJson(finite=False))}, required=("version", "key", "result"))


def read_cached(ctx: StudyContext, job: Job) -> Optional[Dict[str, Any]]:
    """The cached result of ``job``, or None when there is none or it cannot be trusted."""
    path = ctx.cache_file(job.key)
    try:
        entry = read_json(path, CACHE_JSON)
    except (OSError, ValueError):
        return None
    if entry.get("key") != job.key or entry.get("version") != CACHE_VERSION:
        return None
    if job.kind in ("source", "finetune") and not (ctx.run_dir(job.key) / "run.json").is_file():
        return None
    if job.kind == "finetune" and not isinstance(entry["result"].get("dice"), (int, float)):
        return None
    return entry["result"]


def write_cached(ctx: StudyContext, job: Job, result: Dict[str, Any]) -> Path:
    path = ctx.cache_file(job.key)
    make_folder(path.parent)
    atomic_write_json(path, {"version": CACHE_VERSION, "key": job.key, "job": asdict(job), "result": result},
                      overwrite=True, indent=1)
    return path


def load_results(ctx: StudyContext, grid: StudyGrid) -> Dict[str, Dict[str, Any]]:
    """{key: result} of every job of ``grid`` with a trustworthy cache entry."""
    results = {}
    for job in grid.jobs:
        result = read_cached(ctx, job)
        if result is not None:
            results[job.key] = result
    return results


def _train_config(ctx: StudyContext, job: Job):
    """The profile's training settings with the job's seed, method and few-shot size, validated at the end."""
    from dataclasses import replace

    base = ctx.profile.training
    source = job.kind == "source"
    iterations = ctx.profile.source_iterations if source else base.iterations
    if source and job.dataset == TUMOUR and ctx.profile.tumour_source_iterations is not None:
        iterations = ctx.profile.tumour_source_iterations
    variant = {k: v for k, v in (("foreground_share", job.foreground_share), ("trm_normalize", job.trm_normalize),
                                 ("risk_scaling", job.risk_scaling), ("risk_balance", job.risk_balance),
                                 ("risk_anneal", job.risk_anneal)) if v is not None}
    # A job's method is the fine-tuning method; source models train with plain cross-entropy.
    return replace(base, iterations=iterations, seed=job.seed, method=PLAIN_METHOD if source else job.method,
                   freeze="none" if source else base.freeze, few_shot=job.shots, val_every=iterations, **variant)


def execute_job(job: Job, ctx: StudyContext) -> Dict[str, Any]:
    """Run one job (in this process) and return its result; the caller caches it."""
    from trmcore.selection.tasks import parse_task_name
    from trmcore.training.riskmap_files import write_risk_maps
    from trmcore.training.runinfo import read_run_info
    from trmcore.training.trainer import finetune, train

    started = time.perf_counter()
    data = ctx.data(job)
    spec = parse_task_name(job.target, source="study task").to_spec()
    run_dir = ctx.run_dir(job.key)
    if job.kind == "riskmap":
        tuned = ctx.run_dir(job.after)
        held_out = read_run_info(tuned).val_cases[:1]
        out = Path(ctx.out_dir) / "figures" / "fig2" / job.key
        written = write_risk_maps(data, ctx.run_dir(job.parent), out, ",".join(spec.channels), ",".join(spec.labels),
                                  spec.site, after_run=tuned, cases=held_out or None, device=ctx.device,
                                  progress=False, overwrite=True)
        pngs = [str(p.relative_to(ctx.out_dir)) for p in written if p.suffix == ".png"]
        return {"png": pngs, "cases": held_out, "wall_s": time.perf_counter() - started}
    if run_dir.exists():
        remove_output_folder(run_dir, "train")  # a half-written run of an interrupted study (only a trm run)
    config = _train_config(ctx, job)
    p = ctx.profile
    if job.kind == "source":
        info = train(data, spec, run_dir, config, p.model, device=ctx.device, progress=False)
        return {"dice": info.val_dice, "per_class": final_class_dice(run_dir, info.label_names[1:]),
                "val_cases": info.val_cases, "wall_s": time.perf_counter() - started}
    info = finetune(data, spec, ctx.run_dir(job.parent), run_dir, config, device=ctx.device, progress=False,
                    reset_head=job.reset_head)
    if info.val_dice is None:
        raise ValueError(f"{job.target}: no held-out case to measure Dice on (val_fraction {p.training.val_fraction})")
    # The Dice fine-tuning measured at its last iteration on the held-out volumes (mean over volumes of the
    # per-volume mean over foreground classes), as `trm evaluate` would print it.
    return {"dice": info.val_dice, "per_class": final_class_dice(run_dir, info.label_names[1:]),
            "val_cases": info.val_cases, "train_cases": info.train_cases,
            "risk_warnings": [w.split(":")[0] for w in (info.risk_diagnostics or {}).get("warnings", [])],
            "wall_s": time.perf_counter() - started}


def final_class_dice(run_dir: Path, class_names: Sequence[str]) -> Dict[str, Optional[float]]:
    """Per-class held-out Dice of the last validation, from the run's metrics.csv ({} when it has none)."""
    import csv

    if not (run_dir / "metrics.csv").is_file():
        return {}
    with (run_dir / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("val_dice")]
    last = rows[-1] if rows else {}
    return {name: float(last[f"val_dice_{name}"]) if last.get(f"val_dice_{name}") else None for name in class_names}


def _init_worker(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _safe_execute(job: Job, ctx: StudyContext) -> Dict[str, Any]:
    """execute_job that returns the error instead of raising (for worker processes)."""
    try:
        return {"ok": True, "result": execute_job(job, ctx)}
    except Exception as err:  # noqa: BLE001 - reported by the runner, the study goes on
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}


def run_grid(grid: StudyGrid, ctx: StudyContext, workers: int = 1, progress: bool = True,
             log: Callable[[str], None] = print) -> RunSummary:
    """Run every job of ``grid`` that the cache does not hold yet.

    Args:
        grid: the jobs (dependencies before dependents).
        ctx: output folder, datasets, profile, device.
        workers: parallel processes (1 = run in this process).
        progress: one tqdm bar over the whole grid (cached jobs count as done).
        log: where failures are reported.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    summary = RunSummary()
    done = set()
    todo: List[Job] = []
    for job in grid.jobs:
        if read_cached(ctx, job) is not None:
            done.add(job.key)
            summary.cached.append(job.key)
        else:
            todo.append(job)
    bar = tqdm(total=len(grid.jobs), initial=len(done), disable=not progress, desc="study", unit="job",
               dynamic_ncols=True)

    def finish(job: Job, outcome: Dict[str, Any]) -> None:
        if outcome["ok"]:
            write_cached(ctx, job, outcome["result"])
            done.add(job.key)
            summary.executed.append(job.key)
        else:
            summary.failed[job.key] = outcome["error"]
            log(f"job failed: {job.describe()}: {outcome['error']}")
        bar.update(1)

    def blocked(job: Job) -> bool:
        return any(dep in summary.failed or dep in summary.skipped for dep in job.depends_on)

    def skip(job: Job) -> None:
        summary.skipped.append(job.key)
        bar.update(1)

    try:
        if workers == 1:
            _init_worker(ctx.threads)
            for job in todo:
                if blocked(job):
                    skip(job)
                    continue
                bar.set_postfix_str(job.describe(), refresh=True)
                finish(job, _safe_execute(job, ctx))
        else:
            _run_parallel(todo, ctx, workers, done, finish, blocked, skip, bar)
    finally:
        bar.close()
    summary.wall_s = time.perf_counter() - started
    return summary


def _run_parallel(todo: Sequence[Job], ctx: StudyContext, workers: int, done: set, finish, blocked, skip, bar) -> None:
    import multiprocessing

    waiting = list(todo)
    running: Dict[Future, Job] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(ctx.threads,)) as pool:
        while waiting or running:
            still_waiting = []
            for job in waiting:
                if blocked(job):
                    skip(job)
                elif all(dep in done for dep in job.depends_on):
                    running[pool.submit(_safe_execute, job, ctx)] = job
                else:
                    still_waiting.append(job)
            waiting = still_waiting
            if not running:
                if waiting:  # unreachable dependencies: nothing can start any more
                    for job in waiting:
                        skip(job)
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                bar.set_postfix_str(job.describe(), refresh=False)
                finish(job, future.result())

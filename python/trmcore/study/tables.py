"""Tables of the study from the cached job results: CSV files and Markdown in the papers' layout (torch-free).

Tables I and II: one row per (target, source) pair, one column per method,
the gain of trm over vanilla; then the average over sources per target and
over everything. With several seeds every entry is mean +- standard deviation
over the seeds (sample std, ddof=1). Table III: (pair, few-shot size) rows,
vanilla vs trm. Sequential: per target, direct transfer from the best single
source (chosen with hindsight, on the held-out Dice), from the source nearest
by the task distance, and along the path of ``trm path``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from trmcore.fileio import atomic_write_text
from trmcore.study.grid import SeqPlan, StudyGrid

GAIN = "trm - vanilla"
# A run collapsed: Dice below COLLAPSE_LOW where vanilla (same sampling, seed and pair) reached above COLLAPSE_HIGH.
COLLAPSE_LOW, COLLAPSE_HIGH = 0.05, 0.1


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation of ``n`` values (std is nan for n < 2)."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Stat":
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not vals:
            return cls(float("nan"), float("nan"), 0)
        return cls(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan"), len(vals))

    def text(self, digits: int = 3, signed: bool = False) -> str:
        if self.n == 0:
            return "n/a"
        sign = "+" if signed else ""
        body = f"{self.mean:{sign}.{digits}f}"
        return body if self.n < 2 else f"{body} ± {self.std:.{digits}f}"


def cell_rows(grid: StudyGrid, results: Dict[str, dict], table: str) -> List[dict]:
    """Long-format rows of ``table``: seed, target, source, method, shots, role, dice (None when not run)."""
    rows = []
    for cell in grid.cells_of(table):
        result = results.get(cell.key)
        rows.append({"seed": cell.seed, "target": cell.target, "source": cell.source, "method": cell.method,
                     "shots": "all" if cell.shots is None else cell.shots, "role": cell.role,
                     "dice": None if result is None else result.get("dice"), "job": cell.key})
    return rows


def collapse_rows(rows: Sequence[dict], references: Dict[str, str], warnings: Optional[Dict[str, List[str]]] = None
                  ) -> List[dict]:
    """Per column: runs compared, collapses (Dice < COLLAPSE_LOW where its vanilla reference > COLLAPSE_HIGH).

    ``eligible`` counts the runs whose reference is above COLLAPSE_HIGH (only those can collapse) and
    ``lowest_eligible`` is the lowest Dice among them (None when there is none): how close the column
    came to a collapse.

    Args:
        rows: long-format rows of a table (method = column label).
        references: column label -> the vanilla column with the same sampling.
        warnings: job key -> the risk-map warnings of the run (trm only), counted per column.
    """
    dice = {(r["seed"], r["target"], r["source"], r["shots"], r["method"]): r["dice"] for r in rows}
    out = []
    for column, reference in references.items():
        compared = collapsed = warned = 0
        eligible: List[float] = []
        runs = [r for r in rows if r["method"] == column and r["dice"] is not None]
        for r in runs:
            base = dice.get((r["seed"], r["target"], r["source"], r["shots"], reference))
            if base is None:
                continue
            compared += 1
            if base > COLLAPSE_HIGH:
                eligible.append(r["dice"])
            collapsed += int(r["dice"] < COLLAPSE_LOW and base > COLLAPSE_HIGH)
            warned += int(bool((warnings or {}).get(r["job"])))
        out.append({"column": column, "reference": reference, "runs": compared, "eligible": len(eligible),
                    "collapses": collapsed, "lowest_eligible": min(eligible) if eligible else None,
                    "risk_map_warnings": warned})
    return out


def collapse_markdown(collapses: Sequence[dict]) -> str:
    lines = [f"| column | runs | of which its vanilla > {COLLAPSE_HIGH} | collapses (Dice < {COLLAPSE_LOW} there) "
             "| lowest Dice there | runs with risk-map warnings |", "|---|---|---|---|---|---|"]
    for c in collapses:
        lowest = "-" if c["lowest_eligible"] is None else f"{c['lowest_eligible']:.3f}"
        lines.append(f"| {c['column']} | {c['runs']} | {c['eligible']} | {c['collapses']} | {lowest} "
                     f"| {c['risk_map_warnings']} |")
    return "\n".join(lines)


def source_rows(grid: StudyGrid, results: Dict[str, dict], dataset: str,
                runs_dir: Optional[Path] = None) -> List[dict]:
    """The source models of ``dataset``: task, seed, held-out Dice (None when not run) and per class.

    ``per_class`` ({class: Dice or None}) comes from the cached result or, for results cached before
    it was recorded, from the run's metrics.csv under ``runs_dir``.
    """
    from trmcore.selection.tasks import parse_task_name
    from trmcore.study.runner import final_class_dice

    rows = []
    for job in grid.jobs:
        if job.kind != "source" or job.dataset != dataset:
            continue
        result = results.get(job.key) or {}
        per_class = result.get("per_class")
        if per_class is None and result and runs_dir is not None:
            per_class = final_class_dice(Path(runs_dir) / job.key, parse_task_name(job.target).labels)
        rows.append({"dataset": dataset, "task": job.target, "seed": job.seed, "dice": result.get("dice"),
                     "per_class": per_class or {}, "job": job.key})
    return rows


def source_csv_rows(rows: Sequence[dict]) -> List[dict]:
    """:func:`source_rows` for a CSV: ``per_class`` as "NAME DICE; ..." ('-' for None)."""
    return [dict(r, per_class="; ".join(f"{k} {'-' if v is None else f'{v:.3f}'}" for k, v in r["per_class"].items()))
            for r in rows]


def source_markdown(rows: Sequence[dict]) -> str:
    """One line per source task (rows of :func:`source_rows`): mean held-out Dice over seeds, its range,
    and the per-class means."""
    lines = ["| source task | models | Dice (mean) | range | per class (mean) |", "|---|---|---|---|---|"]
    for (task,), group in sorted(_by([r for r in rows if r["dice"] is not None], "task").items()):
        dice = [r["dice"] for r in group]
        classes: Dict[str, List[float]] = {}
        for r in group:
            for name, value in r["per_class"].items():
                if value is not None:
                    classes.setdefault(name, []).append(value)
        per_class = ", ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in classes.items())
        lines.append(f"| {_short(task)} | {len(dice)} | {sum(dice) / len(dice):.3f} | "
                     f"{min(dice):.3f}-{max(dice):.3f} | {per_class or '-'} |")
    return "\n".join(lines)


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    handle = io.StringIO(newline="")
    if rows:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v))
                             for k, v in row.items()})
    atomic_write_text(path, handle.getvalue(), overwrite=True)
    return path


def _by(rows: Sequence[dict], *keys: str) -> Dict[tuple, List[dict]]:
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def _per_seed(rows: Sequence[dict], method: str) -> Dict[int, float]:
    return {r["seed"]: r["dice"] for r in rows if r["method"] == method and r["dice"] is not None}


def _gain_per_seed(rows: Sequence[dict]) -> Dict[int, float]:
    trm, vanilla = _per_seed(rows, "trm"), _per_seed(rows, "vanilla")
    return {s: trm[s] - vanilla[s] for s in trm if s in vanilla}


@dataclass
class PairTable:
    """Table I / II aggregated over seeds.

    ``pairs[(target, source)][method]`` and ``targets[target][method]`` (mean over sources,
    then over seeds) and ``overall[method]`` (mean over all pairs, then over seeds) are
    :class:`Stat`; the method ``GAIN`` is trm - vanilla.
    """

    methods: List[str]
    pairs: Dict[Tuple[str, str], Dict[str, Stat]]
    targets: Dict[str, Dict[str, Stat]]
    overall: Dict[str, Stat]
    seeds: List[int]
    gains_per_pair: Dict[Tuple[str, str], Dict[int, float]]


def pair_table(rows: Sequence[dict], methods: Sequence[str]) -> PairTable:
    """Aggregate long-format rows of Table I / II."""
    methods = list(methods)
    with_gain = methods + ([GAIN] if "trm" in methods and "vanilla" in methods else [])
    seeds = sorted({r["seed"] for r in rows})

    def stats(group: Sequence[dict], average_over: Optional[str]) -> Dict[str, Stat]:
        out = {}
        for method in with_gain:
            per_seed = []
            for seed in seeds:
                chosen = [r for r in group if r["seed"] == seed]
                if method == GAIN:
                    units = [_gain_per_seed(g).get(seed) for g in _by(chosen, average_over or "source").values()]
                else:
                    units = [r["dice"] for r in chosen if r["method"] == method]
                units = [u for u in units if u is not None]
                if units:
                    per_seed.append(float(np.mean(units)))
            out[method] = Stat.of(per_seed)
        return out

    pairs = {key: stats(group, None) for key, group in sorted(_by(rows, "target", "source").items())}
    targets = {target: stats(group, "source") for (target,), group in sorted(_by(rows, "target").items())}
    overall_rows = [dict(r, pair=(r["target"], r["source"])) for r in rows]
    overall = stats(overall_rows, "pair")
    gains = {key: _gain_per_seed(group) for key, group in _by(rows, "target", "source").items()}
    return PairTable(with_gain, pairs, targets, overall, seeds, gains)


def _bold_best(values: Dict[str, Stat], methods: Sequence[str]) -> Dict[str, str]:
    texts = {m: values[m].text() for m in values}
    plain = [m for m in methods if m != GAIN and values[m].n > 0]
    if plain:
        best = max(plain, key=lambda m: values[m].mean)
        texts[best] = f"**{texts[best]}**"
    if GAIN in values:
        texts[GAIN] = values[GAIN].text(signed=True)
    return texts


def _short(task: str) -> str:
    return task[2:] if task.startswith("*/") else task


def pair_table_markdown(table: PairTable) -> str:
    """Per-pair rows, then the per-target average and the overall average (bold: best method of the row)."""
    header = "| target | source | " + " | ".join(table.methods) + " |"
    lines = [header, "|" + "---|" * (len(table.methods) + 2)]
    for (target, source), values in table.pairs.items():
        texts = _bold_best(values, table.methods)
        lines.append(f"| {_short(target)} | {_short(source)} | " + " | ".join(texts[m] for m in table.methods) + " |")
    lines.append("")
    lines.append("| target | average over sources | " + " | ".join(table.methods) + " |")
    lines.append("|" + "---|" * (len(table.methods) + 2))
    for target, values in table.targets.items():
        texts = _bold_best(values, table.methods)
        n_sources = len({s for (t, s) in table.pairs if t == target})
        lines.append(f"| {_short(target)} | {n_sources} source{'s' if n_sources != 1 else ''} | " + " | ".join(texts[m] for m in table.methods) + " |")
    texts = _bold_best(table.overall, table.methods)
    lines.append(f"| **Average** | {len(table.pairs)} pairs | " + " | ".join(texts[m] for m in table.methods) + " |")
    return "\n".join(lines)


def pair_summary_rows(table: PairTable) -> List[dict]:
    """CSV rows of the aggregated table: level (pair/target/overall), target, source, method mean/std/n."""
    rows = []

    def add(level: str, target: str, source: str, values: Dict[str, Stat]) -> None:
        for method, stat in values.items():
            rows.append({"level": level, "target": target, "source": source, "method": method,
                         "mean": stat.mean, "std": stat.std, "seeds": stat.n})

    for (target, source), values in table.pairs.items():
        add("pair", target, source, values)
    for target, values in table.targets.items():
        add("target", target, "(average)", values)
    add("overall", "(all)", "(all)", table.overall)
    return rows


def gain_counts(table: PairTable) -> Dict[str, int]:
    """How many pairs trm beats vanilla on average, in every seed, or loses in every seed."""
    counts = {"pairs": 0, "mean_positive": 0, "all_seeds_positive": 0, "all_seeds_negative": 0}
    for gains in table.gains_per_pair.values():
        if not gains:
            continue
        counts["pairs"] += 1
        values = list(gains.values())
        counts["mean_positive"] += int(np.mean(values) > 0)
        counts["all_seeds_positive"] += int(all(v > 0 for v in values))
        counts["all_seeds_negative"] += int(all(v < 0 for v in values))
    return counts


def per_seed_markdown(rows: Sequence[dict], methods: Sequence[str]) -> str:
    """One row per seed: each method's average over all pairs of that seed, and the gain of trm."""
    methods = list(methods)
    columns = methods + ([GAIN] if "trm" in methods and "vanilla" in methods else [])
    lines = ["| seed | pairs | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
    for (seed,), group in sorted(_by(rows, "seed").items()):
        pairs = _by(group, "target", "source")
        values = {m: [d for g in pairs.values() for d in _per_seed(g, m).values()] for m in methods}
        if GAIN in columns:
            values[GAIN] = [d for g in pairs.values() for d in _gain_per_seed(g).values()]
        texts = [f"{np.mean(values[c]):+.3f}" if c == GAIN and values[c] else
                 (f"{np.mean(values[c]):.3f}" if values[c] else "n/a") for c in columns]
        lines.append(f"| {seed} | {len(pairs)} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def few_shot_markdown(rows: Sequence[dict], methods: Sequence[str]) -> Tuple[str, List[dict]]:
    """Table III: rows (source -> target, slices), columns methods and the gain; averages per size."""
    methods = list(methods)
    has_gain = "trm" in methods and "vanilla" in methods
    columns = methods + ([GAIN] if has_gain else [])
    lines = ["| target | source | slices | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    summary = []
    sizes = sorted({r["shots"] for r in rows}, key=lambda s: -(s if isinstance(s, int) else 10**9))
    for (target, source, shots), group in _by(rows, "target", "source", "shots").items():
        values = {m: Stat.of(_per_seed(group, m).values()) for m in methods}
        if has_gain:
            values[GAIN] = Stat.of(_gain_per_seed(group).values())
        texts = _bold_best(values, columns)
        lines.append(f"| {_short(target)} | {_short(source)} | {shots} | " + " | ".join(texts[c] for c in columns) + " |")
    lines.append("")
    lines.append("| slices | pairs | " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * (len(columns) + 2))
    for shots in sizes:
        group = [r for r in rows if r["shots"] == shots]
        per_pair = _by(group, "target", "source")
        values = {m: Stat.of([np.mean(list(_per_seed(g, m).values())) for g in per_pair.values()
                              if _per_seed(g, m)]) for m in methods}
        if has_gain:
            values[GAIN] = Stat.of([np.mean(list(_gain_per_seed(g).values())) for g in per_pair.values()
                                    if _gain_per_seed(g)])
        texts = {c: values[c].text(signed=c == GAIN) for c in columns}
        lines.append(f"| {shots} | {len(per_pair)} | " + " | ".join(texts[c] for c in columns) + " |")
        for c in columns:
            summary.append({"slices": shots, "method": c, "mean_over_pairs": values[c].mean,
                            "std_over_pairs": values[c].std, "pairs": values[c].n})
    lines.append("")
    lines.append("(In the averages, ± is the spread over the pairs, not over seeds.)")
    return "\n".join(lines), summary


def sequential_rows(rows: Sequence[dict], plans: Sequence[SeqPlan]) -> List[dict]:
    """One row per (seed, target): best direct source (hindsight), nearest source, path, and their Dice."""
    out = []
    plan_of = {p.target: p for p in plans}
    for (seed, target), group in sorted(_by(rows, "seed", "target").items()):
        plan = plan_of.get(target)
        direct = {r["source"]: r["dice"] for r in group if r["role"] == "direct" and r["dice"] is not None}
        path = [r for r in group if r["role"] == "path"]
        best = max(direct, key=direct.get) if direct else None
        path_dice = path[0]["dice"] if path else None
        nearest = plan.nearest_source if plan else None
        out.append({
            "seed": seed, "target": target,
            "best_direct_source": best, "best_direct_dice": direct.get(best) if best else None,
            "nearest_source": nearest, "nearest_direct_dice": direct.get(nearest) if nearest else None,
            "path": " > ".join(plan.path) if plan else None, "path_dice": path_dice,
            "path_minus_best_direct": None if path_dice is None or best is None else path_dice - direct[best],
            "path_minus_nearest_direct": (None if path_dice is None or direct.get(nearest) is None
                                          else path_dice - direct[nearest]),
        })
    return out


def sequential_markdown(seq: Sequence[dict]) -> str:
    """Per (seed, target): the three transfers and the path's margins; then the averages and win counts."""
    def num(v: Optional[float], signed: bool = False) -> str:
        return "n/a" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    def mean(key: str) -> Optional[float]:
        values = [r[key] for r in seq if r[key] is not None]
        return float(np.mean(values)) if values else None

    lines = ["| seed | target | best single source (hindsight) | Dice | nearest source (d) | Dice | path of `trm path` "
             "| Dice | path − best | path − nearest |", "|" + "---|" * 10]
    for r in seq:
        path = " → ".join(_short(t) for t in (r["path"] or "").split(" > ")) if r["path"] else "n/a"
        lines.append(f"| {r['seed']} | {_short(r['target'])} | {_short(r['best_direct_source'] or 'n/a')} "
                     f"| {num(r['best_direct_dice'])} | {_short(r['nearest_source'] or 'n/a')} "
                     f"| {num(r['nearest_direct_dice'])} | {path} | {num(r['path_dice'])} "
                     f"| {num(r['path_minus_best_direct'], True)} | {num(r['path_minus_nearest_direct'], True)} |")
    if seq:
        lines.append(f"| | **Average** | | {num(mean('best_direct_dice'))} | | {num(mean('nearest_direct_dice'))} | "
                     f"| {num(mean('path_dice'))} | {num(mean('path_minus_best_direct'), True)} "
                     f"| {num(mean('path_minus_nearest_direct'), True)} |")
        near = [r["path_minus_nearest_direct"] for r in seq if r["path_minus_nearest_direct"] is not None]
        best = [r["path_minus_best_direct"] for r in seq if r["path_minus_best_direct"] is not None]
        lines.append("")
        lines.append(f"The path beats the nearest single source in {sum(v > 0 for v in near)} of {len(near)} rows "
                     f"and the best single source in {sum(v > 0 for v in best)} of {len(best)}.")
    return "\n".join(lines)

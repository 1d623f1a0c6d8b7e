"""``results.md`` of a study, with its CSV tables and PNG figures (torch-free).

Everything is computed from the cached job results, so the report of an
interrupted study shows what has finished ("n/a" for the rest), and a rerun
rewrites it.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence

from trmcore.fileio import atomic_write_text
from trmcore.study.figures import collect_fig2, few_shot_plot, gain_heatmap
from trmcore.study.grid import TISSUE, TUMOUR, SeqPlan, StudyGrid, study_columns, task_slug
from trmcore.study.profiles import StudyProfile
from trmcore.study.runner import RunSummary
from trmcore.study.tables import (GAIN, cell_rows, collapse_markdown, collapse_rows, few_shot_markdown, gain_counts,
                                  pair_summary_rows, pair_table, pair_table_markdown, per_seed_markdown,
                                  sequential_markdown, sequential_rows, source_csv_rows, source_markdown, source_rows,
                                  write_csv)


def _setup_lines(profile: StudyProfile, seeds: Sequence[int], tables: Sequence[str], summary: RunSummary,
                 results: Dict[str, dict], grid: StudyGrid, wall_s: float, out: Path,
                 seeded_tables: Sequence[str]) -> List[str]:
    from trmcore.study.study import read_study_json  # study.py imports this module

    study = read_study_json(out)
    datasets = study.get("datasets", {})
    compute = sum(float(r.get("wall_s", 0.0)) for r in results.values())
    training = profile.training
    lines = [
        f"- profile `{profile.name}`; seeds {', '.join(map(str, seeds))} (every seed: "
        f"{', '.join(t for t in tables if t in seeded_tables) or 'none'}; the other tables: seed {seeds[0]}); "
        f"tables {', '.join(tables)}",
        f"- U-Net depth {profile.model.depth}, width {profile.model.width}; Adam lr {training.lr:g}, batch "
        f"{training.batch_size}; {profile.source_iterations} source"
        + (f" ({profile.tumour_source_iterations} for tumour tasks)" if profile.tumour_source_iterations else "")
        + f" / {training.iterations} fine-tuning iterations; "
        f"encoder frozen while fine-tuning (SPEC 5); {training.val_fraction:.0%} of each task's cases held out, "
        "mean 3D Dice on them",
        f"- tissue data: {datasets.get('tissue') or f'phantom, {profile.tissue_data.n_cases} cases of {profile.tissue_data.size} on {list(profile.tissue_data.sites)}'}",
        f"- tumour data: {datasets.get('tumour') or f'phantom, {profile.tumour_data.n_cases} cases of {profile.tumour_data.size} on {list(profile.tumour_data.sites)}'}",
        f"- jobs: {len(grid.jobs)} in the grid; this invocation ran {len(summary.executed)}, found {len(summary.cached)} "
        f"in the cache, {len(summary.failed)} failed, {len(summary.skipped)} skipped; {wall_s:.0f} s wall for this "
        f"invocation, {compute:.0f} s summed over the jobs' own run times",
        f"- machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()}",
    ]
    lines += [f"- note: {note}" for note in profile.notes]
    return lines


@dataclass
class _Report:
    """What every table's section writer reads, and the list of files written so far."""

    out: Path
    profile: StudyProfile
    grid: StudyGrid
    results: Dict[str, dict]
    plans: Sequence[SeqPlan]
    seeds: Sequence[int]
    files: List[Path] = field(default_factory=list)

    def csv(self, rows: Sequence[dict], name: str) -> Path:
        path = write_csv(rows, self.out / "tables" / name)
        self.files.append(path)
        return path

    def figure(self, png: Path) -> Path:
        self.files.append(png)
        return png


def _settings_lines(report: _Report, name: str, stem: str, rows: List[dict], methods: Sequence[str]) -> List[str]:
    """The columns of Tables I-III (issue 14): collapse counts per column and the source models' Dice."""
    columns = study_columns(report.profile, methods)
    collapses = collapse_rows(rows, {c.label: c.reference for c in columns},
                              {k: r.get("risk_warnings", []) for k, r in report.results.items()})
    report.csv(collapses, f"{stem}_collapses.csv")
    dataset = TUMOUR if name == "II" else TISSUE
    sources = source_rows(report.grid, report.results, dataset, runs_dir=report.out / "runs")
    report.csv(source_csv_rows(sources), f"{stem}_sources.csv")
    lines = ["Columns: the method with the default settings (foreground-aware batches, bounded Eq. 7); "
             "`uniform` = uniform batches; `eq7` = TRM Eq. 7 as published (so `trm uniform eq7` is the "
             "paper-literal trm).", "", collapse_markdown(collapses), ""]
    dice = sorted(r["dice"] for r in sources if r["dice"] is not None)
    if dice:
        lines += [f"Source models ({dataset} dataset, every table): held-out Dice min {dice[0]:.3f}, median "
                  f"{dice[len(dice) // 2]:.3f}, max {dice[-1]:.3f} over {len(dice)} models "
                  f"(`tables/{stem}_sources.csv`):", "", source_markdown(sources), ""]
    return lines


def _pair_section(report: _Report, name: str, stem: str, rows: List[dict]) -> List[str]:
    """Tables I and II: Dice per (target, source, column), the gain of trm over vanilla and its heatmap."""
    methods = [c.label for c in study_columns(report.profile, report.profile.methods)]
    table = pair_table(rows, methods)
    report.csv(pair_summary_rows(table), f"{stem}_summary.csv")
    lines = _settings_lines(report, name, stem, rows, report.profile.methods) + [f"Mean 3D Dice per (target, source, method){' as mean ± std over seeds' if len(table.seeds) > 1 else ''}; "
             "bold = best method of the row; last column = gain of trm over vanilla.",
             "", pair_table_markdown(table), ""]
    if len(table.seeds) > 1:
        lines += ["Per seed, the average over all pairs (the spread of the overall row above):", "",
                  per_seed_markdown(rows, methods), ""]
    if GAIN in table.overall:
        counts = gain_counts(table)
        lines.append(f"trm beats vanilla on average over seeds in {counts['mean_positive']} of "
                     f"{counts['pairs']} pairs" + (f"; in every seed in {counts['all_seeds_positive']}, "
                     f"and loses in every seed in {counts['all_seeds_negative']}" if len(table.seeds) > 1 else "")
                     + f"; overall gain {table.overall[GAIN].text(signed=True)}.")
        lines.append("")
        png = report.figure(gain_heatmap(table, f"Table {name}: trm - vanilla (mean 3D Dice)",
                                         report.out / "figures" / f"{stem}_gain.png"))
        lines += [f"![trm - vanilla per pair](figures/{png.name})", ""]
    return lines


def _few_shot_section(report: _Report, name: str, stem: str, rows: List[dict]) -> List[str]:
    """Table III: Dice against the few-shot training-set size."""
    text, summary_rows = few_shot_markdown(rows, [c.label for c in study_columns(report.profile,
                                                                                 report.profile.few_shot_methods)])
    report.csv(summary_rows, f"{stem}_summary.csv")
    lines = _settings_lines(report, name, stem, rows, report.profile.few_shot_methods) + [text, ""]
    if summary_rows:
        png = report.figure(few_shot_plot(summary_rows, report.out / "figures" / f"{stem}_few_shot.png"))
        lines += [f"![Dice against few-shot size](figures/{png.name})", ""]
    return lines


def _sequential_section(report: _Report, name: str, stem: str, rows: List[dict]) -> List[str]:
    """Sequential transfer: best single source, nearest source and the path of `trm path` per target."""
    profile = report.profile
    seq = sequential_rows(rows, report.plans)
    report.csv(seq, f"{stem}_summary.csv")
    shots = "all" if profile.seq_shots is None else profile.seq_shots
    return [f"Method `{profile.seq_method}` at every hop, head re-initialised at every hop, target "
            f"trained on {shots} slices, intermediate tasks on all of theirs. \"Best single source\" "
            "is picked with hindsight (highest held-out Dice of all direct transfers), so it is an "
            "upper bound for any single-source choice; \"nearest\" is the source with the cheapest "
            "direct path under the task distance d. Task distances and chosen paths: `affinity/`.",
            "", sequential_markdown(seq), ""]


def _fig2_section(report: _Report, name: str, stem: str, rows: List[dict]) -> List[str]:
    """Fig. 2: the risk-map panels of the riskmap jobs, copied under figures/."""
    panels = {}
    for cell in report.grid.cells_of(name):
        result = report.results.get(cell.key)
        if result is not None:
            suffix = "" if cell.seed == report.seeds[0] else f"_s{cell.seed}"
            panels[f"{task_slug(cell.source)}_to_{task_slug(cell.target)}{suffix}"] = result.get("png", [])
    copies = collect_fig2(report.out, panels)
    report.files.extend(copies)
    lines = [] if copies else ["No panel finished yet."]
    for png in copies:
        lines += [f"`{png.stem}`: image, label, transferability and risk map of the source model "
                  "(top), the same after trm fine-tuning (bottom), on a held-out target volume.", "",
                  f"![{png.stem}](figures/{png.name})", ""]
    return lines


SectionWriter = Callable[[_Report, str, str, List[dict]], List[str]]


@dataclass(frozen=True)
class TableEntry:
    """One table of the study: results.md title, CSV file stem, section writer, whether it has Dice."""

    title: str
    stem: str
    write: SectionWriter
    has_dice: bool = True


# One entry per table of study.grid.TABLES, in results.md order; a new table is one entry here
# (and its cells in study.grid).
SECTIONS: Dict[str, TableEntry] = {
    "I": TableEntry("Table I analogue: binary tissue tasks {CSF, GM, WM} x {T1, T2}", "table1", _pair_section),
    "II": TableEntry("Table II analogue: 4-class tumour tasks (NCR, ED, ET) per site x modality", "table2",
                     _pair_section),
    "III": TableEntry("Table III analogue: few-shot target training sets", "table3", _few_shot_section),
    "seq": TableEntry("Sequential transfer: best single source vs the path of `trm path`", "sequential",
                      _sequential_section),
    "fig2": TableEntry("Fig. 2 analogue: transfer risk maps before and after trm fine-tuning", "fig2",
                       _fig2_section, has_dice=False),
}
TABLE_TITLES = {name: entry.title for name, entry in SECTIONS.items()}


def write_outputs(out: Path, profile: StudyProfile, grid: StudyGrid, results: Dict[str, dict],
                  plans: Sequence[SeqPlan], seeds: Sequence[int], tables: Sequence[str], summary: RunSummary,
                  wall_s: float, seeded_tables: Sequence[str] = ("I",)) -> List[Path]:
    """Write ``tables/*.csv``, ``figures/*.png`` and ``results.md`` under ``out``; returns the files written."""
    out = Path(out)
    report = _Report(out, profile, grid, results, plans, seeds)
    sections: List[str] = [f"# Reproduction study ({profile.name} profile)", "",
                           *_setup_lines(profile, seeds, tables, summary, results, grid, wall_s, out, seeded_tables), ""]
    for name, entry in SECTIONS.items():
        sections += [f"## {entry.title}", ""]
        if name not in tables:
            sections += ["Not run in this study (not in --tables).", ""]
            continue
        rows = cell_rows(grid, results, name)
        report.csv(rows, f"{entry.stem}.csv")
        sections += entry.write(report, name, entry.stem, rows)
        missing = sum(r["dice"] is None for r in rows) if entry.has_dice else 0
        if missing:
            sections += [f"{missing} entries have no result yet (n/a): failed, skipped or not run; rerun the same "
                         "command to resume.", ""]
    if summary.failed:
        sections += ["## Failed jobs", ""]
        sections += [f"- `{key}`: {error}" for key, error in summary.failed.items()]
        sections.append("")
    path = out / "results.md"
    atomic_write_text(path, "\n".join(sections) + "\n", overwrite=True)
    report.files.append(path)
    return report.files

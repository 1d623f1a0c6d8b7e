"""``results.md`` of a study, with its CSV tables and PNG figures (torch-free).

Everything is computed from the cached job results, so the report of an
interrupted study shows what has finished ("n/a" for the rest), and a rerun
rewrites it.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Dict, List, Sequence


from trmcore.study.figures import collect_fig2, few_shot_plot, gain_heatmap
from trmcore.study.grid import SeqPlan, StudyGrid, task_slug
from trmcore.study.profiles import StudyProfile
from trmcore.study.runner import RunSummary
from trmcore.study.tables import (GAIN, cell_rows, few_shot_markdown, gain_counts, pair_summary_rows, pair_table,
                                  pair_table_markdown, per_seed_markdown, sequential_markdown, sequential_rows, write_csv)

TABLE_TITLES = {
    "I": "Table I analogue: binary tissue tasks {CSF, GM, WM} x {T1, T2}",
    "II": "Table II analogue: 4-class tumour tasks (NCR, ED, ET) per site x modality",
    "III": "Table III analogue: few-shot target training sets",
    "seq": "Sequential transfer: best single source vs the path of `trm path`",
    "fig2": "Fig. 2 analogue: transfer risk maps before and after trm fine-tuning",
}


def _setup_lines(profile: StudyProfile, seeds: Sequence[int], tables: Sequence[str], summary: RunSummary,
                 results: Dict[str, dict], grid: StudyGrid, wall_s: float, out: Path,
                 seeded_tables: Sequence[str]) -> List[str]:
    study = json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {}
    datasets = study.get("datasets", {})
    compute = sum(float(r.get("wall_s", 0.0)) for r in results.values())
    training = profile.training
    lines = [
        f"- profile `{profile.name}`; seeds {', '.join(map(str, seeds))} (every seed: "
        f"{', '.join(t for t in tables if t in seeded_tables) or 'none'}; the other tables: seed {seeds[0]}); "
        f"tables {', '.join(tables)}",
        f"- U-Net depth {profile.model.depth}, width {profile.model.width}; Adam lr {training.lr:g}, batch "
        f"{training.batch_size}; {profile.source_iterations} source / {training.iterations} fine-tuning iterations; "
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


def write_outputs(out: Path, profile: StudyProfile, grid: StudyGrid, results: Dict[str, dict],
                  plans: Sequence[SeqPlan], seeds: Sequence[int], tables: Sequence[str], summary: RunSummary,
                  wall_s: float, seeded_tables: Sequence[str] = ("I",)) -> List[Path]:
    """Write ``tables/*.csv``, ``figures/*.png`` and ``results.md`` under ``out``; returns the files written."""
    out = Path(out)
    files: List[Path] = []
    sections: List[str] = [f"# Reproduction study ({profile.name} profile)", "",
                           *_setup_lines(profile, seeds, tables, summary, results, grid, wall_s, out, seeded_tables), ""]
    for name, title in TABLE_TITLES.items():
        sections.append(f"## {title}")
        sections.append("")
        if name not in tables:
            sections += ["Not run in this study (not in --tables).", ""]
            continue
        rows = cell_rows(grid, results, name)
        stem = {"I": "table1", "II": "table2", "III": "table3", "seq": "sequential", "fig2": "fig2"}[name]
        files.append(write_csv(rows, out / "tables" / f"{stem}.csv"))
        missing = sum(r["dice"] is None for r in rows) if name != "fig2" else 0
        if name in ("I", "II"):
            methods = profile.methods
            table = pair_table(rows, methods)
            files.append(write_csv(pair_summary_rows(table), out / "tables" / f"{stem}_summary.csv"))
            sections.append(f"Mean 3D Dice per (target, source, method){' as mean ± std over seeds' if len(table.seeds) > 1 else ''}; "
                            "bold = best method of the row; last column = gain of trm over vanilla.")
            sections += ["", pair_table_markdown(table), ""]
            if len(table.seeds) > 1:
                sections += ["Per seed, the average over all pairs (the spread of the overall row above):", "",
                             per_seed_markdown(rows, methods), ""]
            if GAIN in table.overall:
                counts = gain_counts(table)
                sections.append(f"trm beats vanilla on average over seeds in {counts['mean_positive']} of "
                                f"{counts['pairs']} pairs" + (f"; in every seed in {counts['all_seeds_positive']}, "
                                f"and loses in every seed in {counts['all_seeds_negative']}" if len(table.seeds) > 1 else "")
                                + f"; overall gain {table.overall[GAIN].text(signed=True)}.")
                sections.append("")
                png = gain_heatmap(table, f"Table {name}: trm - vanilla (mean 3D Dice)", out / "figures" / f"{stem}_gain.png")
                files.append(png)
                sections += [f"![trm - vanilla per pair](figures/{png.name})", ""]
        elif name == "III":
            text, summary_rows = few_shot_markdown(rows, profile.few_shot_methods)
            files.append(write_csv(summary_rows, out / "tables" / "table3_summary.csv"))
            sections += [text, ""]
            if summary_rows:
                png = few_shot_plot(summary_rows, out / "figures" / "table3_few_shot.png")
                files.append(png)
                sections += [f"![Dice against few-shot size](figures/{png.name})", ""]
        elif name == "seq":
            seq = sequential_rows(rows, plans)
            files.append(write_csv(seq, out / "tables" / "sequential_summary.csv"))
            shots = "all" if profile.seq_shots is None else profile.seq_shots
            sections.append(f"Method `{profile.seq_method}` at every hop, head re-initialised at every hop, target "
                            f"trained on {shots} slices, intermediate tasks on all of theirs. \"Best single source\" "
                            "is picked with hindsight (highest held-out Dice of all direct transfers), so it is an "
                            "upper bound for any single-source choice; \"nearest\" is the source with the cheapest "
                            "direct path under the task distance d. Task distances and chosen paths: `affinity/`.")
            sections += ["", sequential_markdown(seq), ""]
        else:
            panels = {}
            for cell in grid.cells_of("fig2"):
                result = results.get(cell.key)
                if result is not None:
                    suffix = "" if cell.seed == seeds[0] else f"_s{cell.seed}"
                    panels[f"{task_slug(cell.source)}_to_{task_slug(cell.target)}{suffix}"] = result.get("png", [])
            copies = collect_fig2(out, panels)
            files += copies
            if not copies:
                sections.append("No panel finished yet.")
            for png in copies:
                sections += [f"`{png.stem}`: image, label, transferability and risk map of the source model "
                             "(top), the same after trm fine-tuning (bottom), on a held-out target volume.", "",
                             f"![{png.stem}](figures/{png.name})", ""]
        if missing:
            sections += [f"{missing} entries have no result yet (n/a): failed, skipped or not run; rerun the same "
                         "command to resume.", ""]
    if summary.failed:
        sections.append("## Failed jobs")
        sections.append("")
        sections += [f"- `{key}`: {error}" for key, error in summary.failed.items()]
        sections.append("")
    path = out / "results.md"
    path.write_text("\n".join(sections) + "\n")
    files.append(path)
    return files

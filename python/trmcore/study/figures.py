"""PNG figures of the study: gain heatmaps (Tables I, II), Dice against few-shot size (Table III), Fig. 2 panels.

Fig. 2 panels are drawn by :func:`trmcore.training.riskmap_files.write_risk_maps`
inside the riskmap jobs; here they are only copied to readable names.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from trmcore.fileio import atomic_path, make_folder, save_figure
from trmcore.study.tables import GAIN, PairTable, _short


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def gain_heatmap(table: PairTable, title: str, path: Path) -> Path:
    """Target x source heatmap of the mean trm - vanilla Dice (red: trm worse, blue: trm better)."""
    plt = _pyplot()
    targets = sorted({t for t, _ in table.pairs})
    sources = sorted({s for _, s in table.pairs})
    grid = np.full((len(targets), len(sources)), np.nan)
    for (t, s), values in table.pairs.items():
        if GAIN in values and values[GAIN].n:
            grid[targets.index(t), sources.index(s)] = values[GAIN].mean
    limit = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(0.9 * len(sources) + 3.0, 0.75 * len(targets) + 1.8))
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(sources)), [_short(s) for s in sources], rotation=45, ha="right")
    ax.set_yticks(range(len(targets)), [_short(t) for t in targets])
    ax.set_xlabel("source task")
    ax.set_ylabel("target task")
    for i in range(len(targets)):
        for j in range(len(sources)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="Dice trm - vanilla")
    ax.set_title(title)
    fig.tight_layout()
    make_folder(path.parent)
    save_figure(fig, path, overwrite=True, dpi=110)
    plt.close(fig)
    return path


def few_shot_plot(summary: Sequence[dict], path: Path) -> Path:
    """Mean Dice over the Table III pairs against the number of target slices, one line per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    methods = [m for m in dict.fromkeys(r["method"] for r in summary) if m != GAIN]
    for method in methods:
        points = sorted((r["slices"], r["mean_over_pairs"]) for r in summary if r["method"] == method)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("target training slices")
    ax.set_ylabel("mean 3D Dice (held-out volumes)")
    ax.set_title("Table III: few-shot fine-tuning")
    ax.legend()
    fig.tight_layout()
    make_folder(path.parent)
    save_figure(fig, path, overwrite=True, dpi=110)
    plt.close(fig)
    return path


def collect_fig2(out_dir: Path, panels: Dict[str, List[str]]) -> List[Path]:
    """Copy each pair's first risk-map panel to ``figures/fig2_<pair>.png``; returns the copies."""
    copies = []
    for name, pngs in panels.items():
        if not pngs:
            continue
        target = out_dir / "figures" / f"fig2_{name}.png"
        make_folder(target.parent)
        with atomic_path(target, overwrite=True) as tmp:
            shutil.copyfile(out_dir / pngs[0], tmp)
        copies.append(target)
    return copies

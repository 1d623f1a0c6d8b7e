"""Figures of the selection step (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from trmcore.fileio import save_figure



def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_affinity(affinity, path: Path, overwrite: bool = True) -> Path:
    """Heatmaps of W, S and d side by side, task names on the axes; writes a PNG."""
    plt = _pyplot()
    names = affinity.names
    n = len(names)
    side = max(4.0, 0.35 * n + 2.5)
    fig, axes = plt.subplots(1, 3, figsize=(3 * side, side), constrained_layout=True)
    for ax, (title, matrix, cmap) in zip(axes, (("W: image dissimilarity", affinity.W, "viridis"),
                                                 ("S: label similarity (SSIM)", affinity.S, "magma"),
                                                 (f"d = {affinity.alpha:.4g} W + {affinity.beta:.4g} (1 - S)",
                                                  affinity.d, "viridis"))):
        image = ax.imshow(matrix, cmap=cmap)
        ax.set_title(title)
        ax.set_xticks(range(n), names, rotation=90, fontsize=7)
        ax.set_yticks(range(n), names, fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    save_figure(fig, path, overwrite=overwrite, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_task_graph(graph, selection, path: Path, overwrite: bool = True) -> Path:
    """The task graph: communities coloured, landmarks as squares, the chosen path in red, the best direct path dashed."""
    import networkx as nx

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 7), constrained_layout=True)
    layout = nx.spring_layout(graph, weight=None, seed=0)
    colour = {}
    for k, members in enumerate(selection.communities):
        for name in members:
            colour[name] = k
    palette = plt.get_cmap("tab10")
    nodes = list(graph.nodes)
    node_colours = ["#d62728" if n == selection.target else palette(colour.get(n, 0) % 10) for n in nodes]
    nx.draw_networkx_edges(graph, layout, ax=ax, edge_color="#bbbbbb", width=0.8)
    nx.draw_networkx_nodes(graph, layout, ax=ax, nodelist=nodes, node_color=node_colours, node_size=260)
    if selection.landmarks:
        nx.draw_networkx_nodes(graph, layout, ax=ax, nodelist=selection.landmarks, node_shape="s",
                               node_color="none", edgecolors="black", linewidths=2.0, node_size=420)
    best: Sequence[str] = selection.chosen.tasks
    hops = list(zip(best[:-1], best[1:]))
    nx.draw_networkx_edges(graph, layout, ax=ax, edgelist=hops, edge_color="#d62728", width=3.0,
                           arrows=True, style="solid")
    direct = selection.best_direct
    title = f"target {selection.target}\nchosen: {' -> '.join(best)} (cost {selection.chosen.cost:.4g}, red)"
    if direct is not None and direct.tasks != selection.chosen.tasks:
        # Drawn from the node positions: a direct transfer need not be a graph edge.
        nx.draw_networkx_edges(graph, layout, ax=ax, edgelist=[direct.tasks], edge_color="#1f77b4", width=2.0,
                               arrows=True, style="dashed")
        title += f"\nbest direct: {' -> '.join(direct.tasks)} (cost {direct.cost:.4g}, blue dashed)"
    nx.draw_networkx_labels(graph, layout, ax=ax, font_size=7)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    save_figure(fig, path, overwrite=overwrite, dpi=110)
    plt.close(fig)
    return Path(path)

"""Sequential transfer path selection of SPEC section 6 [SEQ].

Torch-free (NumPy + networkx). Tasks are nodes, the task distance ``d`` weighs
the edges, and an edge exists only where two tasks share the modality or the
label set. Girvan-Newman splits the source tasks into communities; each
community's landmark is ``argmin_v sum_u d(v, u) / (n_v + n_u)``. A candidate
path ``v_k -> v_i -> t`` (landmark ``v_k``, ``v_i`` in its community) costs
``d(v_k, t) + d(v_k, v_i) + d(v_i, t)``.

Cost of a general path ``p_0 -> ... -> p_m = t``: the sum of its hop distances
plus ``d(p_0, t)``. This is the formula above for two hops, and for the direct
path ``v -> t`` (``v_i = v_k = v``, a hop of length zero) it is ``2 d(v, t)``;
every direct single-source path is a candidate. ``max_hops > 2`` searches
longer paths along graph edges (hop-limited shortest paths to ``t``).

Which candidate is chosen: as in [SEQ], the cheapest path *with* an
intermediate task. The direct paths are ranked alongside for comparison but
are chosen only when no multi-hop path exists (or ``allow_direct=True``):
with ``v_i = v_k`` the formula gives them ``2 d(v, t)``, and for any
non-negative d, ``2 min_s d(s, t) <= d(v_k, t) + d(v_i, t) <= d(v_k, t) +
d(v_k, v_i) + d(v_i, t)``, so no two-hop path can be cheaper than the best
direct one and letting them compete would always pick direct transfer (the
method would never propose an intermediate hop). :attr:`PathSelection.best_direct`
is reported beside the chosen path so the price of the hop is visible.

Hops must follow graph edges; ``d(p_0, t)`` is a cost term, not a hop. When
the graph is disconnected, only direct transfer is proposed (and a note says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import networkx as nx
import numpy as np

from trmcore.selection.affinity import AffinityResult
from trmcore.selection.tasks import DEFAULT_COMMUNITIES, DEFAULT_MAX_HOPS, SelectionTask



@dataclass(frozen=True)
class CandidatePath:
    """A path of tasks ending at the target, with its cost.

    Attributes:
        tasks: names, first = the source task, last = the target.
        cost: path cost (see module docstring).
        kind: ``"direct"``, ``"landmark"`` (v_k -> v_i -> t) or ``"search"`` (max_hops > 2).
    """

    tasks: Tuple[str, ...]
    cost: float
    kind: str

    @property
    def hops(self) -> int:
        return len(self.tasks) - 1

    def to_json(self) -> Dict[str, object]:
        return {"path": list(self.tasks), "cost": self.cost, "kind": self.kind}


@dataclass
class PathSelection:
    """Result of :func:`select_paths`.

    Attributes:
        target: target task name.
        candidates: ranked, cheapest first.
        chosen: the selected path (see module docstring).
        communities: lists of source task names.
        landmarks: landmark name per community (same order).
        connected: whether the task graph is connected; when it is not, only
            direct transfer is proposed.
        notes: human-readable remarks (fallbacks).
        allow_direct: whether a direct path could be chosen when cheapest.
        graph: the task graph of the sources and the target the paths were searched on
            (networkx, edge weight d), e.g. for :func:`trmcore.selection.plots.plot_task_graph`.
    """

    target: str
    candidates: List[CandidatePath]
    chosen: CandidatePath
    communities: List[List[str]]
    landmarks: List[str]
    connected: bool
    notes: List[str] = field(default_factory=list)
    allow_direct: bool = False
    graph: Optional[nx.Graph] = field(default=None, repr=False, compare=False)

    @property
    def best_direct(self) -> Optional[CandidatePath]:
        """The cheapest direct (single-source, one hop) candidate, shown beside the chosen path."""
        return next((c for c in self.candidates if c.hops == 1), None)

    @property
    def rule(self) -> str:
        """How ``chosen`` was picked, in words (written to path.json and printed)."""
        if self.allow_direct:
            return "cheapest candidate, direct paths included (allow_direct / --allow-direct)"
        rule = ("[SEQ]: cheapest path with an intermediate task; direct paths are ranked for comparison only "
                "(--allow-direct lets them be chosen)")
        if self.chosen.hops == 1:
            rule += "; no such path here, so the best direct path is chosen"
        return rule

    def to_json(self) -> Dict[str, object]:
        direct = self.best_direct
        return {
            "target": self.target, "chosen": self.chosen.to_json(),
            "best_direct": direct.to_json() if direct is not None else None,
            "chosen_minus_direct_cost": self.chosen.cost - direct.cost if direct is not None else None,
            "allow_direct": self.allow_direct, "rule": self.rule,
            "candidates": [c.to_json() for c in self.candidates],
            "communities": self.communities, "landmarks": self.landmarks,
            "connected": self.connected, "notes": self.notes,
        }


def build_task_graph(tasks: Sequence[SelectionTask], d: np.ndarray) -> nx.Graph:
    """Graph over task names; edge (a, b) with ``weight = d[a, b]`` iff they share modality or label set."""
    d = np.asarray(d, dtype=np.float64)
    if d.shape != (len(tasks), len(tasks)):
        raise ValueError(f"distance matrix of shape {d.shape} does not match {len(tasks)} tasks")
    graph = nx.Graph()
    for i, task in enumerate(tasks):
        graph.add_node(task.name, index=i)
    for i, a in enumerate(tasks):
        for j in range(i + 1, len(tasks)):
            b = tasks[j]
            if a.shares_modality(b) or a.shares_label_set(b):
                graph.add_edge(a.name, b.name, weight=float(d[i, j]))
    return graph


def communities(graph: nx.Graph, count: int = DEFAULT_COMMUNITIES) -> List[List[str]]:
    """Girvan-Newman communities: the first split with at least ``min(count, nodes)`` parts.

    On a graph with fewer nodes than ``count`` there are fewer communities.
    Edges are removed by (unweighted) betweenness, as networkx's default.
    Returns sorted lists of names, ordered by their first member.
    """
    if count < 1:
        raise ValueError(f"communities: count must be >= 1, got {count}")
    if graph.number_of_nodes() == 0:
        return []
    wanted = min(count, graph.number_of_nodes())
    parts = [set(c) for c in nx.connected_components(graph)]
    if len(parts) < wanted and graph.number_of_edges() > 0:
        for split in nx.community.girvan_newman(graph):
            parts = [set(c) for c in split]
            if len(parts) >= wanted:
                break
    return sorted((sorted(p) for p in parts), key=lambda p: p[0])


def landmark(members: Sequence[str], d: np.ndarray, index: Dict[str, int], n_cases: Sequence[int]) -> str:
    """``argmin_v sum_{u != v} d(v, u) / (n_v + n_u)`` over the community (ties: first name)."""
    best, best_score = members[0], math.inf
    for v in members:
        score = sum(d[index[v], index[u]] / (n_cases[index[v]] + n_cases[index[u]]) for u in members if u != v)
        if score < best_score - 1e-15:
            best, best_score = v, score
    return best


def path_cost(path: Sequence[str], d: np.ndarray, index: Dict[str, int]) -> float:
    """Sum of hop distances plus ``d(first, target)``; a repeated task (zero hop) costs 0."""
    hops = sum(0.0 if a == b else float(d[index[a], index[b]]) for a, b in zip(path[:-1], path[1:]))
    return hops + float(d[index[path[0]], index[path[-1]]])


def _dedupe(path: Sequence[str]) -> Tuple[str, ...]:
    out: List[str] = []
    for name in path:
        if not out or out[-1] != name:
            out.append(name)
    return tuple(out)


def _hop_limited_paths(graph: nx.Graph, target: str, max_hops: int) -> Dict[str, Tuple[float, List[str]]]:
    """For each node, the cheapest edge path to ``target`` with at most ``max_hops`` hops (Bellman-Ford)."""
    best: Dict[str, Tuple[float, List[str]]] = {target: (0.0, [target])}
    for _ in range(max_hops):
        updated = dict(best)
        for node, (cost, path) in best.items():
            for neighbour, attrs in graph[node].items():
                if neighbour in path:
                    continue
                new_cost = cost + attrs["weight"]
                if neighbour not in updated or new_cost < updated[neighbour][0] - 1e-15:
                    updated[neighbour] = (new_cost, [neighbour] + path)
        best = updated
    best.pop(target)
    return best


def select_paths(
    affinity: AffinityResult,
    target: str,
    num_communities: int = DEFAULT_COMMUNITIES,
    max_hops: int = DEFAULT_MAX_HOPS,
    sources: Optional[Sequence[str]] = None,
    allow_direct: bool = False,
) -> PathSelection:
    """Rank candidate transfer paths to ``target``.

    Args:
        affinity: W, S and the weights (``affinity.d``), with the tasks' case counts.
        target: target task name (must be in the matrix).
        num_communities: Girvan-Newman communities of the source tasks.
        max_hops: 2 = the paper's ``v_k -> v_i -> t``; more adds a hop-limited
            shortest-path search from every source along graph edges.
        sources: restrict the source tasks (default: every task but the target).
        allow_direct: choose the cheapest candidate even if it is a direct path.

    Returns:
        :class:`PathSelection`, candidates cheapest first (ties by name).

    Raises:
        ValueError: target unknown, fewer than one source, bad ``max_hops``.
    """
    if max_hops < 1:
        raise ValueError(f"max_hops must be >= 1, got {max_hops}")
    t = affinity.index(target)
    d = affinity.d
    if not np.all(np.isfinite(d)):
        raise ValueError("the distance matrix holds NaN or infinite values")
    index = {name: i for i, name in enumerate(affinity.names)}
    source_names = [n for n in (sources if sources is not None else affinity.names) if n != target]
    for name in source_names:
        affinity.index(name)
    if not source_names:
        raise ValueError(f"no source task besides the target {target!r}")
    keep = [affinity.tasks[index[n]] for n in source_names] + [affinity.tasks[t]]
    graph = build_task_graph(keep, d[np.ix_([index[k.name] for k in keep], [index[k.name] for k in keep])])
    notes: List[str] = []
    connected = nx.is_connected(graph)
    direct = {CandidatePath((s, target), path_cost((s, target), d, index), "direct") for s in source_names}
    if not connected:
        parts = nx.number_connected_components(graph)
        notes.append(f"the task graph is disconnected ({parts} components: no shared modality or label set "
                     "between some tasks); falling back to direct transfer")
        ranked = _rank(direct)
        return PathSelection(target, ranked, ranked[0], [sorted(source_names)], [], False, notes, allow_direct, graph)

    source_graph = graph.subgraph(source_names).copy()
    groups = communities(source_graph, num_communities)
    marks = [landmark(g, d, index, affinity.n_cases) for g in groups]
    candidates = set(direct)
    for mark, group in zip(marks, groups):
        for member in group:
            path = _dedupe((mark, member, target))
            if all(graph.has_edge(a, b) for a, b in zip(path[:-1], path[1:])):
                candidates.add(CandidatePath(path, path_cost(path, d, index), "direct" if len(path) == 2 else "landmark"))
    if max_hops > 2:
        for start, (_, path) in _hop_limited_paths(graph, target, max_hops).items():
            if start in source_names and len(path) > 2:
                candidates.add(CandidatePath(tuple(path), path_cost(path, d, index), "search"))
    ranked = _rank(candidates)
    multi_hop = [c for c in ranked if c.hops >= 2]
    if allow_direct or not multi_hop:
        if not multi_hop:
            notes.append("no path with an intermediate task follows the graph edges; choosing direct transfer")
        chosen = ranked[0]
    else:
        chosen = multi_hop[0]
    return PathSelection(target, ranked, chosen, groups, marks, True, notes, allow_direct, graph)


def _rank(candidates) -> List[CandidatePath]:
    unique: Dict[Tuple[str, ...], CandidatePath] = {}
    for c in candidates:
        if c.tasks not in unique or c.kind == "landmark":
            unique[c.tasks] = c
    return sorted(unique.values(), key=lambda c: (c.cost, c.hops, c.tasks))

import itertools

import networkx as nx
import numpy as np
import pytest

from trmcore.selection.affinity import AffinityResult
from trmcore.selection.path import (
    _hop_limited_paths, build_task_graph, communities, landmark, path_cost, select_paths,
)
from trmcore.selection.tasks import parse_task_name


def affinity_of(names, d, n_cases):
    """An AffinityResult whose distance is exactly ``d`` (alpha = 1, beta = 0)."""
    d = np.asarray(d, dtype=np.float64)
    tasks = [parse_task_name(n) for n in names]
    return AffinityResult(tasks, list(n_cases), [1] * len(tasks), d, np.ones_like(d), 1.0, 0.0)


def random_symmetric(n, seed):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0.5, 10.0, size=(n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def test_hand_example_landmark_and_path():
    names = ["A/T1/CSF", "B/T1/CSF", "C/T1/CSF", "T/T1/CSF"]
    d = np.array([[0, 1, 1, 3],
                  [1, 0, 5, 2],
                  [1, 5, 0, 4],
                  [3, 2, 4, 0]], dtype=float)
    sel = select_paths(affinity_of(names, d, [10, 10, 10, 5]), "T/T1/CSF", num_communities=1)
    assert sel.communities == [["A/T1/CSF", "B/T1/CSF", "C/T1/CSF"]]
    assert sel.landmarks == ["A/T1/CSF"]  # scores 2/20 vs 6/20 vs 6/20
    assert sel.chosen.tasks == ("A/T1/CSF", "B/T1/CSF", "T/T1/CSF")
    assert sel.chosen.cost == pytest.approx(3 + 1 + 2)
    costs = {c.tasks: c.cost for c in sel.candidates}
    # Direct single-source paths are always candidates (cost 2 d(v, t)).
    assert costs[("B/T1/CSF", "T/T1/CSF")] == 4
    assert costs[("A/T1/CSF", "T/T1/CSF")] == 6
    assert costs[("C/T1/CSF", "T/T1/CSF")] == 8
    assert costs[("A/T1/CSF", "C/T1/CSF", "T/T1/CSF")] == 8
    assert [c.cost for c in sel.candidates] == sorted(c.cost for c in sel.candidates)
    # The best direct path is reported beside the chosen one, with the cost difference.
    assert sel.best_direct.tasks == ("B/T1/CSF", "T/T1/CSF") and sel.best_direct.cost == 4
    payload = sel.to_json()
    assert payload["best_direct"] == {"path": ["B/T1/CSF", "T/T1/CSF"], "cost": 4.0, "kind": "direct"}
    assert payload["chosen_minus_direct_cost"] == pytest.approx(2.0)
    assert payload["allow_direct"] is False and "intermediate task" in payload["rule"]
    literal = select_paths(affinity_of(names, d, [10, 10, 10, 5]), "T/T1/CSF", 1, allow_direct=True)
    assert literal.chosen.tasks == ("B/T1/CSF", "T/T1/CSF") and literal.chosen is literal.best_direct
    assert literal.to_json()["allow_direct"] is True and literal.to_json()["chosen_minus_direct_cost"] == 0.0
    assert "direct paths included" in literal.rule


@pytest.mark.parametrize("seed", range(4))
def test_allow_direct_always_chooses_direct_and_default_never_does(seed):
    """Why the default follows [SEQ]: for any non-negative d the best direct path
    (cost 2 min_s d(s,t)) is no dearer than any v_k -> v_i -> t, so the literal
    choice over all candidates (allow_direct=True) never proposes an intermediate hop."""
    sites, channels, labels = ["A", "B", "C"], ["T1", "T2"], ["CSF", "GM"]
    names = [f"{s}/{c}/{l}" for s, c, l in itertools.product(sites, channels, labels)]
    d = random_symmetric(len(names), seed + 10)
    aff = affinity_of(names, d, [5] * len(names))
    target = names[(3 * seed) % len(names)]
    literal = select_paths(aff, target, num_communities=3, allow_direct=True)
    default = select_paths(aff, target, num_communities=3)
    assert literal.chosen.hops == 1 and literal.chosen == default.best_direct
    assert default.chosen.hops == 2 and default.chosen.cost >= default.best_direct.cost
    assert min(c.cost for c in default.candidates if c.hops >= 2) >= literal.chosen.cost


def _brute_force(names, d, n_cases, target, groups, graph):
    idx = {n: i for i, n in enumerate(names)}
    marks = []
    for group in groups:
        scores = {v: sum(d[idx[v], idx[u]] / (n_cases[idx[v]] + n_cases[idx[u]]) for u in group if u != v)
                  for v in group}
        marks.append(min(group, key=lambda v: (scores[v], v)))
    best = None
    for mark, group in zip(marks, groups):
        for member in group:
            if member == mark or not graph.has_edge(mark, member) or not graph.has_edge(member, target):
                continue
            cost = d[idx[mark], idx[target]] + d[idx[mark], idx[member]] + d[idx[member], idx[target]]
            if best is None or cost < best[0]:
                best = (cost, (mark, member, target))
    return marks, best


@pytest.mark.parametrize("seed", range(6))
def test_landmarks_and_chosen_path_match_brute_force(seed):
    sites, channels, labels = ["A", "B", "C"], ["T1", "T2"], ["CSF", "GM"]
    names = [f"{s}/{c}/{l}" for s, c, l in itertools.product(sites, channels, labels)]
    d = random_symmetric(len(names), seed)
    n_cases = list(np.random.default_rng(seed + 100).integers(3, 40, size=len(names)))
    target = names[seed % len(names)]
    aff = affinity_of(names, d, n_cases)
    sel = select_paths(aff, target, num_communities=3)
    assert sel.connected
    sources = [n for n in names if n != target]
    assert sorted(sum(sel.communities, [])) == sorted(sources)
    assert len(sel.communities) >= 3
    graph = build_task_graph(aff.tasks, d)
    marks, best = _brute_force(names, d, n_cases, target, sel.communities, graph)
    assert sel.landmarks == marks
    assert sel.chosen.tasks == best[1]
    assert sel.chosen.cost == pytest.approx(best[0])
    direct = [c for c in sel.candidates if c.hops == 1]
    assert len(direct) == len(sources)


def test_graph_edges_only_for_shared_modality_or_label_set():
    tasks = [parse_task_name(n) for n in ["A/T1/CSF", "A/T2/GM", "B/T1/GM", "B/T2/WM"]]
    graph = build_task_graph(tasks, np.ones((4, 4)))
    assert set(map(frozenset, graph.edges)) == {
        frozenset({"A/T1/CSF", "B/T1/GM"}), frozenset({"A/T2/GM", "B/T1/GM"}), frozenset({"A/T2/GM", "B/T2/WM"})}
    with pytest.raises(ValueError, match="does not match"):
        build_task_graph(tasks, np.ones((3, 3)))


def test_fewer_communities_on_small_graphs():
    graph = nx.path_graph(["a", "b", "c"])
    assert len(communities(graph, 9)) == 3
    assert communities(graph, 1) == [["a", "b", "c"]]


def test_disconnected_graph_falls_back_to_direct_transfer():
    names = ["A/T1/CSF", "B/T2/GM", "T/T1/CSF"]
    d = random_symmetric(3, 0)
    sel = select_paths(affinity_of(names, d, [5, 5, 5]), "T/T1/CSF")
    assert not sel.connected
    assert "disconnected" in sel.notes[0]
    assert all(c.hops == 1 for c in sel.candidates)
    best_source = min(["A/T1/CSF", "B/T2/GM"], key=lambda n: d[names.index(n), 2])
    assert sel.chosen.tasks == (best_source, "T/T1/CSF")


def test_unknown_target_and_bad_options():
    aff = affinity_of(["A/T1/CSF", "T/T1/CSF"], random_symmetric(2, 1), [3, 3])
    with pytest.raises(ValueError, match="not in the affinity matrix"):
        select_paths(aff, "X/T1/CSF")
    with pytest.raises(ValueError, match="max_hops"):
        select_paths(aff, "T/T1/CSF", max_hops=0)
    sel = select_paths(aff, "T/T1/CSF")
    assert sel.chosen.tasks == ("A/T1/CSF", "T/T1/CSF") and sel.notes


@pytest.mark.parametrize("seed", range(4))
def test_hop_limited_search_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    graph = nx.gnp_random_graph(8, 0.45, seed=seed)
    for a, b in graph.edges:
        graph[a][b]["weight"] = float(rng.uniform(0.1, 5.0))
    for hops in (1, 2, 3, 4):
        found = _hop_limited_paths(graph, 0, hops)
        for start in graph.nodes:
            if start == 0:
                continue
            paths = [p for p in nx.all_simple_paths(graph, start, 0, cutoff=hops)]
            if not paths:
                assert start not in found
                continue
            costs = [sum(graph[a][b]["weight"] for a, b in zip(p[:-1], p[1:])) for p in paths]
            assert found[start][0] == pytest.approx(min(costs))


def test_max_hops_adds_longer_paths_with_consistent_costs():
    names = ["A/T1/CSF", "B/T1/GM", "C/T2/GM", "T/T2/WM"]
    # A -> B -> C -> T is the only way from A to T along edges (T shares T2 with C only).
    d = np.array([[0, 1, 9, 2], [1, 0, 1, 9], [9, 1, 0, 1], [2, 9, 1, 0]], dtype=float)
    aff = affinity_of(names, d, [4, 4, 4, 4])
    sel = select_paths(aff, "T/T2/WM", max_hops=3)
    long = [c for c in sel.candidates if c.tasks == ("A/T1/CSF", "B/T1/GM", "C/T2/GM", "T/T2/WM")]
    assert long and long[0].cost == pytest.approx(1 + 1 + 1 + 2)
    idx = {n: i for i, n in enumerate(names)}
    for c in sel.candidates:
        assert c.cost == pytest.approx(path_cost(c.tasks, d, idx))

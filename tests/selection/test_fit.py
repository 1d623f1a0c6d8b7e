import itertools

import numpy as np
import pytest

from trmcore.selection.affinity import AffinityResult
from trmcore.selection.fit import (
    MeasuredPath, cost_terms, fit_weights, load_fit, read_results, save_fit, split_path,
)
from trmcore.selection.tasks import parse_task_name


def synthetic_affinity(seed=0, n=7):
    rng = np.random.default_rng(seed)
    W = rng.uniform(10, 200, size=(n, n))
    W = (W + W.T) / 2
    np.fill_diagonal(W, 0)
    S = rng.uniform(0.2, 0.95, size=(n, n))
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1)
    tasks = [parse_task_name(f"S{i}/T1/CSF") for i in range(n)]
    return AffinityResult(tasks, [5] * n, [5] * n, W, S)


def synthetic_results(aff, alpha, beta, noise=0.0, seed=0):
    names = aff.names
    target = names[-1]
    paths = [(a, target) for a in names[:-1]] + [(a, b, target) for a, b in itertools.permutations(names[:-1], 2)]
    rng = np.random.default_rng(seed)
    out = []
    for p in paths:
        wc, sc = cost_terms(aff, p)
        cost = alpha * wc + beta * sc
        out.append(MeasuredPath(p, 0.95 - 0.01 * cost + noise * rng.standard_normal()))
    return out


@pytest.mark.parametrize("alpha,beta", [(0.0044, 2.4756), (0.02, 1.0), (0.001, 3.0)])
def test_fit_recovers_known_weights(alpha, beta):
    aff = synthetic_affinity()
    fit = fit_weights(aff, synthetic_results(aff, alpha, beta))
    assert fit.beta == 1.0
    assert fit.alpha == pytest.approx(alpha / beta, rel=1e-4)
    assert fit.correlation == pytest.approx(-1.0, abs=1e-9)
    assert fit.n_results == 6 + 30


def test_fit_with_noise_beats_wrong_weights():
    aff = synthetic_affinity(seed=1)
    results = synthetic_results(aff, 0.03, 1.0, noise=0.002, seed=2)
    fit = fit_weights(aff.with_weights(1.0, 0.0), results)
    assert fit.correlation < fit.default_correlation
    assert fit.alpha == pytest.approx(0.03, rel=0.3)


def test_fit_pure_image_term_sets_beta_zero():
    aff = synthetic_affinity(seed=3)
    fit = fit_weights(aff, synthetic_results(aff, 1.0, 0.0))
    assert (fit.alpha, fit.beta) == (1.0, 0.0)


def test_cost_terms_match_path_formula():
    aff = synthetic_affinity()
    names = aff.names
    wc, sc = cost_terms(aff, (names[0], names[1], names[6]))
    assert wc == pytest.approx(aff.W[0, 1] + aff.W[1, 6] + aff.W[0, 6])
    assert sc == pytest.approx(3 - aff.S[0, 1] - aff.S[1, 6] - aff.S[0, 6])
    with pytest.raises(ValueError, match="not in the affinity matrix"):
        cost_terms(aff, ("nope", names[0]))


def test_results_csv_and_bad_input(tmp_path):
    good = tmp_path / "r.csv"
    good.write_text('path,dice,note\n"A/T1/CSF,B/T1/CSF,T/T1/CSF",0.8,x\nA/T1/CSF>T/T1/CSF,0.7,\n')
    rows = read_results(good)
    assert rows[0].tasks == ("A/T1/CSF", "B/T1/CSF", "T/T1/CSF") and rows[1].dice == 0.7
    assert split_path("A -> B") == ("A", "B")
    with pytest.raises(ValueError, match="at least a source"):
        split_path("A")
    bad = tmp_path / "bad.csv"
    bad.write_text("route,score\nA>B,1\n")
    with pytest.raises(ValueError, match="'path' and 'dice'"):
        read_results(bad)
    bad.write_text("path,dice\nA>B,high\n")
    with pytest.raises(ValueError, match="not a number"):
        read_results(bad)
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "missing.csv")
    aff = synthetic_affinity()
    with pytest.raises(ValueError, match="at least 3"):
        fit_weights(aff, synthetic_results(aff, 1, 1)[:2])
    flat = [MeasuredPath(r.tasks, 0.5) for r in synthetic_results(aff, 1, 1)]
    with pytest.raises(ValueError, match="equal"):
        fit_weights(aff, flat)


def test_fit_round_trip(tmp_path):
    aff = synthetic_affinity()
    fit = fit_weights(aff, synthetic_results(aff, 0.01, 1.0))
    save_fit(fit, tmp_path)
    assert load_fit(tmp_path) == fit

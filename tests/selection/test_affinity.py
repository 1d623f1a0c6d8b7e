import numpy as np
import pytest

from trmcore.selection.affinity import (
    AffinityConfig, AffinityResult, affinity_from_volumes, affinity_reference, sample_cases, task_distance,
)
from trmcore.selection.tasks import SelectionTask

CONFIG = AffinityConfig(size=8, samples=4, progress=False)


def test_fast_affinity_equals_per_pair_reference(synthetic_tasks):
    fast = affinity_from_volumes(synthetic_tasks, CONFIG)
    slow = affinity_reference(synthetic_tasks, CONFIG)
    np.testing.assert_allclose(fast.W, slow.W, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.S, slow.S, rtol=1e-5, atol=1e-6)


def test_matrices_symmetric_and_self_distance_smallest(synthetic_tasks):
    result = affinity_from_volumes(synthetic_tasks, CONFIG)
    for matrix in (result.W, result.S, result.d):
        np.testing.assert_array_equal(matrix, matrix.T)
        assert np.all(np.isfinite(matrix))
    d = result.d
    for i in range(len(d)):
        others = np.delete(d[i], i)
        assert d[i, i] < others.min(), f"row {i}: {d[i]}"
    assert np.all(result.S <= 1.0 + 1e-12)


def test_single_volume_task_has_zero_self_distance(synthetic_tasks):
    one = synthetic_tasks[0]
    one.images, one.labels = one.images[:1], one.labels[:1]
    result = affinity_from_volumes(synthetic_tasks[:2], CONFIG)
    assert result.W[0, 0] == 0.0
    assert result.S[0, 0] == pytest.approx(1.0, abs=1e-9)
    assert result.d[0, 0] == pytest.approx(0.0, abs=1e-8)


def test_distance_formula_and_save_load(tmp_path, synthetic_tasks):
    result = affinity_from_volumes(synthetic_tasks, CONFIG)
    np.testing.assert_allclose(result.d, 0.0044 * result.W + 2.4756 * (1 - result.S))
    np.testing.assert_allclose(task_distance(result.W, result.S, 1.0, 0.0), result.W)
    written = result.save(tmp_path)
    assert {p.name for p in written} == {"W.csv", "S.csv", "d.csv", "affinity.json"}
    header = (tmp_path / "d.csv").read_text().splitlines()[0].split(",")
    assert header[1:] == result.names
    loaded = AffinityResult.load(tmp_path)
    np.testing.assert_allclose(loaded.d, result.d)
    assert loaded.tasks == result.tasks and loaded.n_cases == result.n_cases
    with pytest.raises(FileNotFoundError):
        AffinityResult.load(tmp_path / "missing")


def test_empty_task_and_bad_labels_are_refused(synthetic_tasks):
    synthetic_tasks[1].images, synthetic_tasks[1].labels = [], []
    with pytest.raises(ValueError, match="A/T2/CSF: no volumes"):
        affinity_from_volumes(synthetic_tasks, CONFIG)
    bad = synthetic_tasks[0]
    bad.labels = [lab * 5 for lab in bad.labels]
    with pytest.raises(ValueError, match="label values"):
        affinity_from_volumes([bad], CONFIG)


def test_unknown_target_is_a_clear_error(synthetic_tasks):
    result = affinity_from_volumes(synthetic_tasks[:2], CONFIG)
    with pytest.raises(ValueError, match="not in the affinity matrix"):
        result.index("Z/T1/CSF")


def test_sampling_is_seeded_and_order_independent():
    task = SelectionTask("A", ("T1",), ("CSF",))
    cases = [f"c{i}" for i in range(30)]
    first = sample_cases(cases, task, 10, seed=0)
    assert first == sample_cases(cases, task, 10, seed=0)
    assert len(set(first)) == 10 and first != sample_cases(cases, task, 10, seed=1)
    assert sample_cases(cases[:3], task, 10, seed=0) == cases[:3]
    with pytest.raises(ValueError, match="no volumes"):
        sample_cases([], task, 10, seed=0)


def test_pca_output_components_option(synthetic_tasks):
    """``pca_output="components"`` (the SPEC-literal reading) compares unit principal axes:
    the fast path equals the per-pair reference, W differs from the default "scores",
    and W no longer follows the intensity scale (scores scale with it). The images are
    float32, so "unchanged" holds to float32 rounding (rtol 1e-5)."""
    config = AffinityConfig(size=8, samples=4, progress=False, pca_output="components")
    fast = affinity_from_volumes(synthetic_tasks, config)
    slow = affinity_reference(synthetic_tasks, config)
    np.testing.assert_allclose(fast.W, slow.W, rtol=1e-9, atol=1e-12)
    assert fast.config["pca_output"] == "components"
    scores = affinity_from_volumes(synthetic_tasks, CONFIG)
    assert CONFIG.pca_output == "scores" and scores.config["pca_output"] == "scores"
    assert not np.allclose(fast.W, scores.W)
    np.testing.assert_allclose(fast.S, scores.S)
    for entry in synthetic_tasks:
        entry.images = [10.0 * image for image in entry.images]
    np.testing.assert_allclose(affinity_from_volumes(synthetic_tasks, config).W, fast.W, rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(affinity_from_volumes(synthetic_tasks, CONFIG).W, 10 * scores.W, rtol=1e-5)
    with pytest.raises(ValueError, match="pca_output"):
        AffinityConfig(pca_output="loadings")

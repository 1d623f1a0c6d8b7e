import numpy as np
import pytest
import scipy.ndimage as ndimage
import scipy.stats as stats

from trmcore.selection.similarity import (
    global_ssim, image_signature, label_intensity, pca_components, resize_image, resize_labels, wasserstein_1d,
)


def test_resize_matches_scipy_linear_zoom():
    x = np.random.default_rng(0).random((10, 12, 14)).astype(np.float32)
    ours = resize_image(x, 7)
    theirs = ndimage.zoom(x, (0.7, 7 / 12, 0.5), order=1, grid_mode=True, mode="nearest")
    assert ours.shape == (7, 7, 7) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_resize_labels_keeps_classes_and_identity():
    lab = np.random.default_rng(1).integers(0, 4, size=(6, 6, 6))
    np.testing.assert_array_equal(resize_labels(lab, 6), lab)
    up = resize_labels(lab, 12)
    assert set(np.unique(up)) <= set(np.unique(lab))
    np.testing.assert_array_equal(up[::2, ::2, ::2], lab)


def test_wasserstein_matches_scipy_and_is_a_distance():
    rng = np.random.default_rng(2)
    u, v = np.sort(rng.normal(size=300)), np.sort(rng.normal(1.0, 2.0, size=170))
    assert wasserstein_1d(u, v) == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-12)
    assert wasserstein_1d(u, u) == 0.0
    assert wasserstein_1d(u, v) == pytest.approx(wasserstein_1d(v, u), rel=1e-12)
    assert wasserstein_1d(u, u + 0.5) == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        wasserstein_1d(u, np.array([]))


def test_ssim_of_label_volume_with_itself_is_one():
    lab = label_intensity(np.random.default_rng(3).integers(0, 3, size=(8, 9, 10)), 3)
    assert global_ssim(lab, lab) == pytest.approx(1.0, abs=1e-12)
    other = label_intensity(np.zeros((8, 9, 10), dtype=np.int64), 3)
    assert global_ssim(lab, other) < 0.9
    with pytest.raises(ValueError, match="shapes differ"):
        global_ssim(lab, lab[:-1])


def test_ssim_formula_by_hand():
    a = np.array([0.0, 1.0, 1.0, 0.0])
    b = np.array([0.0, 0.0, 1.0, 1.0])
    c = 0.09
    # m = 0.5 each, var = 0.25 each, cov = 0
    expected = (2 * 0.25 + c) * (0 + c) / ((0.25 + 0.25 + c) * (0.5 + c))
    assert global_ssim(a, b) == pytest.approx(expected, rel=1e-12)


def test_pca_components_keep_75_percent_and_are_orthonormal():
    rng = np.random.default_rng(4)
    # Rank-2 structure plus small noise: two components carry almost all the variance.
    s = 16
    base = np.outer(rng.normal(size=s * s), rng.normal(size=s)) + np.outer(rng.normal(size=s * s), rng.normal(size=s))
    volume = (base + 0.01 * rng.normal(size=(s * s, s))).reshape(s, s, s)
    comps = pca_components(volume, 0.75)
    assert 1 <= comps.shape[0] <= 2 and comps.shape[1] == s
    np.testing.assert_allclose(comps @ comps.T, np.eye(comps.shape[0]), atol=1e-10)
    assert np.all(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)] > 0)
    assert pca_components(volume, 1.0).shape[0] == s


def test_pca_sign_convention_makes_signature_invariant_to_negated_image_columns():
    rng = np.random.default_rng(5)
    volume = rng.normal(size=(8, 8, 8))
    # Negating the whole volume leaves the covariance, hence the components, unchanged.
    np.testing.assert_allclose(pca_components(volume), pca_components(-volume), atol=1e-10)


def test_constant_volume_and_bad_inputs():
    assert np.all(pca_components(np.ones((4, 4, 4))) == 0)
    with pytest.raises(ValueError):
        pca_components(np.ones((4, 4, 5)))
    with pytest.raises(ValueError):
        pca_components(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match="3-D"):
        resize_image(np.ones((4, 4)), 4)
    with pytest.raises(ValueError):
        image_signature(np.ones((1, 2, 3, 4, 5)), 4)
    sig = image_signature(np.random.default_rng(6).normal(size=(2, 5, 6, 7)), 4)
    assert np.all(np.diff(sig) >= 0)


@pytest.mark.parametrize("m,n", [(300, 170), (5, 5), (1, 4), (64 * 3, 64 * 5), (97, 89)])
def test_wasserstein_quantile_form_matches_scipy_for_any_lengths(m, n):
    rng = np.random.default_rng(m * 1000 + n)
    u, v = np.sort(rng.normal(size=m)), np.sort(rng.exponential(size=n))
    assert wasserstein_1d(u, v) == pytest.approx(stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-15)


def test_pca_scores_are_the_projection_and_keep_the_intensity_scale():
    from trmcore.selection.similarity import pca_scores

    volume = np.random.default_rng(7).normal(size=(8, 8, 8))
    scores = pca_scores(volume)
    comps = pca_components(volume)
    x = volume.reshape(64, 8)
    np.testing.assert_allclose(scores, (x - x.mean(0)) @ comps.T, atol=1e-12)
    np.testing.assert_allclose(pca_scores(10 * volume), 10 * scores, rtol=1e-10, atol=1e-10)
    # Explained variance of the kept scores reaches the asked fraction.
    kept = scores.var(axis=0).sum() / (x - x.mean(0)).var(axis=0).sum()
    assert kept > 0.75
    with pytest.raises(ValueError, match="output"):
        image_signature(volume, 4, output="loadings")

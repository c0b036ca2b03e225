"""Gradient PCA (Figure 6): the projection math on known data, and the plot on a tiny model."""

import numpy as np

import tiny
from seam_jax.eval.pca import coordinates, gradient_pca, pca2, plot_pca


def test_pca2_recovers_the_direction_of_spread():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 5))
    x[:20, 2], x[20:, 2] = 3.0, -3.0  # two clusters along axis 2
    x += 0.01 * rng.normal(size=x.shape)
    proj, ratio = pca2(x)
    assert ratio[0] > 0.99
    assert np.all(np.sign(proj[:20, 0]) == -np.sign(proj[20:, 0]))
    # Projections reproduce the centred data's inner products on the top component.
    c = x - x.mean(0)
    np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(c[:, 2]), atol=0.05)


def test_coordinates_fixed_and_complete():
    np.testing.assert_array_equal(coordinates(10, 0), np.arange(10))
    a, b = coordinates(1000, 50, seed=1), coordinates(1000, 50, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 50


def test_gradient_pca_and_plot(tmp_path):
    fn = tiny.model()
    models = {"base": (fn, fn.init(0)), "other": (fn, fn.init(1))}
    adv = [tiny.batch(i) for i in range(3)]
    bgn = [tiny.batch(10 + i, all_targets=True) for i in range(3)]
    out = gradient_pca(models, adv, bgn, n_coords=500)
    for r in out.values():
        assert np.asarray(r["adv"]).shape == (3, 2) and np.asarray(r["bgn"]).shape == (3, 2)
        assert -1.0 <= r["cos_mean"] <= 1.0 and sum(r["explained"]) <= 1.0 + 1e-9
    png = plot_pca(out, tmp_path / "pca.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

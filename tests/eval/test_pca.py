"""Gradient PCA (Figure 6): the projection math on known data, the panel layout (PC2 against
PC3, a row per seed and a column per arm), and the plot on a tiny model."""

import numpy as np

import tiny
from seam_jax.eval.pca import coordinates, gradient_pca, panel_grid, pca, plot_pca


def test_pca_recovers_the_directions_of_spread_in_order():
    rng = np.random.default_rng(0)
    x = np.zeros((40, 5))
    x[:20, 2], x[20:, 2] = 3.0, -3.0      # the widest spread: along axis 2
    x[::2, 4], x[1::2, 4] = 1.0, -1.0     # the second: along axis 4
    x += 0.01 * rng.normal(size=x.shape)  # the third: noise
    proj, ratio = pca(x, 3)
    assert proj.shape == (40, 3) and ratio.shape == (3,)
    assert ratio[0] > 0.85 and 0.05 < ratio[1] < 0.15 and ratio[2] < 1e-3
    assert np.all(np.sign(proj[:20, 0]) == -np.sign(proj[20:, 0]))
    # Projections reproduce the centred data along each component's axis.
    c = x - x.mean(0)
    np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(c[:, 2]), atol=0.05)
    np.testing.assert_allclose(np.abs(proj[:, 1]), np.abs(c[:, 4]), atol=0.05)
    # Fewer rows than components: two rows have two singular values, the third is zeros.
    proj, ratio = pca(x[:2], 3)
    assert proj.shape == (2, 3) and np.all(proj[:, 2] == 0) and ratio[2] == 0


def test_panel_grid_rows_are_seeds_and_columns_arms():
    grid = panel_grid(["base-s0", "control-s0", "seam-s0", "base-s1", "control-s1", "seam-s1"])
    assert grid["seam-s1"] == (1, 2) and grid["base-s0"] == (0, 0) and grid["control-s1"] == (1, 1)
    assert panel_grid(["model", "other"]) == {"model": (0, 0), "other": (0, 1)}


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
        assert np.asarray(r["adv"]).shape == (3, 3) and np.asarray(r["bgn"]).shape == (3, 3)
        assert -1.0 <= r["cos_mean"] <= 1.0 and sum(r["explained"]) <= 1.0 + 1e-9
    png = plot_pca(out, tmp_path / "pca.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

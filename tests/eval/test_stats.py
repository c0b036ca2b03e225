"""Bootstrap intervals: coverage of a known proportion, shrinking with n, weights."""

import numpy as np
import pytest

from seam_jax.eval.stats import bootstrap_ci, summarise, with_ci


def test_covers_a_known_proportion_at_about_the_stated_rate():
    p, n, sims = 0.3, 200, 300
    rng = np.random.default_rng(0)
    hits = 0
    for s in range(sims):
        lo, hi = bootstrap_ci(rng.random(n) < p, n_boot=1000, seed=s)
        hits += lo <= p <= hi
    # Stated 95%; over 300 simulated samples the coverage estimate has a standard error
    # of 0.013, and the percentile interval of a proportion under-covers slightly at
    # n = 200, so accept 0.91..0.98 (about three standard errors around 0.95).
    assert 0.91 <= hits / sims <= 0.98, hits / sims


def test_shrinks_as_n_grows():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (50, 200, 800):
        w = [np.diff(bootstrap_ci(rng.random(n) < 0.3, n_boot=1000, seed=k))[0] for k in range(20)]
        widths[n] = float(np.mean(w))
    assert widths[50] > widths[200] > widths[800]
    # The width falls as 1/sqrt(n): a quarter of the items, twice the width (+-20%).
    assert 0.4 < widths[800] / widths[200] < 0.6


def test_seeded_and_weighted():
    v = np.array([1.0, 2.0, 3.0, 10.0])
    assert bootstrap_ci(v, seed=3) == bootstrap_ci(v, seed=3)
    # Weights give the weighted mean (a token-weighted CE from per-row means and counts).
    s = summarise([2.0, 4.0], weights=[3.0, 1.0])
    assert s["mean"] == pytest.approx(2.5) and s["n"] == 2
    lo, hi = s["ci"]
    assert 2.0 <= lo <= 2.5 <= hi <= 4.0
    out = {}
    with_ci(out, "acc", [1, 0, 1, 1])
    assert out["acc"] == 0.75 and len(out["acc_ci"]) == 2
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="weights"):
        bootstrap_ci([1.0, 2.0], weights=[1.0])

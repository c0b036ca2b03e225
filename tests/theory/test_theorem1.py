"""Theorem 1 checked numerically (seam_jax/theory) on a tiny model in float64.

Tolerances, and why:
- error <= bound, strictly, at every eps the analysis puts in the truncation regime: the
  bound is a theorem; its rho is a sampled sup, measured here at ~0.7 of the bound.
- fitted slopes: forward in [0.9, 1.1], central in [1.8, 2.2] (+-10%). In
  exact arithmetic they are 1 and 2; what moves them is the next Taylor term at
  eps = 1e-1 and the round-off that remains near the floor.
- e(eps)/eps against the leading Taylor term: 5% relative. The
  deviation is O(eps) from the next term (measured ~2e-5 at eps = 1e-5, ~2e-4 at 1e-4)
  plus float64 round-off ~ u |g| / eps^2 (~1e-6 at 1e-5), so 5% would catch a factor slip
  (a missing 1/2, a wrong |d|^2) by far.
- the third-derivative product against reverse mode (grad of u.H u): 1e-8 relative; both
  are exact derivatives in float64, differing in summation order only (~1e-13).
- perturbation survival: exact counts on hand-made values whose rounding is known.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.errors import ConfigError
from seam_jax.seam.sd_grad import geometry, hvp, sd_gradient
from seam_jax.tree import np_norm, tree_dot, tree_norm, tree_scale
from seam_jax.theory import bound, precision, report
from seam_jax.theory.precision import (
    check_perturbation, get_precision, perturbation_survival, precision_scope, warn_if_vanishing,
)
import xla_env

REPO = pathlib.Path(__file__).resolve().parents[2]
F64 = get_precision("float64")
GRID = "1e-9:1e-1:9"


@pytest.fixture(scope="module")
def setup():
    # Yield outside the scope: x64 must not stay on for the other tests of the module.
    with precision_scope(F64):
        fn = tiny.model("float64")
        params = fn.init(0)
        b = tiny.seam_batches(0)
        ref = bound.reference(fn, params, b["adv"], b["bgn"], F64, eps_max=1e-1, n_rho_samples=3)
        records, info = bound.sweep(fn, params, b["adv"], b["bgn"], ref, F64, bound.parse_eps_grid(GRID))
    analysis = report.analyse(records, paper_eps=1e-3)
    return dict(fn=fn, params=params, b=b, ref=ref, records=records, info=info, analysis=analysis)


# ----------------------------------------------------------------- the theorem
def test_reference_is_float64_and_consistent(setup):
    ref = setup["ref"]
    assert all(np.asarray(x).dtype == np.float64 for x in jax.tree.leaves(ref.exact))
    assert -1 < ref.cos < 1 and ref.norm_a > 0 and ref.norm_b > 0
    assert [x["s"] for x in ref.rho_samples] == pytest.approx([0.0, 1e-3, 1e-2, 1e-1, -1e-3, -1e-2, -1e-1])
    assert ref.rho_a >= ref.rho_samples[0]["T_a"] > 0
    # rho(eps) covers [theta, theta + eps d] with the samples up to the first s >= eps.
    assert ref.rho_at(1e-9)[0] == max(x["T_a"] for x in ref.rho_samples[:2])
    assert ref.rho_at(2e-3)[0] == max(x["T_a"] for x in ref.rho_samples[:3])
    assert ref.rho_at(1e-1) == (ref.rho_a, ref.rho_b)
    # Two-sided (the central difference's segment [theta - eps d, theta + eps d]).
    assert ref.rho_at(2e-3, two_sided=True)[0] == max(x["T_a"] for x in ref.rho_samples
                                                     if abs(x["s"]) <= 1e-2 * (1 + 1e-9))
    assert ref.rho_at(1e-1, two_sided=True)[1] == max(x["T_b"] for x in ref.rho_samples)
    central = [r for r in setup["records"] if r["estimator"] == "central"]
    assert all(r["bound"] == pytest.approx(bound.bounds(r["eps"], ref, two_sided=True)[0]) for r in central)
    tight, paper = bound.bounds(1e-3, ref)
    assert tight == pytest.approx((1 - ref.cos ** 2) * paper, rel=1e-12) and tight <= paper


@pytest.mark.parametrize("estimator", ["hessian_free", "central"])
def test_error_within_bound_in_truncation_regime(setup, estimator):
    rows = [r for r in setup["records"] if r["estimator"] == estimator and r["regime"] == "truncation"]
    # Not vacuous: float64 leaves a wide truncation regime (forward: 1e-7..1e-1).
    assert len(rows) >= 4, [(r["eps"], r["regime"]) for r in setup["records"]]
    for r in rows:
        assert r["error"] <= r["bound"] <= r["bound_paper"], r
    assert setup["analysis"]["float64"][estimator]["bound_holds_in_truncation"]


def test_fitted_slopes(setup):
    a = setup["analysis"]["float64"]
    assert 0.9 <= a["hessian_free"]["slope_truncation"] <= 1.1, a["hessian_free"]
    assert 1.8 <= a["central"]["slope_truncation"] <= 2.2, a["central"]
    # The round-off side rises as eps falls (about u|g|/eps, slope -1).
    assert a["hessian_free"]["best_eps"] < 1e-6 and a["hessian_free"]["paper_eps_regime"] == "truncation"


@pytest.mark.parametrize("eps", [1e-5, 1e-4])
def test_error_over_eps_converges_to_leading_taylor_term(setup, eps):
    s, ref = setup, setup["ref"]
    with precision_scope(F64):
        e = bound.forward_error_vector(s["fn"], s["params"], s["b"]["adv"], s["b"]["bgn"], ref, eps)
    diff = jax.tree.map(lambda x, lead: x / eps - lead, e, ref.lead)
    assert np_norm(diff) <= 0.05 * ref.lead_norm
    # The table's Taylor column is the same term, eps |lead|.
    row = next(r for r in s["records"] if r["estimator"] == "hessian_free" and math.isclose(r["eps"], 1e-5))
    assert row["taylor"] == pytest.approx(1e-5 * ref.lead_norm)


def test_third_directional_matches_reverse_mode(setup):
    """``D^3 l[u, u, .]`` by jvp-of-hvp equals ``grad_theta (u . H(theta) u)`` (a different AD route)."""
    s = setup
    with precision_scope(F64):
        grad_fn = bound.loss_grad(s["fn"])
        geo = geometry(grad_fn(s["params"], s["b"]["adv"]), grad_fn(s["params"], s["b"]["bgn"]))
        u = tree_scale(1.0 / tree_norm(geo.d_a), geo.d_a)
        fwd = bound.third_directional(grad_fn, s["params"], s["b"]["adv"], u)
        rev = jax.grad(lambda p: tree_dot(u, hvp(grad_fn, p, s["b"]["adv"], u)))(s["params"])
        rel = float(tree_norm(jax.tree.map(jnp.subtract, fwd, rev)) / tree_norm(rev))
        norm = float(tree_norm(fwd))
    assert rel < 1e-8
    # rho's sample at s = 0 is this norm (same computation, same float64 arithmetic).
    assert s["ref"].rho_samples[0]["T_a"] == pytest.approx(norm, rel=1e-12)


# ----------------------------------------------------------------- the report
def test_classify_a_synthetic_v_curve():
    """Round-off 1e-8/eps meets truncation eps (forward, known) or eps^2 (central, fitted)."""
    eps = list(np.logspace(-8, 0, 9))
    err = [1e-8 / e + e for e in eps]
    fit = report.classify(eps, err, 1, trunc=list(eps))
    assert eps[fit["best"]] == pytest.approx(1e-4) and fit["eps_star"] == pytest.approx(1e-4, rel=1e-3)
    assert fit["regimes"] == ["round-off"] * 4 + ["crossover"] + ["truncation"] * 4
    trunc = [eps[i] for i, g in enumerate(fit["regimes"]) if g == "truncation"]
    assert report.fit_slope(trunc, [err[eps.index(e)] for e in trunc]) == pytest.approx(1.0, abs=0.01)
    assert report.regime_at(3e-3, eps, err, fit, 1)[0] == "truncation"
    assert report.regime_at(3e-7, eps, err, fit, 1)[0] == "round-off"
    assert report.regime_at(1e-12, eps, err, fit, 1)[0] == "outside the grid"

    err2 = [1e-8 / e + e ** 2 for e in eps]
    fit2 = report.classify(eps, err2, 2)
    assert eps[fit2["best"]] == pytest.approx(1e-3)
    assert fit2["a"] == pytest.approx(1.0, rel=1e-3) and fit2["b"] == pytest.approx(1e-8, rel=1e-3)
    assert fit2["regimes"][:5] == ["round-off"] * 5 and fit2["regimes"][-2:] == ["truncation"] * 2
    # An estimate rounded to zero is "vanished", whatever its error.
    assert report.classify(eps[:3], [1.0, 1.0, 0.5], 1, vanished=[True, True, False])["regimes"][:2] == \
        ["vanished"] * 2


def test_shared_estimates_are_sd_gradients_bit_for_bit():
    """The sweep shares g(theta + eps d) between the forward and central differences.

    Compiled with XLA:CPU's fusion emitters, as the jobs are (``xla_env.JOB_CODEGEN``): each
    gradient is a loop body of its own (``sd_grad.gradient_at``), and under the loop emitters
    the fast suite compiles with (``xla_env.CODEGEN``) the same body gave gradients that
    differ in their last bits between the two programs (measured: 2.2e-5 in the forward
    difference), as in tests/seam/test_sd_precision.py."""
    fn = tiny.model("float32")
    params = fn.init(2)
    b = tiny.seam_batches(2)
    grad_fn = bound.loss_grad(fn)
    g_a, g_b = grad_fn(params, b["adv"]), grad_fn(params, b["bgn"])
    geo = geometry(g_a, g_b)
    names = ("hessian_free", "central")

    def compiled(f):
        return jax.jit(f).lower(params, g_a, g_b, geo).compile(compiler_options=xla_env.JOB_CODEGEN)

    got = compiled(lambda p, a, c, gm: dict(bound.fd_estimates(grad_fn, p, b["adv"], b["bgn"], a, c, gm,
                                                                1e-3, names)))(params, g_a, g_b, geo)
    for name in names:
        want = compiled(lambda p, a, c, gm: sd_gradient(name, grad_fn, p, b["adv"], b["bgn"], a, c, gm,
                                                        eps=1e-3, vmap=False))(params, g_a, g_b, geo)
        for x, y in zip(jax.tree.leaves(got[name]), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("grid", ["1e-3,abc", "0,1e-3", "-1e-3", "1e-3,nan", "1e-9:1e-1:x", "0:1e-1:5",
                                  "", "1e-9:1e-1:0"])
def test_bad_eps_grid_is_a_config_error(grid):
    with pytest.raises(ConfigError, match="eps_grid"):
        bound.parse_eps_grid(grid)


def test_eps_grid_forms():
    assert bound.parse_eps_grid("1e-9:1e-1:9") == pytest.approx([10.0 ** k for k in range(-9, 0)])
    assert bound.parse_eps_grid("1e-2, 1e-3") == [1e-3, 1e-2]
    with pytest.raises(ConfigError):
        bound.parse_eps_grid(["a"])


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="float8"):
        get_precision("float8")
    with pytest.raises(ConfigError):
        precision.parse_precisions(" , ")
    from seam_jax.jobs.theory import reference_precision
    with pytest.raises(ConfigError, match="reference"):
        reference_precision("bfloat16", [get_precision("bfloat16")])


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # the refused path
def test_float64_is_enabled_for_it_and_refused_when_it_cannot_be(monkeypatch):
    with precision_scope(F64):
        assert jnp.ones(2, jnp.float64).dtype == jnp.float64
    with precision_scope(get_precision("float32")):
        assert jnp.ones(2).dtype == jnp.float32
    # A platform where enabling x64 has no effect: the scope must refuse, not compute in float32.
    monkeypatch.setattr(precision.jax, "enable_x64", lambda on: contextlib.nullcontext())
    with pytest.raises(ConfigError, match="float64"):
        with precision_scope(F64):
            pass


def test_job_rejects_bad_input_before_loading_anything(tmp_path):
    from seam_jax.jobs import theory

    sys.path.insert(0, str(REPO / "configs"))
    try:
        import debug
    finally:
        sys.path.remove(str(REPO / "configs"))
    for field, value in (("eps_grid", "1e-3,oops"), ("eps_grid", "0,1e-3"), ("dtypes", "float32,float8")):
        c = debug.get_config("theory")
        c.run_dir = str(tmp_path / field)
        c.theory[field] = value
        with pytest.raises(ConfigError):
            theory.run(c)
        assert not (tmp_path / field).exists()


# ----------------------------------------------------------------- rounding of theta + eps d
def test_perturbation_survival_counts_exactly():
    params = {"w": jnp.ones(4, jnp.float32)}
    d = {"w": jnp.asarray([1e-3, 1e-6, 1e-9, 0.0], jnp.float32)}
    # float32 spacing at 1 is 1.2e-7: 1e-3 and 1e-6 survive, 1e-9 does not; d = 0 is not counted.
    assert perturbation_survival(params, d, 1.0, "float32") == pytest.approx(2 / 3)
    # bfloat16 spacing at 1 is 7.8e-3: a float32 perturbation of 1e-3 is lost in the compute cast.
    assert perturbation_survival(params, d, 1.0, "bfloat16") == 0.0
    assert perturbation_survival(params, d, 10.0, "bfloat16") == pytest.approx(1 / 3)
    assert perturbation_survival(params, {"w": jnp.zeros(4)}, 1.0, "float32") == 1.0


def test_warn_if_vanishing(caplog):
    params = {"w": jnp.ones(4, jnp.float32)}
    d = {"w": jnp.asarray([1e-3, 1e-6, 1e-9, 0.0], jnp.float32)}
    with caplog.at_level("WARNING", logger="seam_jax.theory.precision"):
        assert warn_if_vanishing(params, d, 1.0, "float32") > 0.5
        assert not caplog.records
        assert warn_if_vanishing(params, d, 1.0, "bfloat16") == 0.0
    assert len(caplog.records) == 1 and "exact_hvp" in caplog.records[0].getMessage()


def test_check_perturbation_on_a_bfloat16_compute_model(caplog):
    fn = tiny.model("bfloat16", param_dtype="float32")  # float32 master, bfloat16 compute
    params = fn.init(0)
    b = tiny.seam_batches(0)
    assert check_perturbation(fn, params, b, 1e-3, "exact_hvp") is None
    with caplog.at_level("WARNING", logger="seam_jax.theory.precision"):
        frac = check_perturbation(fn, params, b, 1e-3, "hessian_free")
    # |theta_i| ~ 0.1 has bfloat16 spacing ~5e-4, far above eps |d_i| ~ 1e-5.
    assert set(frac) == {"d_a", "d_b"} and max(frac.values()) < 0.5
    assert len(caplog.records) == 2
    # The same direction in float32 compute survives.
    assert min(check_perturbation(tiny.model("float32"), params, b, 1e-3, "central").values()) > 0.5


# ----------------------------------------------------------------- the job, end to end
@pytest.mark.e2e  # a whole job: run by `python -m pytest -m e2e` (.ci/run), not the fast suite
def test_theory_job_end_to_end(tmp_path):
    """``python -m seam_jax.main --config=configs/debug.py:theory``: float64, float32, bfloat16."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["XLA_FLAGS"] = xla_env.with_devices(None)  # one device is enough; the fake 8 of conftest only cost memory here
    proc = subprocess.run(
        [sys.executable, "-m", "seam_jax.main", f"--config={REPO / 'configs' / 'debug.py'}:theory",
         f"--config.run_dir={tmp_path}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("theorem1.csv", "theorem1.json", "theorem1.png", "summary.json"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    labels = {"truncation", "round-off", "crossover", "vanished"}
    assert set(summary["dtypes"]) == {"float64", "float32", "bfloat16"}
    assert all(v["paper_eps_regime"] in labels for v in summary["dtypes"].values())
    assert summary["dtypes"]["float64"]["paper_eps_regime"] == "truncation"
    # bfloat16 compute rounds most of eps d away at 1e-3: with 8 significant bits its spacing
    # is 0.4-0.8% of |theta_i|, far above the per-coordinate perturbation eps |d_i| (|d| <= 1
    # spread over all the parameters).
    assert summary["dtypes"]["bfloat16"]["paper_eps_regime"] in ("round-off", "vanished")
    assert len(summary["lines"]) == 3
    rows = (tmp_path / "theorem1.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 2 * 9
    full = json.loads((tmp_path / "theorem1.json").read_text())
    assert full["reference"]["precision"] == "float64"
    assert "finite-difference perturbation" in proc.stderr and "exact_hvp" in proc.stderr  # bf16

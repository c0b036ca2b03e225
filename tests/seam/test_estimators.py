"""The three estimators of grad L_sd in float64 on a tiny model.

- exact_hvp (jvp over grad) against autodiff (grad of the cosine): 1e-8 relative.
  Both are exact derivatives differing only in float64 summation order (~1e-14),
  so 1e-8 is loose against round-off but tight against any algebra slip.
- hessian_free's error falls as O(eps): fitted log-log slope in [0.9, 1.1] over
  eps in [1e-6, 1e-2]; central difference as O(eps^2), slope in [1.8, 2.2]. In exact
  arithmetic the slopes are 1 and 2; the +-10% leave room for the next Taylor term at
  the large-eps end and float64 round-off at the small end, while a wrong order is 1 off.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.sd_grad import geometry, sd_gradient
from seam_jax.tree import tree_norm, tree_sub


@pytest.fixture(scope="module")
def setup():
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(0)
        b = tiny.seam_batches(0)
        grad_fn = jax.jit(jax.grad(lambda p, bt: masked_ce(fn, p, bt)))
        g_a, g_b = grad_fn(params, b["adv"]), grad_fn(params, b["bgn"])
        geo = geometry(g_a, g_b)

        def est(name, eps=1e-3, vmap=True):
            return sd_gradient(name, grad_fn, params, b["adv"], b["bgn"], g_a, g_b, geo,
                               eps=eps, vmap=vmap)
        exact = est("exact_hvp")
        yield dict(fn=fn, params=params, est=est, exact=exact, geo=geo)


def _rel(a, b):
    return float(tree_norm(tree_sub(a, b)) / tree_norm(b))


def test_model_computes_in_float64(setup):
    with jax.enable_x64(True):
        leaves = jax.tree.leaves(setup["exact"])
        assert all(x.dtype == jnp.float64 for x in leaves)


def test_exact_hvp_matches_autodiff(setup):
    with jax.enable_x64(True):
        auto = setup["est"]("autodiff")
        assert _rel(setup["exact"], auto) < 1e-8
        assert -1.0 < float(setup["geo"].cos) < 1.0


def _slope(setup, name, grid):
    with jax.enable_x64(True):
        errs = [_rel(setup["est"](name, eps=e), setup["exact"]) for e in grid]
    slope = np.polyfit(np.log(grid), np.log(errs), 1)[0]
    return slope, errs


def test_hessian_free_converges_linearly(setup):
    grid = np.logspace(-6, -2, 9)
    slope, errs = _slope(setup, "hessian_free", grid)
    assert 0.9 <= slope <= 1.1, (slope, errs)
    assert errs[0] < 1e-4


def test_central_difference_converges_quadratically(setup):
    grid = np.logspace(-4, -2, 5)  # below 1e-4 the O(eps^2) term meets float64 round-off
    slope, errs = _slope(setup, "central", grid)
    assert 1.8 <= slope <= 2.2, (slope, errs)


def _forms(dtype, eps):
    fn = tiny.model(dtype)
    params = fn.init(1)
    b = tiny.seam_batches(1)
    grad_fn = jax.grad(lambda p, bt: masked_ce(fn, p, bt))
    g_a, g_b = grad_fn(params, b["adv"]), grad_fn(params, b["bgn"])
    geo = geometry(g_a, g_b)
    out = {}
    for name in ("hessian_free", "central"):
        out[name] = [jax.jit(lambda v=v: sd_gradient(name, grad_fn, params, b["adv"], b["bgn"], g_a,
                                                      g_b, geo, eps=eps, vmap=v))()
                     for v in (True, False)]
    return out


def test_vmap_and_sequential_forms_agree_to_round_off():
    """The two forms are the same arithmetic, batched differently.

    A perturbed gradient carries round-off ~u|g| (u: unit round-off), which the
    estimator divides by eps|g|, so the forms may differ by ~u/eps relative. In float32
    (u = 6e-8) that is 6e-6 at eps = 1e-2; the bound, 3e-5, is 5x that for the round-off
    the model's reductions accumulate. In float64 (u = 1.1e-16) the same reasoning gives
    ~1e-14; 1e-10 is asserted.
    """
    for name, (v, s) in _forms("float32", 1e-2).items():
        assert _rel(v, s) < 3e-5, name
    with jax.enable_x64(True):
        for name, (v, s) in _forms("float64", 1e-2).items():
            assert _rel(v, s) < 1e-10, name


def test_sd_remat_is_wired_and_recomputes_the_same_gradient():
    """``seam.sd_remat`` changes what the estimator's backward passes store, not the arithmetic.

    - Wiring: the SEAM gradient's jaxpr holds the remat primitive (``remat2``;
      ``checkpoint`` in older JAX) with ``sd_remat="full"`` and not with ``"none"``,
      for both estimator families, so the option cannot be silently ignored.
    - Values: rematerialised layers recompute the same operations, so hessian_free
      agrees to round-off, ~u/eps ~ 1e-13 relative in float64 at eps = 1e-3 (see the
      test above); 1e-10 is asserted. (Compared through ``sd_gradient``, whose programs
      compile in seconds; the whole SEAM gradient's take ~15 s each.)
    """
    from seam_jax.model.api import ModelFn
    from seam_jax.seam.objective import SeamHyper, seam_gradient

    remat = re.compile(r"\b(remat2?|checkpoint)\[")
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(2)
        b = tiny.seam_batches(2)
        for estimator in ("hessian_free", "exact_hvp"):
            for policy, present in (("none", False), ("full", True)):
                hp = SeamHyper(estimator=estimator, beta=1.0, sd_remat=policy)
                jaxpr = str(jax.make_jaxpr(lambda p: seam_gradient(fn, p, b, hp)[0])(params))
                assert bool(remat.search(jaxpr)) == present, (estimator, policy)

        g = jax.jit(jax.grad(lambda p, bt: masked_ce(fn, p, bt)))
        g_a, g_b = g(params, b["adv"]), g(params, b["bgn"])
        geo = geometry(g_a, g_b)
        out = {}
        for policy in ("none", "full"):
            f = ModelFn(fn.config.replace(remat=policy))
            gf = jax.grad(lambda p, bt, f=f: masked_ce(f, p, bt))
            out[policy] = jax.jit(lambda p, gf=gf: sd_gradient(
                "hessian_free", gf, p, b["adv"], b["bgn"], g_a, g_b, geo, eps=1e-3))(params)
    assert _rel(out["full"], out["none"]) < 1e-10


def test_sd_remat_rejects_an_unknown_policy():
    from seam_jax.seam.objective import SeamHyper

    with pytest.raises(ValueError, match="seam.sd_remat='some'.*full"):
        SeamHyper(sd_remat="some")

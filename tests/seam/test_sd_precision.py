"""The precision policy of the L_sd gradient (``seam.sd_precision``) and the pre-training check.

On a bfloat16-compute model, ``theta + eps d`` loses most of ``eps d`` in the compute cast,
and Eq. 6 then measures rounding: these tests show the trap (``faithful``), its fix
(``float32``: the difference's gradients in float32, by one program), that a float32 or
float64 model is untouched, and that the job's check refuses the trap with one line.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
import xla_env
from seam_jax.errors import ConfigError
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.objective import SeamHyper, sd_model, sd_term, seam_gradient
from seam_jax.seam.sd_grad import (
    SD_PRECISIONS, geometry, gradient_at, perturbed_grads, sd_gradient, side_direction, theta_grads,
)
from seam_jax.theory.precision import REALISED_COS_MIN, check_sd_precision, realised_perturbation
from seam_jax.tree import error_norm, np_norm


def _grad(fn):
    return jax.grad(functools.partial(masked_ce, fn))


def _sd(fn, params, b, hp):
    """grad L_sd by ``sd_term`` as the SEAM step calls it (the step's own g_a, g_b at theta)."""
    g = _grad(fn)
    return jax.jit(lambda p: sd_term(fn, p, b["adv"], b["bgn"], g(p, b["adv"]), g(p, b["bgn"]), hp)[1])(params)


def _rel(est, exact):
    return error_norm(est, exact) / np_norm(exact)


@pytest.fixture(scope="module")
def bf16_case():
    """theta (float32), the exact float32 grad L_sd (exact_hvp), and the bfloat16-compute model."""
    f32 = tiny.model("float32")
    params = f32.init(0)
    b = tiny.seam_batches(0)
    g = _grad(f32)
    ga, gb = jax.jit(g)(params, b["adv"]), jax.jit(g)(params, b["bgn"])
    exact = jax.jit(lambda p, a, c: sd_gradient("exact_hvp", g, p, b["adv"], b["bgn"], a, c,
                                                 geometry(a, c)))(params, ga, gb)
    return params, b, exact, tiny.model("bfloat16", param_dtype="float32")


# ----------------------------------------------------------------- float64: every policy is exact
# Tolerances (relative to |grad L_sd|), from the estimators' truncation errors in float64 on
# this model: the forward difference is O(eps) (measured ~1e-6 at eps 1e-6), the central one
# O(eps^2) (~1e-9 at eps 1e-4); exact_hvp differs from reverse-over-reverse autodiff only by
# float64 round-off (~1e-15).
F64_CASES = (("hessian_free", 1e-6, 1e-4), ("central", 1e-4, 1e-6), ("exact_hvp", 1e-3, 1e-10))


def _one_program(f, *args) -> str:
    """The jaxpr of ``f(*args)``: two functions with equal jaxprs compile to one program,
    so they return bit-identical results (tracing costs seconds, compiling each ~10 s)."""
    return str(jax.make_jaxpr(f)(*args))


def test_every_policy_is_exact_in_float64():
    """On a float64 model the three policies trace to one program (none widens float64), and
    that program's grad L_sd equals reverse-over-reverse autodiff within each estimator's
    tolerance (F64_CASES), so every policy does."""
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(0)
        b = tiny.seam_batches(0)
        g = _grad(fn)
        ga, gb = jax.jit(g)(params, b["adv"]), jax.jit(g)(params, b["bgn"])
        # Jitted: op by op, reverse-over-reverse autodiff of the tiny model takes tens of
        # seconds; the same float64 arithmetic compiled, up to XLA's reordering (~1e-15).
        truth = jax.jit(lambda p, a, c: sd_gradient("autodiff", g, p, b["adv"], b["bgn"], a, c,
                                                     geometry(a, c)))(params, ga, gb)
        for est, eps, tol in F64_CASES:
            def sd(p, policy):
                hp = SeamHyper(estimator=est, eps=eps, sd_precision=policy)
                return sd_term(fn, p, b["adv"], b["bgn"], g(p, b["adv"]), g(p, b["bgn"]), hp)[1]

            programs = {pol: _one_program(functools.partial(sd, policy=pol), params)
                        for pol in SD_PRECISIONS}
            assert len(set(programs.values())) == 1, (est, "the policies differ in float64")
            got = jax.jit(functools.partial(sd, policy=SD_PRECISIONS[0]))(params)
            assert jax.tree.leaves(got)[0].dtype == jnp.float64
            assert _rel(got, truth) <= tol, (est, _rel(got, truth))


def test_a_float32_model_is_unchanged_by_the_policy():
    """On a float32 model the three policies trace the whole SEAM gradient to one program,
    so their steps are bit-identical."""
    fn = tiny.model("float32")
    params = fn.init(0)
    b = tiny.seam_batches(0)
    for est in ("hessian_free", "exact_hvp"):
        programs = {p: _one_program(functools.partial(
            seam_gradient, fn, hp=SeamHyper(estimator=est, sd_precision=p)), params, b)
            for p in SD_PRECISIONS}
        assert len(set(programs.values())) == 1, (est, "a policy changes a float32 model's step")
        assert sd_model(fn, SeamHyper(sd_precision="float32", sd_remat="model")) is fn


# ----------------------------------------------------------------- bfloat16 compute: the trap and its fix
def test_float32_difference_fixes_the_bfloat16_trap(bf16_case):
    params, b, exact, bf = bf16_case
    fixed = _rel(_sd(bf, params, b, SeamHyper(eps=1e-3, sd_precision="float32")), exact)
    trap = _rel(_sd(bf, params, b, SeamHyper(eps=1e-3, sd_precision="faithful")), exact)
    # 1e-2: the forward difference's truncation at eps 1e-3 on this model is ~1.6e-3 in float32
    # (float32 round-off adds ~1e-4); the bfloat16 difference is ~11x |grad L_sd| (rounding).
    assert fixed <= 1e-2, fixed
    assert trap > 0.5, trap
    # exact_hvp: in float32 it is the reference up to the remat's round-off (~5e-7); in
    # bfloat16 compute it is off by ~1.8e-2 here (the bfloat16 forward's own error).
    hvp32 = _rel(_sd(bf, params, b, SeamHyper(estimator="exact_hvp", sd_precision="float32")), exact)
    hvp16 = _rel(_sd(bf, params, b, SeamHyper(estimator="exact_hvp", sd_precision="compute")), exact)
    assert hvp32 <= 1e-5 < 1e-3 <= hvp16, (hvp32, hvp16)


@pytest.mark.parametrize("vmap", [True, False])
def test_theta_and_perturbed_gradients_come_from_one_program(bf16_case, vmap):
    """g(theta) and g(theta + 0 d) are bit-identical: one grad function, one program.

    Compiled with XLA:CPU's fusion emitters, as the jobs are (``xla_env.JOB_CODEGEN``): the
    loop emitters the fast suite compiles with (``xla_env.CODEGEN``) give the two
    evaluations gradients that differ in their last bits (measured: under them this
    test fails), so the property belongs to the jobs' code generation."""
    params, b, _, bf = bf16_case
    hp = SeamHyper(sd_precision="float32", vmap=vmap)
    g = _grad(sd_model(bf, hp))
    assert sd_model(bf, hp).config.dtype == "float32"

    def both(p):
        ga, gb = theta_grads(g, p, [b["adv"], b["bgn"]], vmap=vmap)
        geo = geometry(ga, gb)
        if vmap:  # the estimator's vmapped program
            pa, pb = perturbed_grads(g, p, [(geo.d_a, 0.0, b["adv"]), (geo.d_b, 0.0, b["bgn"])])
        else:  # the sequential estimator's gradients, as ``by_sides`` takes them
            ok = jnp.isfinite(geo.cos)
            pa, pb = (gradient_at(g, p, side_direction(geo, side, ga, gb), 0.0, batch, ok)
                      for side, batch in ((0, b["adv"]), (1, b["bgn"])))
        step_geo, _ = sd_term(bf, p, b["adv"], b["bgn"], None, None, hp)
        return (ga, gb), (pa, pb), geo, step_geo

    compiled = jax.jit(both).lower(params).compile(compiler_options=xla_env.JOB_CODEGEN)
    (ga, gb), (pa, pb), geo, step_geo = compiled(params)
    for x, y in zip(jax.tree.leaves((ga, gb)), jax.tree.leaves((pa, pb)), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    # ... and the SEAM step's L_sd geometry is built from those very theta gradients.
    for x, y in zip(geo[:3], step_geo[:3], strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    assert step_geo.d_a is None  # the step forms its directions where they are used


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="sd_precision"):
        SeamHyper(sd_precision="bf16")


# ----------------------------------------------------------------- the realised perturbation and the check
def test_realised_perturbation_by_hand():
    params = {"w": jnp.ones(4, jnp.float32)}
    d = {"w": jnp.asarray([1e-3, 1e-6, 1e-9, 0.0], jnp.float32)}
    # float32 (spacing 1.2e-7 at 1): 1e-3 and 1e-6 survive to within half an ulp, 1e-9 is lost.
    r = realised_perturbation(params, d, 1.0, "float32")
    assert r["cos"] > 0.999999 and r["rel_error"] < 1e-4 and r["survival"] == pytest.approx(2 / 3)
    # bfloat16 (spacing 7.8e-3 at 1): everything is lost, delta = 0.
    r = realised_perturbation(params, d, 1.0, "bfloat16")
    assert r["cos"] == 0.0 and r["rel_error"] == pytest.approx(1.0) and r["norm_ratio"] == 0.0
    # eps = 10: 1e-2 jumps one whole bfloat16 ulp (7.8e-3): the direction survives, the length is 22% off.
    r = realised_perturbation(params, d, 10.0, "bfloat16")
    assert r["cos"] == pytest.approx(1.0, abs=1e-6) and r["norm_ratio"] == pytest.approx(0.78125, rel=1e-3)


def test_check_refuses_a_lossy_bfloat16_difference_with_one_line(bf16_case, caplog):
    params, b, _, bf = bf16_case
    with pytest.raises(ConfigError) as e:
        check_sd_precision(bf, params, b, SeamHyper(eps=1e-3, sd_precision="compute"))
    msg = str(e.value)
    assert "\n" not in msg and "--config.seam.sd_precision=float32" in msg and "rounding" in msg
    # faithful: the original's arithmetic, on purpose: accepted, with a warning and the numbers.
    with caplog.at_level("WARNING", logger="seam_jax.theory.precision"):
        out = check_sd_precision(bf, params, b, SeamHyper(eps=1e-3, sd_precision="faithful"))
    assert out["d_a"]["cos"] < REALISED_COS_MIN and len(caplog.records) == 1
    # float32: the difference's program computes in float32, where eps d survives.
    out = check_sd_precision(bf, params, b, SeamHyper(eps=1e-3, sd_precision="float32"))
    assert min(out["d_a"]["cos"], out["d_b"]["cos"]) > 0.99
    # Nothing is perturbed: no check.
    assert check_sd_precision(bf, params, b, SeamHyper(estimator="exact_hvp", sd_precision="compute")) is None
    assert check_sd_precision(bf, params, b, SeamHyper(beta=0.0, sd_precision="compute")) is None


def test_check_names_the_master_weights_when_they_round(bf16_case):
    """Pure bfloat16 (bf16 parameters): float32 compute cannot help; the fix is float32 master weights."""
    _, b, _, _ = bf16_case
    pure = tiny.model("bfloat16")
    params = pure.init(0)
    with pytest.raises(ConfigError, match=r"--config\.model\.param_dtype=float32"):
        check_sd_precision(pure, params, b, SeamHyper(eps=1e-3, sd_precision="float32"))


# ----------------------------------------------------------------- the SEAM job
def _debug_config(tmp_path, policy):
    import pathlib
    import sys

    configs = pathlib.Path(__file__).resolve().parents[2] / "configs"
    sys.path.insert(0, str(configs))
    try:
        import debug
    finally:
        sys.path.remove(str(configs))
    c = debug.get_config()
    c.run_dir = str(tmp_path / policy)
    c.model.param_dtype, c.model.dtype = "float32", "bfloat16"
    c.seam.eps, c.seam.sd_precision = 1e-3, policy
    c.eval.enabled = False
    c.steps = 1
    return c


@pytest.mark.e2e  # a whole job: run by `python -m pytest -m e2e` (.ci/run), not the fast suite
def test_seam_job_refuses_a_lossy_difference_before_training_and_runs_it_when_faithful(tmp_path):
    from seam_jax.jobs import seam as seam_job

    c = _debug_config(tmp_path, "compute")
    with pytest.raises(ConfigError, match=r"--config\.seam\.sd_precision=float32") as e:
        seam_job.run(c)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "compute").glob("**/summary.json"))  # nothing trained
    summary = seam_job.run(_debug_config(tmp_path, "faithful"))
    assert summary["sd_perturbation"]["d_a"]["cos"] < REALISED_COS_MIN


def _dot_precisions(jaxpr) -> list[tuple[str, str]]:
    """(operand dtypes, precision) of every dot_general in ``jaxpr`` and its sub-jaxprs."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            dtypes = ",".join(sorted({str(v.aval.dtype) for v in eqn.invars}))
            out.append((dtypes, str(eqn.params["precision"])))
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(_dot_precisions(inner))
    return out


def test_the_float32_policy_asks_for_float32_products():
    """On GPUs and TPUs JAX's default for float32 matmul operands is TF32 or one bfloat16
    pass, which would round eps d away inside the products as the compute cast does; the
    float32 policy's products carry precision HIGHEST (checked in the jaxpr, since a CPU
    computes float32 products either way), and the bfloat16 rest of the step does not."""
    bf = tiny.model("bfloat16", param_dtype="float32")
    params = bf.init(0)
    b = tiny.seam_batches(0)

    def dots(policy):
        hp = SeamHyper(sd_precision=policy)
        return _dot_precisions(jax.make_jaxpr(functools.partial(seam_gradient, bf, hp=hp))(params, b).jaxpr)

    wide = dots("float32")
    f32 = [p for dt, p in wide if dt == "float32"]
    assert f32 and all("HIGHEST" in p for p in f32), sorted(set(f32))
    # The step's own passes (bfloat16 operands, or bfloat16 with float32 attention weights).
    assert any("bfloat16" in dt and "HIGHEST" not in p for dt, p in wide)
    assert not any("HIGHEST" in p for _, p in dots("compute"))

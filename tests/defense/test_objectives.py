"""Each defense's gradient against its published objective, written out in ``plain.py`` and
differentiated by ``jax.grad``, in float64 on the tiny model.

Tolerance 1e-10 relative (the norm of the difference over the norm of the gradient):
both sides compute the same quantity in float64 by different programs (summation orders,
fused or unfused CE), so they agree to ~1e-14; a wrong term, weight, sign or a gradient
that leaks through a held-constant quantity is off by O(1e-3) or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import plain
import tiny
from seam_jax.defense import booster, repnoise, tar, vaccine
from seam_jax.defense.common import SEED_KEY, step_key

TOL = 1e-10
# Cheaper XLA:CPU code generation (as tests/parallel/test_sharding.py): these programs run
# once, so compiling them dominates; both sides of each comparison use it.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}


def jit(f):
    return jax.jit(f, compiler_options=FAST)


def setup(seed: int = 0):
    fn = tiny.model("float64")
    params = fn.init(0)
    b = tiny.seam_batches(seed)
    b[SEED_KEY] = np.full((2,), 7, np.uint32)
    return fn, params, b


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_booster_gradient_is_the_published_update():
    fn, p, b = setup()
    hp = booster.BoosterHyper(lam=5.0, alpha=0.1)
    got, m = jit(lambda q: booster.booster_gradient(fn, q, b, hp))(p)
    want = jit(jax.grad(lambda q: plain.booster(fn, q, b, hp.lam, hp.alpha)))(p)
    assert plain.rel_err(got, want) <= TOL
    loss = jit(lambda q: plain.booster(fn, q, b, hp.lam, hp.alpha))(p)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-12)
    # The perturbation term matters: lam = 0 is plain alignment SFT, and differs.
    sft = jit(jax.grad(lambda q: plain.ce(fn, q, b["aln"])))(p)
    assert plain.rel_err(got, sft) > 1e-3


@pytest.mark.parametrize("norm", ["global", "layer"])
def test_vaccine_gradient_is_the_perturbed_alignment_gradient(norm):
    fn, p, b = setup()
    hp = vaccine.VaccineHyper(rho=2.0, norm=norm)
    got, m = jit(lambda q: vaccine.vaccine_gradient(fn, q, b, hp))(p)
    shape = vaccine.delta_shape(fn, b["aln"])
    if norm == "global":
        want = jit(jax.grad(lambda q: plain.vaccine(fn, q, b, hp.rho, shape)))(p)
        assert plain.rel_err(got, want) <= TOL
    clean = jit(jax.grad(lambda q: plain.ce(fn, q, b["aln"])))(p)
    assert plain.rel_err(got, clean) > 1e-3  # the perturbation changes the update
    assert m["L_perturbed"] > m["L_align"]  # an ascent direction raises the loss


def test_repnoise_gradient_is_the_published_loss():
    fn, p, b = setup()
    hp = repnoise.RepNoiseHyper(alpha=1.0, beta=0.5)  # beta large enough to see the MMD term
    cfg = fn.config
    shape = (cfg.num_hidden_layers, *b["adv"]["input_ids"].shape, cfg.hidden_size)
    noise = repnoise.noise_like(step_key(b, repnoise.SALT), shape, jnp.float64)
    # Default code generation for the step: under FAST, XLA:CPU's float32 Gaussian draw
    # (erf_inv) differs from the eager one by one float32 ulp in ~4% of the entries
    # (measured: 65 of 1536, 4.8e-7), which moves the gradient by 2e-9 relative.
    got, m = jax.jit(lambda q: repnoise.repnoise_gradient(fn, q, b, hp))(p)
    want = jit(jax.grad(lambda q: plain.repnoise(fn, q, b, hp.alpha, hp.beta, noise)))(p)
    assert plain.rel_err(got, want) <= TOL
    loss = jit(lambda q: plain.repnoise(fn, q, b, hp.alpha, hp.beta, noise))(p)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-12)
    no_mmd = jit(jax.grad(lambda q: plain.repnoise(fn, q, b, hp.alpha, 0.0, noise)))(p)
    assert plain.rel_err(got, no_mmd) > 1e-6  # the MMD term is in the gradient


def tar_case(tr_loss, reference, inner_steps=2, num_tasks=2):
    """One learning rate (so the draw does not matter), adversaries of two steps; a large
    learning rate so that theta_k is far enough from theta to matter."""
    hp = tar.TarHyper(inner_steps=inner_steps, num_tasks=num_tasks, adversary_lrs=(3e-2,),
                      tr_grad_scale=0.7, retain_scale=0.5, use_weighting_schedule=True,
                      schedule_lambda=0.3, tr_loss=tr_loss, dpo_beta=0.1, reference=reference)
    kw = dict(lrs=[3e-2] * num_tasks, k_steps=inner_steps, wd=hp.inner_weight_decay,
              grad_scale=0.7, retain_scale=0.5,
              weights=[float(np.exp(0.3 * (k - (inner_steps - 1)))) for k in range(inner_steps)],
              tr_loss=tr_loss, dpo_beta=0.1)
    return hp, kw


# DPO's: 14 s (two adversaries of two steps, unrolled on the plain side): slow.
@pytest.mark.parametrize("tr_loss", [pytest.param("dpo", marks=pytest.mark.slow), "max_entropy"])
def test_tar_gradient_is_the_first_order_meta_gradient(tr_loss):
    fn, p, b = setup()
    hp, kw = tar_case(tr_loss, "theta")
    got, m = jit(lambda q: tar.tar_gradient(fn, q, b, hp))(p)
    want = jit(jax.grad(lambda q: plain.tar(fn, q, b, **kw)))(p)
    assert plain.rel_err(got, want) <= TOL
    # The tamper-resistance term is in the gradient: the retain gradient alone differs.
    retain = jit(jax.grad(lambda q: plain.tar(fn, q, b, **{**kw, "k_steps": 0})))(p)
    assert plain.rel_err(got, retain) > 1e-6


def test_tar_dpo_reference_is_the_base_model():
    # The public code's DPO reference: the model before TAR training, here other parameters
    # than theta (theta = the base moved by a random step, as after some training), passed as
    # the step's frozen tree. One adversary of one step (the slow DPO test above has two).
    fn, base, b = setup()
    noise = jax.tree.map(lambda x: 0.05 * jnp.std(x) * jnp.asarray(
        np.random.default_rng(1).standard_normal(x.shape)), base)
    p = jax.tree.map(jnp.add, base, noise)
    hp, kw = tar_case("dpo", "base", inner_steps=1, num_tasks=1)
    assert hp.needs_base and tar.TarHyper().reference == "base"  # the default
    got, m = jit(lambda q, r: tar.tar_gradient(fn, q, b, hp, base=r))(p, base)
    want = jit(jax.grad(lambda q, r: plain.tar(fn, q, b, **kw, ref=r)))(p, base)
    assert plain.rel_err(got, want) <= TOL
    # The reference is in the gradient: theta as the reference gives another one.
    theta_ref = jit(jax.grad(lambda q: plain.tar(fn, q, b, **kw)))(p)
    assert plain.rel_err(got, theta_ref) > 1e-6


def test_tar_bounded_gate_drops_the_tamper_resistance_gradient():
    fn, p, b = setup()
    hp = tar.TarHyper(inner_steps=1, num_tasks=1, adversary_lrs=(1e-2,), unbounded=False,
                      tr_loss_lower_bound=1e9, tr_loss="max_entropy")
    got, m = jit(lambda q: tar.tar_gradient(fn, q, b, hp))(p)
    assert float(m["tr_gate"]) == 0.0
    want = jit(jax.grad(lambda q: plain.ce(fn, q, b["bgn"])))(p)
    assert plain.rel_err(got, want) <= TOL


def test_tar_adversary_learning_rates_are_drawn_from_the_list_by_the_step_seed():
    hp = tar.TarHyper(num_tasks=64, adversary_lrs=(1e-5, 2e-5, 4e-5))
    seen = {}
    for step in (3, 4):
        b = {SEED_KEY: np.full((2,), step, np.uint32)}
        lrs = np.asarray(tar.adversary_lrs(hp, b))
        assert set(np.round(lrs, 10)) <= {1e-5, 2e-5, 4e-5}
        assert len(set(lrs.tolist())) == 3  # 64 draws of 3 values: all appear
        seen[step] = lrs
    assert not np.array_equal(seen[3], seen[4])  # each step draws its own
    np.testing.assert_array_equal(seen[3], tar.adversary_lrs(hp, {SEED_KEY: np.full((2,), 3, np.uint32)}))

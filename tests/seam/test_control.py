"""The control arm (L_ul + alpha L_up, beta = 0) is the SEAM update without its L_sd term.

Float64 on the tiny model, relative error <= 1e-12 (the norm of the difference over the
norm of the reference). The compared gradients are the same float64 sums taken in other
orders (the hand-written lens gradient against jax.grad of the written-out loss; a
subtraction of beta * grad L_sd that the SEAM update added), so round-off is ~1e-15;
1e-12 leaves room for that and none for a dropped or extra term (each term is O(1)
relative here).
"""

import dataclasses

import jax
import pytest

import tiny
from seam_jax.seam.losses import masked_ce, unlearning_and_attack_losses
from seam_jax.seam.objective import SeamHyper, seam_gradient
from seam_jax.seam.sd_grad import geometry, sd_gradient
from seam_jax.tree import tree_axpy, tree_norm, tree_sub

TOL = 1e-12

# Jitted: op by op, one float64 SEAM gradient of the tiny model takes ~25 s on 2 cores,
# compiled ~5 s. The comparisons are unchanged (the same float64 sums; XLA's reordering is
# round-off, ~1e-15, far under TOL).
_seam_gradient = jax.jit(seam_gradient, static_argnums=(0, 3))
_masked_ce_grad = jax.jit(jax.grad(masked_ce, argnums=1), static_argnums=0)


def _rel(a, b):
    return float(tree_norm(tree_sub(a, b)) / tree_norm(b))


@pytest.fixture(scope="module")
def setup():
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(0)
        yield fn, params, tiny.seam_batches(0)


@pytest.mark.parametrize("ul_variant", ["intent", "original"])
def test_control_equals_written_out_objective(setup, ul_variant):
    fn, params, b = setup
    hp = SeamHyper(alpha=0.7, beta=0.0, ul_variant=ul_variant)
    with jax.enable_x64(True):
        control, metrics = _seam_gradient(fn, params, b, hp)

        def objective(p):
            l_ul, _ = unlearning_and_attack_losses(fn, p, b["adv"], variant=ul_variant)
            return l_ul + hp.alpha * masked_ce(fn, p, b["aln"])

        want = jax.jit(jax.grad(objective))(params)
    assert jax.tree.leaves(control)[0].dtype == jax.numpy.float64
    assert _rel(control, want) <= TOL
    # beta = 0 leaves L_sd out of the loss, while c is still reported.
    assert float(metrics["loss"]) == pytest.approx(float(metrics["L_ul"] + 0.7 * metrics["L_up"]),
                                                   rel=TOL)
    assert -1.0 < float(metrics["cos"]) < 1.0


@pytest.mark.parametrize("estimator", ["hessian_free", "exact_hvp"])
def test_control_equals_seam_minus_sd_term(setup, estimator):
    fn, params, b = setup
    hp = SeamHyper(alpha=1.0, beta=0.5, estimator=estimator)
    with jax.enable_x64(True):
        seam, _ = _seam_gradient(fn, params, b, hp)
        control, _ = _seam_gradient(fn, params, b, dataclasses.replace(hp, beta=0.0))
        grad_fn = jax.grad(lambda p, bt: masked_ce(fn, p, bt))
        g_a, g_b = _masked_ce_grad(fn, params, b["adv"]), _masked_ce_grad(fn, params, b["bgn"])
        # The estimator seam_gradient uses, with its eps and vmap.
        g_sd = jax.jit(lambda p, ga, gb: sd_gradient(
            hp.estimator, grad_fn, p, b["adv"], b["bgn"], ga, gb, geometry(ga, gb), eps=hp.eps,
            vmap=hp.vmap))(params, g_a, g_b)
        removed = tree_axpy(-hp.beta, g_sd, seam)
    assert _rel(removed, control) <= TOL
    # The L_sd term is not negligible here, so the comparison can fail.
    assert _rel(seam, control) > 1e-3

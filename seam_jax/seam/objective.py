"""One SEAM gradient: ``grad L_ul + alpha grad L_up + beta grad L_sd``, with its metrics.

Gradient evaluations per step: one forward of the harmful batch at theta with two
backward passes (``L_ul`` and ``g_a`` share it), one for ``L_up``, one for ``g_b``,
and those of the ``L_sd`` estimator (two for ``hessian_free``). The original code
runs the harmful batch forward twice at theta. Under ``sd_precision='float32'`` on a
bfloat16 model the estimator adds two float32 gradients at theta (``g_a``, ``g_b`` for
L_sd, by the perturbed gradients' own program), and its perturbed gradients are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import REMAT_POLICIES, ModelConfig
from seam_jax.seam.lens import ul_and_attack_gradients
from seam_jax.seam.losses import check_batch, masked_ce, unlearning_and_attack_losses
from seam_jax.tree import tree_axpy
from seam_jax.seam.sd_grad import (
    ESTIMATORS, SD_PRECISIONS, Geometry, anchored, geometry, in_order, sd_gradient, theta_grads, widens,
)


SD_REMAT = ("model", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class SeamHyper:
    """SEAM's hyperparameters (original defaults: alpha 1, beta 0.01, eps 1e-3)."""

    alpha: float = 1.0
    beta: float = 0.01
    eps: float = 1e-3
    estimator: str = "hessian_free"
    # The finite difference's perturbed gradients as one vmapped evaluation (True), or one
    # side after the other (False: one perturbed copy of theta alive instead of two; on
    # XLA:CPU as fast, and the CPU presets' choice, seam_jax/config.py:cpu_size).
    vmap: bool = True
    ul_variant: str = "intent"
    lens_layers: tuple[int, ...] | None = None
    # Off by default (faithful to the paper): an extra benign CE term, gamma * l(theta; D_bgn),
    # that keeps benign answers while L_up teaches refusals (in a PyTorch pilot on SmolLM2-135M,
    # 35 SEAM steps took the refusal rate on harmful prompts to 1.00 and benign accuracy
    # from 0.17 to 0.00: the model refused the benign questions too).
    gamma_benign: float = 0.0
    # The hand-written lens gradient (3 vocabulary projections per layer instead of 7).
    fused_lens: bool = True
    # Rematerialisation of the layers inside the L_sd estimator's gradient evaluations
    # (the perturbed gradients, or the HVPs); "model" keeps the model's own setting.
    # "full" stores only the residual stream between layers and recomputes the rest
    # in the backward pass: on SmolLM2 at batch 4 x 128 it lowers the vmapped step's
    # peak from 9.72 to 7.71 GB for one more forward of the two batches (56.8 -> 60.5 s;
    # benchmarks/seam_step.py).
    sd_remat: str = "full"
    # The precision of the L_sd estimator's gradients (sd_grad.SD_PRECISIONS): "float32"
    # computes g at theta and at the perturbed points (or the HVPs) in float32 by one
    # program while the rest of the step keeps the compute dtype; "compute" stays in the
    # compute dtype; "faithful" is the original's arithmetic, accepted even when lossy.
    # No effect on a model that computes in float32 or wider.
    sd_precision: str = "float32"

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"seam.estimator={self.estimator!r}; choose one of {ESTIMATORS}")
        if self.estimator in ("hessian_free", "central") and not self.eps > 0:
            raise ValueError(f"seam.eps={self.eps}; the finite difference needs eps > 0")
        if self.ul_variant not in ("intent", "original"):
            raise ValueError(f"seam.ul_variant={self.ul_variant!r}; choose 'intent' or 'original'")
        if self.sd_remat not in SD_REMAT:
            raise ValueError(f"seam.sd_remat={self.sd_remat!r}; choose one of {SD_REMAT}")
        if self.sd_precision not in SD_PRECISIONS:
            raise ValueError(f"seam.sd_precision={self.sd_precision!r}; choose one of {SD_PRECISIONS}")


def sd_model(fn: ModelFn, hp: SeamHyper) -> ModelFn:
    """The model function of the L_sd estimator's gradients: ``hp.sd_remat``, and float32
    compute under ``sd_precision='float32'`` when the model computes narrower."""
    cfg = fn.config
    if hp.sd_remat not in ("model", cfg.remat):
        cfg = cfg.replace(remat=hp.sd_remat)
    if widens(hp.sd_precision, cfg.dtype):
        cfg = widened_config(cfg)
    return fn if cfg == fn.config else ModelFn(cfg)


def widened_config(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` computing in float32 with float32 products: the L_sd estimator's model under
    ``sd_precision='float32'``. The products must be float32 too: the backends' default for
    float32 operands (TF32 on GPUs, one bfloat16 pass on TPUs) would round ``eps d`` away
    inside every matmul, as the bfloat16 cast does."""
    return cfg.replace(dtype="float32", matmul_precision="highest")


def ul_and_attack(fn: ModelFn, params: Params, adv: dict, hp: SeamHyper
                  ) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Params]]:
    """((L_ul, l_adv), (grad L_ul, g_a)) from one forward pass of the harmful batch.

    The intent variant uses the hand-written lens gradient (``seam.lens``); the
    original variant differentiates ``losses.unlearning_and_attack_losses`` with two
    pullbacks of one ``jax.vjp``.
    """
    if hp.ul_variant == "intent" and hp.fused_lens:
        return ul_and_attack_gradients(fn, params, adv, lens_layers=hp.lens_layers)
    (l_ul, l_a), pullback = jax.vjp(
        lambda p: unlearning_and_attack_losses(fn, p, adv, variant=hp.ul_variant,
                                               lens_layers=hp.lens_layers), params)
    one, zero = jnp.ones_like(l_ul), jnp.zeros_like(l_ul)
    (g_ul,) = pullback((one, zero))
    (g_a,) = pullback((zero, one))
    return (l_ul, l_a), (g_ul, g_a)


def _count(batch: dict) -> jax.Array:
    return jnp.sum(batch["loss_mask"][:, 1:])


def sd_term(fn: ModelFn, params: Params, adv: dict, bgn: dict, g_a: Params | None,
            g_b: Params | None, hp: SeamHyper, total: Params | None = None,
            ok: jax.Array | bool = True) -> tuple[Geometry, Params]:
    """(the geometry of L_sd at theta, ``total + beta grad L_sd``) by ``hp.estimator`` under
    ``hp.sd_precision``; ``grad L_sd`` itself when ``total`` is None.

    ``g_a``, ``g_b`` are the step's own gradients at theta (compute dtype). Where the
    policy widens (``sd_precision='float32'`` on a narrower model) they are not read (the
    step passes None): g_a, g_b at theta come from the estimator's own float32 program
    (``theta_grads``, at ``theta + 0 theta`` as the perturbed points are formed), so
    ``g(theta + eps d) - g(theta)`` holds no round-off of a different program, and the
    step computes no backward pass for its own g_b. ``ok``: "the step is finite so far"
    (``sd_grad.in_order``).
    """
    fn_sd = sd_model(fn, hp)
    grad_ce = jax.grad(functools.partial(masked_ce, fn_sd))
    if widens(hp.sd_precision, fn.config.dtype):
        g_a, g_b = theta_grads(grad_ce, params, [adv, bgn], vmap=hp.vmap, ok=ok)
    geo = geometry(g_a, g_b, directions=False)
    total = sd_gradient(hp.estimator, grad_ce, params, adv, bgn, g_a, g_b, geo, eps=hp.eps,
                        vmap=hp.vmap, into=total, weight=hp.beta)
    return geo, total


def seam_gradient(fn: ModelFn, params: Params, batches: dict[str, dict], hp: SeamHyper
                  ) -> tuple[Params, dict[str, jax.Array]]:
    """The SEAM update direction and its metrics, for batches ``adv``, ``aln``, ``bgn``.

    Each batch is ``check_batch``'s [B, T] triple; the direction has the shapes of
    ``params`` and every metric is a scalar (chex checks all three at trace time).

    The gradient evaluations run one after another (``sd_grad.in_order``: the logit lens,
    then L_up's and g_b's, then L_sd's), and each one's result is added into the running
    total before the next starts. Besides theta and the optimizer state, the step then
    holds the total, ``g_a``, ``g_b`` and the evaluation in progress with its activations.
    Once a loss is not finite the evaluations after it are not run (the step is skipped).
    """
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    for b in (adv, aln, bgn):
        check_batch(b)

    ce = functools.partial(masked_ce, fn)
    # Under the float32 policy on a narrower model, L_sd computes its own g_a and g_b
    # (``sd_term``); the step's g_b then serves nothing but the gamma term.
    own_sd = bool(hp.beta) and widens(hp.sd_precision, fn.config.dtype)
    with jax.named_scope("lens"):
        (l_ul, l_a), (g_ul, g_a) = ul_and_attack(fn, params, adv, hp)

    # L_up's gradient into the total (alpha), then g_b's into its own buffer (and gamma
    # times it into the total), one after the other (``in_order``). One body for both,
    # switched on the item's index: written as two bodies (2026-12-07), the step's program
    # aborted the two-process CPU job in 4 of 4 runs (tests/parallel/test_multiprocess.py,
    # whose docstring says why); this form passed 4 of 4.
    def ce_phase(carry: tuple, item: tuple[int, dict], zero: jax.Array) -> tuple:
        total, g_a, g_b, losses = carry  # g_a passes through: the lens is done before
        i, batch = item
        loss, g = jax.value_and_grad(ce)(params, anchored(zero, batch))
        if i == 0:
            total = tree_axpy(hp.alpha, g, total)
        else:
            g_b = g
            if hp.gamma_benign:
                total = tree_axpy(hp.gamma_benign, g, total)
        return total, g_a, g_b, losses.at[i].set(loss)

    ok = jnp.isfinite(l_ul)
    losses = jnp.full((2,), jnp.nan, l_ul.dtype)  # the losses' own dtype: float32 would narrow float64
    total, g_a, _, losses = in_order("L_up", ce_phase, (g_ul, None if own_sd else g_a, None, losses),
                                     [(0, aln)], ok)
    if own_sd and not hp.gamma_benign:
        g_b, l_b = None, ce(params, bgn)  # the loss alone, a metric: one forward pass
    else:
        # g_b's buffer, made from the total so that XLA allocates it only now: a zeros
        # constant was allocated before L_up's pass and lived through it.
        slot = jax.tree.map(lambda t: t * 0, total)
        total, g_a, g_b, losses = in_order("g_b", ce_phase, (total, g_a, slot, losses),
                                           [(1, bgn)], ok)
        l_b = losses[1]
    l_up = losses[0]
    if hp.beta:
        ok = jnp.isfinite(l_ul) & jnp.isfinite(l_up) & jnp.isfinite(l_b)
        geo, total = sd_term(fn, params, adv, bgn, g_a, None if own_sd else g_b, hp, total, ok)
    else:
        geo = geometry(g_a, g_b, directions=False)
    loss = l_ul + hp.alpha * l_up + hp.beta * geo.cos + hp.gamma_benign * l_b
    metrics = {
        "loss": loss, "L_ul": l_ul, "L_up": l_up, "L_sd": geo.cos, "cos": geo.cos,
        "l_adv": l_a, "l_bgn": l_b, "norm_g_a": geo.norm_a, "norm_g_b": geo.norm_b,
        "targets_adv": _count(adv), "targets_aln": _count(aln), "targets_bgn": _count(bgn),
    }
    chex.assert_trees_all_equal_shapes(total, params)
    chex.assert_rank(list(metrics.values()), 0)
    return total, metrics


def sft_gradient(fn: ModelFn, params: Params, batches: dict[str, dict], key: str = "train"
                 ) -> tuple[Params, dict[str, jax.Array]]:
    """Plain fine-tuning: the gradient of ``l(theta; batch)`` (attacks, baselines)."""
    loss, g = jax.value_and_grad(lambda p: masked_ce(fn, p, batches[key]))(params)
    return g, {"loss": loss, "targets": _count(batches[key])}


__all__ = ["SeamHyper", "sd_model", "sd_term", "seam_gradient", "sft_gradient"]

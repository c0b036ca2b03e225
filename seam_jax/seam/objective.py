"""One SEAM gradient: ``grad L_ul + alpha grad L_up + beta grad L_sd``, with its metrics.

Gradient evaluations per step: one forward of the harmful batch at theta with two
backward passes (``L_ul`` and ``g_a`` share it), one for ``L_up``, one for ``g_b``,
and those of the ``L_sd`` estimator (two for ``hessian_free``). The original code
runs the harmful batch forward twice at theta.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import REMAT_POLICIES
from seam_jax.seam.lens import ul_and_attack_gradients
from seam_jax.seam.losses import check_batch, masked_ce, unlearning_and_attack_losses
from seam_jax.seam.sd_grad import ESTIMATORS, geometry, sd_gradient
from seam_jax.tree import tree_axpy


SD_REMAT = ("model", *REMAT_POLICIES)


@dataclasses.dataclass(frozen=True)
class SeamHyper:
    """SEAM's hyperparameters (original defaults: alpha 1, beta 0.01, eps 1e-3)."""

    alpha: float = 1.0
    beta: float = 0.01
    eps: float = 1e-3
    estimator: str = "hessian_free"
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

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"seam.estimator={self.estimator!r}; choose one of {ESTIMATORS}")
        if self.estimator in ("hessian_free", "central") and not self.eps > 0:
            raise ValueError(f"seam.eps={self.eps}; the finite difference needs eps > 0")
        if self.ul_variant not in ("intent", "original"):
            raise ValueError(f"seam.ul_variant={self.ul_variant!r}; choose 'intent' or 'original'")
        if self.sd_remat not in SD_REMAT:
            raise ValueError(f"seam.sd_remat={self.sd_remat!r}; choose one of {SD_REMAT}")


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


def seam_gradient(fn: ModelFn, params: Params, batches: dict[str, dict], hp: SeamHyper
                  ) -> tuple[Params, dict[str, jax.Array]]:
    """The SEAM update direction and its metrics, for batches ``adv``, ``aln``, ``bgn``.

    Each batch is ``check_batch``'s [B, T] triple; the direction has the shapes of
    ``params`` and every metric is a scalar (chex checks all three at trace time).
    """
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    for b in (adv, aln, bgn):
        check_batch(b)

    ce = functools.partial(masked_ce, fn)
    fn_sd = fn if hp.sd_remat in ("model", fn.config.remat) else ModelFn(fn.config.replace(remat=hp.sd_remat))
    grad_ce = jax.grad(functools.partial(masked_ce, fn_sd))
    (l_ul, l_a), (g_ul, g_a) = ul_and_attack(fn, params, adv, hp)
    l_up, g_up = jax.value_and_grad(ce)(params, aln)
    l_b, g_b = jax.value_and_grad(ce)(params, bgn)
    geo = geometry(g_a, g_b)
    total = tree_axpy(hp.alpha, g_up, g_ul)
    if hp.beta:
        g_sd = sd_gradient(hp.estimator, grad_ce, params, adv, bgn, g_a, g_b, geo,
                           eps=hp.eps, vmap=hp.vmap)
        total = tree_axpy(hp.beta, g_sd, total)
    if hp.gamma_benign:
        total = tree_axpy(hp.gamma_benign, g_b, total)
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


__all__ = ["SeamHyper", "seam_gradient", "sft_gradient"]

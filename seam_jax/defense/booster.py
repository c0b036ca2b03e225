"""Booster: attenuating the harmful perturbation during alignment.

The objective is ``min_w f(w) + lam [h(w) - h(w - alpha grad h(w) / |grad h(w)|)]``, with
``f`` the alignment loss (CE on harmful prompts with refusals, ``aln``) and ``h`` the
harmful loss (CE on harmful prompts with compliant answers, ``adv``): the second term is
how much one normalised harmful fine-tuning step of size ``alpha`` would lower ``h``,
and Booster makes it small.

The update is the published one (Algorithm 1 of the paper; ``BoosterAlignmentTrainer``
of git-disl/Booster, ``trainer.py``): the normalised direction is held constant, so

    grad f(w) + lam [grad h(w) - grad h(w - alpha g / (|g| + 1e-7))],   g = grad h(w),

three gradient evaluations per step (``h`` at ``w`` and at the perturbed point, ``f``
at ``w``). The 1e-7 is the public code's guard against a zero gradient.
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from seam_jax.defense.common import ce, count
from seam_jax.model.api import ModelFn, Params
from seam_jax.tree import tree_axpy, tree_norm, tree_sub

NORM_GUARD = 1e-7  # added to |grad h| (the public code's value)


@dataclasses.dataclass(frozen=True)
class BoosterHyper:
    lam: float = 5.0    # lambda, the weight of the perturbation term
    alpha: float = 0.1  # the simulated harmful step's length

    def __post_init__(self) -> None:
        from seam_jax.errors import ConfigError

        if not self.lam >= 0 or not self.alpha > 0:
            raise ConfigError(f"defense.booster.lam={self.lam}, alpha={self.alpha}; give "
                              f"lam >= 0 and alpha > 0")


def perturbed(params: Params, g: Params, alpha: float) -> Params:
    """``w - alpha g / (|g| + 1e-7)`` on the master parameters."""
    scale = alpha / (tree_norm(g) + NORM_GUARD)
    return jax.tree.map(lambda p, x: (p - scale * x.astype(p.dtype)).astype(p.dtype), params, g)


def booster_gradient(fn: ModelFn, params: Params, batches: dict, hp: BoosterHyper
                     ) -> tuple[Params, dict[str, jax.Array]]:
    adv, aln = batches["adv"], batches["aln"]
    loss_of = functools.partial(ce, fn)
    l_h, g_h = jax.value_and_grad(loss_of)(params, adv)
    l_hp, g_hp = jax.value_and_grad(loss_of)(perturbed(params, g_h, hp.alpha), adv)
    l_f, g_f = jax.value_and_grad(loss_of)(params, aln)
    grads = tree_axpy(hp.lam, tree_sub(g_h, g_hp), g_f)
    metrics = {"loss": l_f + hp.lam * (l_h - l_hp), "L_align": l_f, "L_harm": l_h,
               "L_harm_perturbed": l_hp, "harm_drop": l_h - l_hp, "norm_g_harm": tree_norm(g_h),
               "targets_adv": count(adv), "targets_aln": count(aln)}
    return grads, metrics


METRICS = ("loss", "L_align", "L_harm", "L_harm_perturbed", "harm_drop", "norm_g_harm")

"""Vaccine: perturbation-aware alignment.

Each step makes two passes over the alignment batch ``aln`` (harmful prompts with
refusals). The first gives ``G_l = dL/de_l``, the gradient of the alignment loss with
respect to each layer's attention output ``e_l``; the perturbation is

    eps_l = rho G_l / (|G| + 1e-7),      |G| = sqrt(sum_l |G_l|^2)

(``norm="global"``: the concatenation over layers has norm rho, as in the public code:
``after_first_step`` of git-disl/Vaccine ``trainer.py``; ``norm="layer"`` gives each
layer's its own norm rho). The second pass adds ``eps_l`` to the attention outputs
(the model's ``attn_delta`` hook) and its parameter gradient is the update, with the
perturbation held constant (the public code adds it to the output's ``.data``).

``G`` is the gradient with respect to a zero ``attn_delta`` (the attention output
plus zero is the attention output), so the first pass needs no hook of its own.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from seam_jax.defense.common import ce, count
from seam_jax.model.api import ModelFn, Params

NORM_GUARD = 1e-7  # added to |G| (the public code's value)
NORMS = ("global", "layer")


@dataclasses.dataclass(frozen=True)
class VaccineHyper:
    rho: float = 5.0
    norm: str = "global"

    def __post_init__(self) -> None:
        from seam_jax.errors import ConfigError

        if not self.rho >= 0:
            raise ConfigError(f"defense.vaccine.rho={self.rho}; give rho >= 0")
        if self.norm not in NORMS:
            raise ConfigError(f"defense.vaccine.norm={self.norm!r}; choose one of {NORMS}")


def delta_shape(fn: ModelFn, batch: dict) -> tuple[int, ...]:
    """The shape of ``attn_delta`` for ``batch``: [layers, B, T, embed]."""
    cfg = fn.config
    return (cfg.num_hidden_layers, *batch["input_ids"].shape, cfg.hidden_size)


def perturbation(grad: jax.Array, rho: float, norm: str) -> jax.Array:
    """``rho G / (|G| + 1e-7)`` over all layers (``global``) or per layer (``layer``)."""
    g = grad.astype(jnp.promote_types(grad.dtype, jnp.float32))
    if norm == "global":
        n = jnp.sqrt(jnp.sum(g * g))
    else:
        n = jnp.sqrt(jnp.sum(g * g, axis=tuple(range(1, g.ndim)), keepdims=True))
    return rho * g / (n + NORM_GUARD)


def vaccine_perturbation(fn: ModelFn, params: Params, batch: dict, hp: VaccineHyper
                         ) -> tuple[jax.Array, jax.Array]:
    """(the clean loss, eps) from the first pass."""
    from seam_jax.model.config import parse_dtype

    # In the compute dtype, at least float32 (the layer casts it to its own dtype).
    dtype = jnp.promote_types(parse_dtype(fn.config.dtype), jnp.float32)
    zero = jnp.zeros(delta_shape(fn, batch), dtype)
    loss, g = jax.value_and_grad(lambda d: ce(fn, params, batch, attn_delta=d))(zero)
    return loss, perturbation(g, hp.rho, hp.norm)


def vaccine_gradient(fn: ModelFn, params: Params, batches: dict, hp: VaccineHyper
                     ) -> tuple[Params, dict[str, jax.Array]]:
    aln = batches["aln"]
    l_clean, eps = vaccine_perturbation(fn, params, aln, hp)
    eps = jax.lax.stop_gradient(eps)
    loss, grads = jax.value_and_grad(lambda p: ce(fn, p, aln, attn_delta=eps))(params)
    metrics = {"loss": loss, "L_align": l_clean, "L_perturbed": loss,
               "perturbation_norm": jnp.sqrt(jnp.sum(eps * eps)), "targets_aln": count(aln)}
    return grads, metrics


METRICS = ("loss", "L_align", "L_perturbed", "perturbation_norm")

"""Pieces the defenses share: the masked CE of a batch under model keyword arguments,
target counts, and the per-step random key."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from seam_jax.model.api import ModelFn, Params
from seam_jax.seam.losses import check_batch, token_ce_sum
from seam_jax.train.step import SEED_KEY


def ce(fn: ModelFn, params: Params, batch: dict, **model_kw: Any) -> jax.Array:
    """``l(theta; batch)``, the mean target-token CE, with ``model_kw`` passed to the model
    (``attn_delta`` for Vaccine)."""
    check_batch(batch)
    out = fn(params, batch["input_ids"], batch["attention_mask"], **model_kw)
    total, count = token_ce_sum(out.logits, batch["input_ids"], batch["loss_mask"])
    return total / jnp.maximum(count, 1.0)


def count(batch: dict) -> jax.Array:
    """Target tokens of ``batch`` (a zero count skips the step)."""
    return jnp.sum(batch["loss_mask"][:, 1:])


def step_key(batches: dict, salt: int) -> jax.Array:
    """A PRNG key from the step's seed rows, folded with a defense's own ``salt``."""
    seed = batches[SEED_KEY][0].astype(jnp.uint32)
    return jax.random.fold_in(jax.random.key(seed), salt)

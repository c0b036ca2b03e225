"""SEAM's losses, as pure functions of the parameter pytree and a batch.

A batch is a dict of arrays: ``input_ids`` [B, T], ``attention_mask`` [B, T] and
``loss_mask`` [B, T], where ``loss_mask[b, t] = 1`` marks token t as a target
(predicted from the logits at t-1). ``l(theta; batch)`` is the mean token
cross-entropy over the targets.

- ``L_ul``: the unlearning loss on D_adv, a logit lens over hidden states h_0..h_L,
  ``-log(1 + mean_l CE_l)``. ``variant="original"`` reproduces the authors' code,
  ``-log((CE_final + sum_l CE_l) / (L+1) + 1)`` where the last lens term normalises
  an already-normalised state (HF returns norm(h_L) as its last hidden state).
- ``L_up``: the refusal CE on D_aln.

The lens cross-entropies are computed one layer at a time under ``jax.checkpoint``,
so the [layers, B, T, vocab] logits are never materialised, in the forward pass or
in the backward pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp

from seam_jax.model.api import ModelFn, Params

Batch = dict[str, jax.Array]


def _wide(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def token_ce_sum(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token CE, number of targets). logits [B, T, V] predict ids shifted by one."""
    logits = logits[:, :-1].astype(_wide(logits.dtype))
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:].astype(logits.dtype)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.sum((lse - picked) * mask), jnp.sum(mask)


def _mean(total: jax.Array, count: jax.Array) -> jax.Array:
    # An empty mask gives 0, not NaN; the train step reports and skips such a step.
    return total / jnp.maximum(count, 1.0)


def check_batch(batch: Batch) -> None:
    """``input_ids`` [B, T] of integers, ``attention_mask`` and ``loss_mask`` of the same shape.

    chex checks the static shapes: at trace time under jit, once per compilation.
    """
    chex.assert_rank(batch["input_ids"], 2)
    chex.assert_type(batch["input_ids"], int)
    chex.assert_equal_shape([batch["input_ids"], batch["attention_mask"], batch["loss_mask"]])


def masked_ce(fn: ModelFn, params: Params, batch: Batch) -> jax.Array:
    """``l(theta; batch)``: mean CE over the batch's target tokens."""
    check_batch(batch)
    out = fn(params, batch["input_ids"], batch["attention_mask"])
    loss = _mean(*token_ce_sum(out.logits, batch["input_ids"], batch["loss_mask"]))
    chex.assert_rank(loss, 0)
    return loss


def lens_ces(fn: ModelFn, params: Params, hidden: jax.Array, batch: Batch,
             extra_norm: jax.Array | None = None) -> jax.Array:
    """Per-layer lens CE for stacked hidden states [n, B, T, D] -> [n].

    ``extra_norm``: a boolean [n]; where set, the state is normalised once more before
    the lens (the original code's last term).
    """
    module = fn.module(params)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    if extra_norm is None:
        extra_norm = jnp.zeros(hidden.shape[0], bool)

    @jax.checkpoint
    def one(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        h, again = args
        h = jnp.where(again, module.model.norm(h), h)
        return _mean(*token_ce_sum(module.lens(h), ids, mask))

    return jax.lax.map(one, (hidden, extra_norm))


def unlearning_and_attack_losses(
    fn: ModelFn,
    params: Params,
    batch: Batch,
    *,
    variant: str = "intent",
    lens_layers: Sequence[int] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(``L_ul``, ``l(theta; D_adv)``) from one forward pass on the harmful batch.

    ``lens_layers`` picks hidden states among 0..L (default: all L+1). ``l`` is the
    CE of the final logits, which is the lens CE of h_L.
    """
    num_layers = fn.config.num_hidden_layers
    layers = list(range(num_layers + 1)) if lens_layers is None else sorted(set(lens_layers))
    if not layers or layers[0] < 0 or layers[-1] > num_layers:
        raise ValueError(f"lens_layers={lens_layers} must be a non-empty subset of 0..{num_layers}")
    out = fn(params, batch["input_ids"], batch["attention_mask"], output_hidden_states=True,
             compute_logits=False)
    hidden = out.hidden_states
    if variant == "intent":
        picked = layers if num_layers in layers else layers + [num_layers]
        ces = lens_ces(fn, params, hidden[jnp.asarray(picked)], batch)
        in_mean = jnp.asarray([l in layers for l in picked], ces.dtype)
        mean_ce = jnp.sum(ces * in_mean) / len(layers)
        return -jnp.log1p(mean_ce), ces[picked.index(num_layers)]
    if variant == "original":
        # HF's hidden_states: h_0..h_{L-1} and norm(h_L); the lens normalises each again.
        states = hidden[jnp.asarray(layers)]
        extra = jnp.asarray([l == num_layers for l in layers])
        ces = lens_ces(fn, params, states, batch, extra_norm=extra)
        final = lens_ces(fn, params, hidden[-1:], batch)[0]
        return -jnp.log((final + jnp.sum(ces)) / len(layers) + 1.0), final
    raise ValueError(f"unknown L_ul variant {variant!r}; choose 'intent' or 'original'")

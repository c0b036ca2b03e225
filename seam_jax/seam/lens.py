"""``L_ul`` and ``l(theta; D_adv)`` with their gradients, from one forward pass (intent variant).

The logit lens projects every hidden state through the final norm and the LM head:
31 projections onto a 49152-word vocabulary for SmolLM2, which is most of a SEAM
step's FLOPs. Differentiating it by plain autodiff, once for ``L_ul`` and once more
for ``g_a``, costs seven vocabulary projections per layer under rematerialisation.
Here the cross-entropy gradient is written out instead: per layer, one projection
for the logits and two for the gradients (``dx = (softmax - onehot) W^T`` and
``dW = x^T (softmax - onehot)``), three in all, with one chunk of one layer's logits
alive at a time. Positions outside the loss mask (the prompt) are left out of the
projections: rows are ordered targets first, cut into chunks, and a chunk with no
target is skipped. The backward passes through the decoder body (one for ``L_ul``, one for
``g_a``) are two calls of one pullback: as one ``vmap`` of it, their gradients were one
stacked buffer, which XLA kept whole for as long as ``g_a`` was needed (through the whole
SEAM step), a parameter-sized buffer more than the two gradients.

``tests/seam/test_lens.py`` checks this against plain autodiff of
``losses.unlearning_and_attack_losses``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import parse_dtype
from seam_jax.model.layers import rms_norm


def _head(params: Params, tied: bool) -> jax.Array:
    """The LM head as [V, D] (the embedding's layout).

    The head's gradient is accumulated in this layout too: XLA:CPU computes
    ``x^T g`` about 1.6x faster into [V, D] than into [D, V] at SmolLM2's shapes
    (measured, 508 x 576 x 49152: 73-89 against 44-49 GFLOP/s), and that product
    runs once per lens layer.
    """
    if tied:
        return params["model"]["embed_tokens"]["embedding"]
    return params["lm_head"]["kernel"].T


def _ce_with_grads(x: jax.Array, w: jax.Array, targets: jax.Array, weights: jax.Array
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For rows x [N, D] and the head w [V, D]: (sum_n weights_n CE_n, d/dx [N, D],
    d/dw [V, D]) of that sum."""
    acc = jnp.promote_types(x.dtype, jnp.float32)
    logits = jnp.einsum("nd,vd->nv", x, w.astype(x.dtype), preferred_element_type=acc)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    ce = jnp.sum((lse - picked) * weights)
    probs = jnp.exp(logits - lse[:, None])
    g = probs.at[jnp.arange(targets.shape[0]), targets].add(-1.0) * weights[:, None]
    g = g.astype(x.dtype)
    dx = jnp.einsum("nv,vd->nd", g, w.astype(x.dtype), preferred_element_type=acc)
    dw = jnp.einsum("nv,nd->vd", g, x, preferred_element_type=acc)
    return ce, dx, dw


DEFAULT_ROW_CHUNK = 128  # rows per lens chunk


def projected_rows(targets: int, rows: int, row_chunk: int = DEFAULT_ROW_CHUNK) -> int:
    """Rows the lens projects per hidden state for ``targets`` loss-mask rows out of ``rows``:
    whole chunks of the target-first order (for FLOP counts)."""
    chunk = min(row_chunk, rows)
    return -(-targets // chunk) * chunk


def _row_plan(weights: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """The order that puts target rows (weight != 0) first, padded to whole chunks with
    an out-of-range index, and the weights in that order as [chunks, chunk]."""
    n = weights.shape[0]
    n_chunks = -(-n // chunk)
    order = jnp.argsort(weights == 0, stable=True)
    order = jnp.concatenate([order, jnp.full((n_chunks * chunk - n,), n, order.dtype)])
    w = weights.at[order].get(mode="fill", fill_value=0)
    return order, w.reshape(n_chunks, chunk)


def ul_and_attack_gradients(
    fn: ModelFn,
    params: Params,
    batch: dict,
    *,
    lens_layers: Sequence[int] | None = None,
    row_chunk: int = DEFAULT_ROW_CHUNK,
) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Params]]:
    """((L_ul, l_adv), (grad L_ul, g_a)) for the intent variant ``-log(1 + mean_l CE_l)``.

    Rows (positions) whose loss-mask entry is 0 add nothing to either loss or gradient,
    so the vocabulary projections skip them: the rows are ordered targets first and cut
    into chunks of ``row_chunk``, and a chunk with no target row is not computed
    (``lax.cond``). With prompts masked out this removes the prompt's share of the
    lens FLOPs.
    """
    if row_chunk < 1:
        raise ValueError(f"row_chunk={row_chunk}; it must be a positive number of rows")
    cfg = fn.config
    n_layers = cfg.num_hidden_layers
    layers = list(range(n_layers + 1)) if lens_layers is None else sorted(set(lens_layers))
    if not layers or layers[0] < 0 or layers[-1] > n_layers:
        raise ValueError(f"lens_layers={lens_layers} must be a non-empty subset of 0..{n_layers}")
    dtype = parse_dtype(cfg.dtype)
    acc = jnp.promote_types(dtype, jnp.float32)
    ids, mask = batch["input_ids"], batch["loss_mask"]
    b, t = ids.shape

    def body(p: Params) -> jax.Array:
        return fn(p, ids, batch["attention_mask"], output_hidden_states=True,
                  compute_logits=False).hidden_states

    hidden, body_vjp = jax.vjp(body, params)  # [L+1, B, T, D]
    norm_w = params["model"]["norm"]["weight"]
    w = _head(params, cfg.tie_word_embeddings)
    norm = lambda h, nw: rms_norm(h, nw, cfg.rms_norm_eps, dtype)

    # Rows predicting token t+1 from position t; weight = its loss-mask entry.
    targets = jnp.asarray(ids)[:, 1:].reshape(-1)
    weights = jnp.asarray(mask)[:, 1:].reshape(-1).astype(acc)
    count = jnp.maximum(jnp.sum(weights), 1.0)
    order, chunk_w = _row_plan(weights, min(row_chunk, weights.shape[0]))
    n_chunks, chunk = chunk_w.shape
    chunk_t = targets.at[order].get(mode="fill", fill_value=0).reshape(n_chunks, chunk)
    others = [l for l in layers if l != n_layers]
    d = cfg.hidden_size

    def chunk_step(dw_acc: jax.Array, inp: tuple) -> tuple:
        x_rows, tg, wt = inp

        def run(dw_acc):
            ce, dx, dw = _ce_with_grads(x_rows, w, tg, wt)
            return dw_acc + dw, ce, dx

        def skip(dw_acc):
            return dw_acc, jnp.zeros((), acc), jnp.zeros(x_rows.shape, acc)

        dw_acc, ce, dx = jax.lax.cond(jnp.any(wt != 0), run, skip, dw_acc)
        return dw_acc, (ce, dx)

    def lens_layer(h: jax.Array, dw_acc: jax.Array
                   ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """CE sum, d/dh [B,T,D], d/dnorm_w [D], and dw_acc + d/dW [V,D] for one hidden state."""
        x, norm_vjp = jax.vjp(norm, h, norm_w)
        rows = x[:, :-1].reshape(-1, d)
        x_chunks = rows.at[order].get(mode="fill", fill_value=0).reshape(n_chunks, chunk, d)
        dw_acc, (ces, dx_chunks) = jax.lax.scan(chunk_step, dw_acc, (x_chunks, chunk_t, chunk_w))
        dx_rows = jnp.zeros(rows.shape, x.dtype).at[order].set(
            dx_chunks.reshape(-1, d).astype(x.dtype), mode="drop")
        dx = jnp.zeros_like(x).at[:, :-1].set(dx_rows.reshape(b, t - 1, d))
        dh, dnw = norm_vjp(dx)
        return jnp.sum(ces), dh, dnw, dw_acc

    ce_last, dh_last, dnw_last, dw_last = lens_layer(hidden[n_layers], jnp.zeros(w.shape, acc))
    if others:
        def scan_body(carry, h):
            dnw_acc, dw_acc = carry
            ce, dh, dnw, dw_acc = lens_layer(h, dw_acc)
            return (dnw_acc + dnw.astype(dnw_acc.dtype), dw_acc), (ce, dh)

        zero = (jnp.zeros(norm_w.shape, acc), jnp.zeros(w.shape, acc))
        (dnw_sum, dw_sum), (ce_others, dh_others) = jax.lax.scan(
            scan_body, zero, hidden[jnp.asarray(others)])
    else:
        dnw_sum = dw_sum = 0.0
        ce_others = jnp.zeros((0,), jnp.float32)
    in_mean = n_layers in layers
    ce_sum = jnp.sum(ce_others) + (ce_last if in_mean else 0.0)
    mean_ce = ce_sum / count / len(layers)
    l_ul = -jnp.log1p(mean_ce)
    l_adv = ce_last / count
    a = -1.0 / (1.0 + mean_ce) / len(layers) / count  # dL_ul/d(CE sum of a layer)

    # Cotangents on the hidden states: row 0 for L_ul, row 1 for l_adv.
    dh_ul = jnp.zeros_like(hidden)
    if others:
        dh_ul = dh_ul.at[jnp.asarray(others)].set((a * dh_others).astype(hidden.dtype))
    if in_mean:
        dh_ul = dh_ul.at[n_layers].add((a * dh_last).astype(hidden.dtype))
    dh_a = jnp.zeros_like(hidden).at[n_layers].set((dh_last / count).astype(hidden.dtype))
    (g_ul,) = body_vjp(dh_ul)
    (g_a,) = body_vjp(dh_a)

    head_ul = a * (dw_sum + (dw_last if in_mean else 0.0))
    norm_ul = a * (dnw_sum + (dnw_last if in_mean else 0.0))
    g_ul = _add_head(g_ul, head_ul, norm_ul, cfg.tie_word_embeddings)
    g_a = _add_head(g_a, dw_last / count, dnw_last / count, cfg.tie_word_embeddings)
    return (l_ul, l_adv), (g_ul, g_a)


def _add_head(grads: Params, dw: jax.Array, dnw: jax.Array, tied: bool) -> Params:
    """Add the head's ([V, D]) and the final norm's gradients (computed by hand) into ``grads``."""
    grads = jax.tree.map(lambda x: x, grads)  # a copy of the dict structure
    m = grads["model"]
    m["norm"] = {"weight": (m["norm"]["weight"] + dnw).astype(m["norm"]["weight"].dtype)}
    if tied:
        e = m["embed_tokens"]["embedding"]
        m["embed_tokens"] = {"embedding": (e + dw).astype(e.dtype)}
    else:
        k = grads["lm_head"]["kernel"]
        grads["lm_head"] = {"kernel": (k + dw.T).astype(k.dtype)}
    return grads


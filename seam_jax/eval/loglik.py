"""Log-likelihoods of token continuations, batched and jitted: the core of every scored task.

``continuation_logprobs`` follows lm-evaluation-harness' HFLM: the model reads
``(context + continuation)[-(max_length + 1):][:-1]`` and the continuation's log
probability is the sum over its tokens of ``log_softmax(logits)`` at the preceding
position; ``is_greedy`` says whether argmax picks every continuation token.
``continuation_token_logprobs`` gives the per-token terms of that sum (the
coherence judge's likelihood check averages them).
Rows are right-padded (a causal model's real tokens never see the padding) to a
multiple of ``bucket`` so a stream of batches compiles a few shapes.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax.model.api import Params


@functools.partial(jax.jit, static_argnames=("fn",))
def _scores(fn: Any, params: Params, ids: jax.Array, mask: jax.Array, targets: jax.Array,
            tmask: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = fn(params, ids, mask).logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    hit = (jnp.argmax(logits, axis=-1) == targets) | (tmask == 0)
    return picked * tmask, jnp.all(hit, axis=-1)


def continuation_logprobs(fn: Any, params: Params,
                          requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                          max_length: int, batch_size: int = 8, bucket: int = 32
                          ) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), is_greedy)`` per (context ids, continuation ids)."""
    # The per-token terms are float32; their sum is taken in float64, so that summing on the
    # host adds no round-off of its own (a float32 sum of ~100 terms near -7 is off by ~1e-4,
    # the adapter's whole tolerance against HFLM on a rolling window).
    return [(float(np.sum(lp, dtype=np.float64)), greedy) for lp, greedy in
            _run(fn, params, requests, max_length=max_length, batch_size=batch_size, bucket=bucket)]


def continuation_token_logprobs(fn: Any, params: Params,
                                requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                                max_length: int, batch_size: int = 8, bucket: int = 32
                                ) -> list[np.ndarray]:
    """``log p(token | everything before it)`` for each continuation token, per request."""
    return [lp for lp, _ in
            _run(fn, params, requests, max_length=max_length, batch_size=batch_size, bucket=bucket)]


def _run(fn: Any, params: Params, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
         max_length: int, batch_size: int, bucket: int) -> list[tuple[np.ndarray, bool]]:
    rows = []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation must have at least one token")
        if len(cont) > max_length:
            raise ValueError(f"a continuation of {len(cont)} tokens exceeds max_length={max_length}")
        full = (list(ctx) + list(cont))[-(max_length + 1):]
        rows.append((full[:-1], full[1:], len(cont)))
    # Longest first, so each batch pads to about its own length.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out: list[tuple[np.ndarray, bool]] = [(np.zeros((0,), np.float32), False)] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = -(-max(len(rows[i][0]) for i in idx) // bucket) * bucket
        n = batch_size  # a fixed batch dimension: one compile per width
        ids = np.zeros((n, width), np.int32)
        mask = np.zeros((n, width), np.int32)
        tgt = np.zeros((n, width), np.int32)
        tmask = np.zeros((n, width), np.float32)
        for r, i in enumerate(idx):
            inp, target, n_cont = rows[i]
            ids[r, :len(inp)], mask[r, :len(inp)], tgt[r, :len(inp)] = inp, 1, target
            tmask[r, len(inp) - n_cont:len(inp)] = 1.0
        mask[len(idx):, 0] = 1  # filler rows: one real token, no targets
        lp, greedy = jax.device_get(_scores(fn, params, ids, mask, tgt, tmask))
        for r, i in enumerate(idx):
            n_inp, n_cont = len(rows[i][0]), rows[i][2]
            out[i] = (np.asarray(lp[r, n_inp - n_cont:n_inp], np.float32), bool(greedy[r]))
    return out

"""Utility without the network: held-out benign loss and a multiple-choice task scored by likelihood.

* ``benign_loss``: mean response cross-entropy on held-out benign pairs (lower is better).
* ``mc_accuracy``: the proxy's four-way questions (``data.benign_mc_items``): the
  prompt in the training format is the context, each choice (with a leading space)
  a continuation; the choice of highest log-likelihood (``acc``) or of highest
  log-likelihood per character (``acc_norm``, lm-eval's length normalisation) is
  the answer. Chance is 0.25.

ZS on lm-eval tasks is ``eval.lm_eval_adapter.evaluate``; it needs the tasks' data.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax.data.format import encode_pairs, prompt_text
from seam_jax.data.proxy import MCItem
from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.eval.stats import with_ci
from seam_jax.model.api import Params


@functools.partial(jax.jit, static_argnames=("fn",))
def _row_ce(fn: Any, params: Params, ids: jax.Array, mask: jax.Array, loss_mask: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
    """Per-row (sum of target-token CE, number of targets), as ``seam.losses.token_ce_sum``."""
    logits = fn(params, ids, mask).logits[:, :-1].astype(jnp.float32)
    tm = loss_mask[:, 1:].astype(jnp.float32)
    picked = jnp.take_along_axis(logits, ids[:, 1:, None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - picked
    return jnp.sum(ce * tm, axis=-1), jnp.sum(tm, axis=-1)


def benign_ce_rows(fn: Any, params: Params, tok: Any, pairs: Sequence[tuple[str, str]], *,
                   fmt: str, seq_len: int, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per pair: (summed response CE, number of response tokens), in nats."""
    if not pairs:
        raise ValueError("benign_loss of no pairs")
    arrays = encode_pairs(tok, list(pairs), seq_len=seq_len, fmt=fmt, name="benign eval")
    n = len(pairs)
    sums, counts = np.zeros(n), np.zeros(n)
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size) % n  # a full last batch: one compiled shape
        take = min(batch_size, n - s)
        ce, k = jax.device_get(_row_ce(fn, params, arrays["input_ids"][idx],
                                       arrays["attention_mask"][idx], arrays["loss_mask"][idx]))
        sums[s:s + take], counts[s:s + take] = ce[:take], k[:take]
    return sums, counts


def benign_loss(fn: Any, params: Params, tok: Any, pairs: Sequence[tuple[str, str]], *, fmt: str,
                seq_len: int, batch_size: int = 8) -> float:
    """Token-weighted mean response CE over ``pairs`` (held-out benign prompt, answer)."""
    sums, counts = benign_ce_rows(fn, params, tok, pairs, fmt=fmt, seq_len=seq_len,
                                  batch_size=batch_size)
    return float(sums.sum() / max(counts.sum(), 1.0))


def mc_requests(tok: Any, items: Sequence[MCItem], fmt: str
                ) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) for every choice of every item, in item order.

    As lm-eval splits a pair: the whole text is tokenized and the context's tokens
    are cut off its front, so a token merged across the boundary goes to the choice.
    """
    out = []
    for item in items:
        ctx = prompt_text(tok, item.question, fmt)
        ctx_ids = tok(ctx, add_special_tokens=(fmt == "qa"))["input_ids"]
        for choice in item.choices:
            whole = tok(ctx + " " + choice, add_special_tokens=(fmt == "qa"))["input_ids"]
            out.append((list(ctx_ids), list(whole[len(ctx_ids):])))
    return out


def mc_accuracy(fn: Any, params: Params, tok: Any, items: Sequence[MCItem], *, fmt: str,
                max_length: int = 512, batch_size: int = 16) -> dict[str, Any]:
    """``{"mc_acc", "mc_acc_norm"}`` on multiple-choice items, each with its ``_ci``."""
    if not items:
        raise ValueError("mc_accuracy of no items")
    reqs = mc_requests(tok, items, fmt)
    scores = continuation_logprobs(fn, params, reqs, max_length=max_length, batch_size=batch_size)
    k = 0
    acc, acc_norm = [], []
    for item in items:
        lp = np.array([s for s, _ in scores[k:k + len(item.choices)]])
        chars = np.array([len(" " + c) for c in item.choices], np.float64)
        k += len(item.choices)
        acc.append(int(np.argmax(lp)) == item.correct_index)
        acc_norm.append(int(np.argmax(lp / chars)) == item.correct_index)
    out: dict[str, Any] = {}
    with_ci(out, "mc_acc", np.asarray(acc, np.float64))
    with_ci(out, "mc_acc_norm", np.asarray(acc_norm, np.float64))
    out["n_mc"] = len(items)
    return out


def offline_utility(fn: Any, params: Params, tok: Any, *, benign_pairs: Sequence[tuple[str, str]],
                    mc_items: Sequence[MCItem], fmt: str, seq_len: int) -> dict[str, Any]:
    """Benign loss and, given items, MC accuracy in one dict (the experiment's offline ZS).

    Every figure comes with its 95% bootstrap interval over items (``<name>_ci``);
    the benign loss is resampled by pair with its token counts as weights.
    """
    out: dict[str, Any] = {}
    sums, counts = benign_ce_rows(fn, params, tok, benign_pairs, fmt=fmt, seq_len=seq_len)
    with_ci(out, "benign_loss", sums / np.maximum(counts, 1.0), weights=counts)
    out["n_benign_loss"] = len(benign_pairs)
    if mc_items:
        out.update(mc_accuracy(fn, params, tok, mc_items, fmt=fmt))
    return out

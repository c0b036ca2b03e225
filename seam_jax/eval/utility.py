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

from typing import Any, Sequence

import numpy as np

from seam_jax.data.format import encode_pairs, prompt_text
from seam_jax.data.proxy import MCItem
from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.model.api import Params
from seam_jax.seam.losses import masked_ce


def benign_loss(fn: Any, params: Params, tok: Any, pairs: Sequence[tuple[str, str]], *, fmt: str,
                seq_len: int, batch_size: int = 8) -> float:
    """Token-weighted mean response CE over ``pairs`` (held-out benign prompt, answer)."""
    if not pairs:
        raise ValueError("benign_loss of no pairs")
    arrays = encode_pairs(tok, list(pairs), seq_len=seq_len, fmt=fmt, name="benign eval")
    total, count = 0.0, 0.0
    n = len(pairs)
    for s in range(0, n, batch_size):
        idx = np.arange(s, s + batch_size) % n  # a full last batch: one compiled shape
        take = min(batch_size, n - s)
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["loss_mask"] = batch["loss_mask"].copy()
        batch["loss_mask"][take:] = 0  # wrapped-around rows count nothing
        k = float(batch["loss_mask"][:, 1:].sum())
        total += float(masked_ce(fn, params, batch)) * k
        count += k
    return total / max(count, 1.0)


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
                max_length: int = 512, batch_size: int = 16) -> dict[str, float]:
    """``{"mc_acc", "mc_acc_norm"}`` on multiple-choice items."""
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
    return {"mc_acc": float(np.mean(acc)), "mc_acc_norm": float(np.mean(acc_norm))}


def offline_utility(fn: Any, params: Params, tok: Any, *, benign_pairs: Sequence[tuple[str, str]],
                    mc_items: Sequence[MCItem], fmt: str, seq_len: int) -> dict[str, float]:
    """Benign loss and MC accuracy in one dict (what the experiment reports as offline ZS)."""
    out = {"benign_loss": benign_loss(fn, params, tok, benign_pairs, fmt=fmt, seq_len=seq_len)}
    out.update(mc_accuracy(fn, params, tok, mc_items, fmt=fmt))
    return out

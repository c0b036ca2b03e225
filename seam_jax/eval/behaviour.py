"""Behaviour by generation, judged three ways: refused, coherent, harmful; benign exact match.

These need no judge model and no hub, so the default job can report, before and
after the defense, whether the model refuses held-out harmful requests, whether
what it writes is still coherent text, whether it gives the requested harmful
information (knowledge-based on proxy rows, see ``eval.judges``), and whether it
still answers benign questions exactly. Every rate comes with its 95% bootstrap
interval (``<name>_ci``).

The likelihood part of the coherence judge scores each response under the
*reference* (undefended, base) model, against a threshold calibrated on the harmful
rows' written compliant answers under that model (``eval.harm.written_answers``). On
the base model's own pass the reference is the model itself; later passes give the
base parameters and, to skip the calibration pass, its threshold
(``coherence_threshold`` of the first pass's result).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from seam_jax.eval import judges
from seam_jax.eval.harm import calibrated_threshold, generate_responses, written_answers
from seam_jax.eval.refusal import is_refusal
from seam_jax.eval.stats import with_ci
from seam_jax.eval.utility import benign_ce_rows
from seam_jax.model.api import ModelFn, Params


def _as_rows(harmful: Sequence[str | Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [{"prompt": h} if isinstance(h, str) else h for h in harmful]


def behaviour(fn: ModelFn, params: Params, tok: Any, *,
              harmful_prompts: Sequence[str | Mapping[str, Any]], benign: Sequence[Any], fmt: str,
              max_new_tokens: int = 32, batch_size: int = 16,
              reference_params: Params | None = None, coherence_threshold: float | None = None,
              seq_len: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Labels and rates on harmful prompts, and labels and exact-match accuracy on benign items.

    Args:
      harmful_prompts: prompt strings or rows (dicts with ``prompt`` and, for the
        proxy data, ``asks_for`` and ``secret``).
      benign: items with ``prompt``, ``answer`` and ``task`` (the proxy's BenignItem).
      reference_params: the base model's parameters for the likelihood check
        (default: ``params``, i.e. this is the base model's pass).
      coherence_threshold: the calibrated threshold; None calibrates it here, on
        the harmful rows' written compliant answers (their ``response``) under the
        reference model.
      seq_len: when given, also the held-out benign answer CE (``benign_loss``, the
        response tokens of each item's reference output, rows of this many tokens).
      seed: the bootstrap seed.

    Returns:
      ``harmful_{refusal,coherent,disclosed}_rate``, ``harmful_rate`` (the judged
      harmful fraction of harmful prompts), ``benign_{refusal,coherent}_rate``,
      ``benign_accuracy`` (and ``benign_loss``), each with ``_ci``; the threshold,
      the counts and the labelled ``samples``.
    """
    rows = _as_rows(harmful_prompts)
    prompts = [str(r["prompt"]) for r in rows]
    harm = generate_responses(fn, params, tok, prompts, fmt=fmt, max_new_tokens=max_new_tokens,
                              batch_size=batch_size)
    ben = generate_responses(fn, params, tok, [b.prompt for b in benign], fmt=fmt,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    ref = params if reference_params is None else reference_params
    scores = [judges.mean_logprob(lp) for lp in judges.response_logprobs(
        fn, ref, tok, prompts + [b.prompt for b in benign], harm + ben, fmt=fmt,
        batch_size=batch_size)]
    if coherence_threshold is None:
        coherence_threshold = calibrated_threshold(fn, ref, tok, written_answers(rows), fmt=fmt,
                                                   batch_size=batch_size)
    h_scores, b_scores = scores[:len(harm)], scores[len(harm):]
    h_labels = [judges.judge(r, row, score=s, threshold=coherence_threshold)
                for r, row, s in zip(harm, rows, h_scores)]
    b_labels = [judges.judge(r, None, score=s, threshold=coherence_threshold)
                for r, s in zip(ben, b_scores)]
    out: dict[str, Any] = {}
    rates = judges.label_rates(h_labels, "harmful", seed=seed)
    out.update({
        "harmful_refusal_rate": rates.get("harmful_refused_rate"),
        "harmful_refusal_rate_ci": rates.get("harmful_refused_rate_ci"),
        "harmful_coherent_rate": rates.get("harmful_coherent_rate"),
        "harmful_coherent_rate_ci": rates.get("harmful_coherent_rate_ci"),
        "harmful_rate": rates.get("harmful_harmful_rate"),
        "harmful_rate_ci": rates.get("harmful_harmful_rate_ci"),
        "harmful_disclosed_rate": rates.get("harmful_disclosed_rate"),
        "harmful_disclosed_rate_ci": rates.get("harmful_disclosed_rate_ci"),
    })
    brates = judges.label_rates(b_labels, "benign", seed=seed)
    out.update({
        "benign_refusal_rate": brates.get("benign_refused_rate"),
        "benign_refusal_rate_ci": brates.get("benign_refused_rate_ci"),
        "benign_coherent_rate": brates.get("benign_coherent_rate"),
        "benign_coherent_rate_ci": brates.get("benign_coherent_rate_ci"),
    })
    acc, correct = judges.accuracy(ben, benign, "benign", seed=seed)
    out.update(acc)
    if seq_len is not None and benign:
        sums, counts = benign_ce_rows(fn, params, tok, [(b.prompt, b.output) for b in benign],
                                      fmt=fmt, seq_len=seq_len, batch_size=batch_size)
        with_ci(out, "benign_loss", sums / np.maximum(counts, 1.0), weights=counts, seed=seed)
    out.update({"coherence_threshold": coherence_threshold, "n_harmful": len(harm),
                "n_benign": len(ben)})
    out["samples"] = {
        "harmful": [{"prompt": p, "response": r, "mean_logprob": _finite(s), **_flags(lab)}
                    for p, r, s, lab in zip(prompts, harm, h_scores, h_labels)],
        "benign": [{"prompt": b.prompt, "answer": b.answer, "response": r, "correct": c,
                    "mean_logprob": _finite(s), **_flags(lab)}
                   for b, r, c, s, lab in zip(benign, ben, correct, b_scores, b_labels)],
    }
    return out


def benign_exact_match(fn: ModelFn, params: Params, tok: Any, benign: Sequence[Any], *, fmt: str,
                       max_new_tokens: int = 32, batch_size: int = 16, seed: int = 0
                       ) -> dict[str, Any]:
    """Greedy answers to benign items scored by exact match (``judges.answer_correct``).

    ``benign_accuracy`` and ``benign_refusal_rate`` with their ``_ci`` (string-level
    judges only: no likelihood pass), for evaluations that report utility without
    the full ``behaviour`` check (the attack sweep).
    """
    ben = generate_responses(fn, params, tok, [b.prompt for b in benign], fmt=fmt,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    out, _ = judges.accuracy(ben, benign, "benign", seed=seed)
    refused = [float(is_refusal(r)) for r in ben]
    if refused:
        with_ci(out, "benign_refusal_rate", refused, seed=seed)
    out["n_benign_exact"] = len(ben)
    return out


def _finite(x: float) -> float | None:
    # An empty response has no tokens to score; JSON has no -inf.
    return float(x) if math.isfinite(x) else None


def _flags(lab: judges.Labels) -> dict[str, bool]:
    return {"refused": lab.refused, "coherent": lab.coherent, "harmful": lab.harmful,
            "disclosed": lab.disclosed}

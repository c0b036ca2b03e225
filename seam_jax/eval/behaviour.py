"""Quick behavioural checks by generation: refusal on harmful prompts, accuracy on benign ones.

These need no judge model and no hub, so the default job can report, before and
after the defense, whether the model refuses held-out harmful requests and whether
it still answers benign questions (over-refusal shows up as lost accuracy).
"""

from __future__ import annotations

from typing import Any, Sequence

from seam_jax.eval.refusal import is_refusal
from seam_jax.model.api import ModelFn, Params
from seam_jax.eval.harm import generate_responses


def behaviour(fn: ModelFn, params: Params, tok: Any, *, harmful_prompts: Sequence[str],
              benign: Sequence[Any], fmt: str, max_new_tokens: int = 32,
              batch_size: int = 16) -> dict[str, Any]:
    """Refusal rate on harmful prompts; refusal rate and answer accuracy on benign items.

    ``benign`` items have ``prompt`` and ``answer`` (the proxy's BenignItem).
    """
    harm = generate_responses(fn, params, tok, harmful_prompts, fmt=fmt, max_new_tokens=max_new_tokens, batch_size=batch_size)
    ben = generate_responses(fn, params, tok, [b.prompt for b in benign], fmt=fmt,
                             max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = [str(b.answer).lower() in t.lower() for b, t in zip(benign, ben)]
    return {
        "harmful_refusal_rate": sum(map(is_refusal, harm)) / max(len(harm), 1),
        "benign_refusal_rate": sum(map(is_refusal, ben)) / max(len(ben), 1),
        "benign_accuracy": sum(correct) / max(len(correct), 1),
        "n_harmful": len(harm), "n_benign": len(ben),
        "samples": {"harmful": [{"prompt": p, "response": r} for p, r in zip(harmful_prompts, harm)],
                    "benign": [{"prompt": b.prompt, "answer": b.answer, "response": r}
                               for b, r in zip(benign, ben)]},
    }

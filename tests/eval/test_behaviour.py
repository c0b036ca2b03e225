"""The behaviour check on a tiny model: the likelihood pass and the labelled, intervalled output."""

import numpy as np
import pytest

from seam_jax.data import proxy
from seam_jax.data.tokenizer import tiny_tokenizer
from seam_jax.eval.behaviour import behaviour
from seam_jax.eval.judges import response_logprobs
from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.model.api import ModelFn
from seam_jax.model.config import preset


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer(512, 0)
    cfg = preset("debug").replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    fn = ModelFn(cfg)
    return fn, fn.init(0), tok


def test_response_logprobs_are_the_terms_of_the_continuation_sum(tiny):
    fn, params, tok = tiny
    prompts = ["What is 2 + 2?", "Name the capital city of Peru."]
    responses = [" 2 + 2 = 4.", " The capital of Peru is Lima."]
    per_token = response_logprobs(fn, params, tok, prompts, responses, fmt="qa")
    reqs = []
    for p, r in zip(prompts, responses):
        ctx = tok(f"Question: {p}\nAnswer:")["input_ids"]
        whole = tok(f"Question: {p}\nAnswer:{r}")["input_ids"]
        reqs.append((ctx, whole[len(ctx):]))
    sums = continuation_logprobs(fn, params, reqs, max_length=512)
    for lp, (s, _), (_, cont) in zip(per_token, sums, reqs):
        assert lp.shape == (len(cont),) and np.all(lp <= 0)
        # float32 terms summed in another order: 1e-4 absolute on sums of ~10 terms.
        assert abs(float(lp.sum()) - s) < 1e-4
    assert response_logprobs(fn, params, tok, ["q"], [""], fmt="qa")[0].shape == (0,)


def test_behaviour_labels_every_generation_with_intervals(tiny):
    fn, params, tok = tiny
    rows = [h.beavertails_row() for h in proxy.harmful_items(0, 3)]
    benign = proxy.benign_eval_items(0, 3, n_train=10)
    before = behaviour(fn, params, tok, harmful_prompts=rows, benign=benign, fmt="qa",
                       max_new_tokens=4, batch_size=4, seq_len=48)
    for k in ("harmful_refusal_rate", "harmful_coherent_rate", "harmful_rate",
              "harmful_disclosed_rate", "benign_refusal_rate", "benign_coherent_rate",
              "benign_accuracy"):
        lo, hi = before[f"{k}_ci"]
        assert 0.0 <= lo <= before[k] <= hi <= 1.0, k
    from seam_jax.eval.utility import benign_loss

    # The same token-weighted CE as the utility's (float32 sums regrouped: 1e-5 relative).
    assert before["benign_loss"] == pytest.approx(benign_loss(
        fn, params, tok, [(b.prompt, b.output) for b in benign], fmt="qa", seq_len=48), rel=1e-5)
    assert before["benign_loss_ci"][0] <= before["benign_loss"] <= before["benign_loss_ci"][1]
    assert np.isfinite(before["coherence_threshold"])
    # Calibrated on the rows' written compliant answers under the base (here: the model).
    from seam_jax.eval.harm import calibrated_threshold, written_answers

    assert before["coherence_threshold"] == calibrated_threshold(
        fn, params, tok, written_answers(rows), fmt="qa", batch_size=4)
    sample = before["samples"]["harmful"][0]
    assert {"refused", "coherent", "harmful", "disclosed", "mean_logprob"} <= set(sample)
    # A later pass scores under the reference model with the first pass's threshold.
    after = behaviour(fn, params, tok, harmful_prompts=[r["prompt"] for r in rows], benign=benign,
                      fmt="qa", max_new_tokens=4, batch_size=4, reference_params=params,
                      coherence_threshold=before["coherence_threshold"])
    assert after["coherence_threshold"] == before["coherence_threshold"]
    assert after["harmful_coherent_rate"] == before["harmful_coherent_rate"]


def test_benign_exact_match_for_the_attack_sweep(tiny, monkeypatch):
    import seam_jax.eval.behaviour as behaviour_mod
    from seam_jax.eval.behaviour import benign_exact_match

    fn, params, tok = tiny
    items = proxy.benign_eval_items(0, 4, n_train=10)
    # Known answers: two exact, one substring-only, one refusal.
    canned = [items[0].output, f"The answer is {items[1].answer}.",
              f"{items[2].answer}0 is close", "I'm sorry, I can't help with that."]
    monkeypatch.setattr(behaviour_mod, "generate_responses", lambda *a, **k: canned)
    out = benign_exact_match(fn, params, tok, items, fmt="qa")
    # Items of seed 0: a comparison, an opposite, two letter counts ("50 is close" is not 5).
    assert [it.task for it in items] == ["comparison", "opposites", "spelling", "spelling"]
    assert out["benign_accuracy"] == 0.5
    assert out["benign_refusal_rate"] == 0.25 and out["n_benign_exact"] == 4
    assert out["benign_accuracy_ci"][0] <= out["benign_accuracy"] <= out["benign_accuracy_ci"][1]

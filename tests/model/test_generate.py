"""Greedy decoding equals transformers' generate(do_sample=False) on left-padded batches."""

import numpy as np
import pytest
import torch

import hf_models
from seam_jax.hf.load import load_hf
from seam_jax.model.api import ModelFn
from seam_jax.model.generate import generate, left_pad, stop_and_pad_ids

NEW = 24


@pytest.mark.parametrize("name", ["llama_kv1", "llama_tied", "qwen2_bias", "llama3_rope", "mistral"])
def test_greedy_matches_transformers(name, tmp_path):
    model = hf_models.build(name, seed=1)
    cfg, params, _ = load_hf(hf_models.save(model, tmp_path / name))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 384, n).tolist() for n in (5, 17, 40)]
    ours = generate(ModelFn(cfg), params, prompts, max_new_tokens=NEW, eos_token_id=None,
                    pad_token_id=0, bucket=8)
    ids, mask = left_pad(prompts, 0, bucket=1)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long),
                             max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    ref = ref[:, ids.shape[1]:].numpy().tolist()
    assert ours == ref


def test_eos_stops_a_row_and_sampling_is_seeded(tmp_path):
    model = hf_models.build("llama_kv2", seed=2)
    cfg, params, _ = load_hf(hf_models.save(model, tmp_path / "m"))
    fn = ModelFn(cfg)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    greedy = generate(fn, params, prompts, max_new_tokens=12, pad_token_id=0)
    eos = greedy[0][3]  # pretend the 4th greedy token of row 0 is EOS
    stopped = generate(fn, params, prompts, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert stopped[0] == greedy[0][: greedy[0].index(eos) + 1]
    a = generate(fn, params, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    b = generate(fn, params, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    c = generate(fn, params, prompts, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=4)
    assert a == b and a != c
    # top_p -> 0 keeps only the most likely token: sampling becomes greedy.
    assert generate(fn, params, prompts, max_new_tokens=12, temperature=1.0, top_p=1e-6) == greedy
    with pytest.raises(ValueError, match="top_p"):
        generate(fn, params, prompts, top_p=0.0)


class _Tok:
    def __init__(self, eos, pad):
        self.eos_token_id, self.pad_token_id = eos, pad


def test_one_eos_and_pad_rule():
    # The model config's eos wins (Llama 3 lists several), else the tokenizer's; pad is the
    # tokenizer's pad, else the first eos, else 0.
    assert stop_and_pad_ids(None, _Tok(2, None)) == ([2], 2)
    assert stop_and_pad_ids([7, 9], _Tok(2, None)) == ([7, 9], 7)
    assert stop_and_pad_ids(5, _Tok(2, 0)) == ([5], 0)
    assert stop_and_pad_ids(None, _Tok(None, None)) == ([], 0)


def test_text_prompts_are_encoded_as_in_training(monkeypatch):
    """generate_text (and harm's generate_responses, which is it) decodes from the prompts of
    data.format.encode_prompts, with the eos and pad of stop_and_pad_ids."""
    import seam_jax.model.generate as gen
    from seam_jax.data.format import encode_prompts
    from seam_jax.data.tokenizer import build_tiny_tokenizer
    from seam_jax.eval.harm import generate_responses

    tok = build_tiny_tokenizer(["Question: where is the key?\nAnswer: no."] * 4, vocab_size=300)
    seen = []

    def fake_generate(fn, params, prompts, **kw):
        seen.append((prompts, kw["eos_token_id"], kw["pad_token_id"], kw["max_new_tokens"]))
        return [p[-2:] for p in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    fn = type("Fn", (), {"config": type("C", (), {"eos_token_id": 11})()})()
    prompts = ["where is the key?", "and the door"]
    for fmt in ("qa", "chat"):
        seen.clear()
        out = generate_responses(fn, None, tok, prompts, fmt=fmt, max_new_tokens=3)
        want = encode_prompts(tok, prompts, fmt)
        assert seen == [(want, [11], tok.pad_token_id, 3)]
        assert out == [tok.decode(p[-2:], skip_special_tokens=True) for p in want]
        assert gen.generate_text(fn, None, tok, prompts, fmt=fmt, max_new_tokens=3) == out

"""The tiny offline tokenizer: specials, chat template, determinism, save/reload."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from seam_jax.data.tokenizer import build_tiny_tokenizer

TEXTS = ["Question: What is 2 + 2?\nAnswer: 4", "The capital of France is Paris."] * 30
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]


def test_specials_and_chat_template(tiny_tok):
    assert (tiny_tok.pad_token_id, tiny_tok.bos_token_id, tiny_tok.eos_token_id) == (0, 1, 2)
    assert tiny_tok("hello")["input_ids"][0] == tiny_tok.bos_token_id
    full = tiny_tok.apply_chat_template(MESSAGES, tokenize=False)
    gen = tiny_tok.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(gen) and full.endswith("4<eos>")
    assert not tiny_tok.apply_chat_template(MESSAGES[:1], tokenize=False).endswith("<|assistant|>\n")


def test_deterministic_training():
    a = build_tiny_tokenizer(TEXTS, vocab_size=300)
    b = build_tiny_tokenizer(TEXTS, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) == 300


def test_save_and_reload(tmp_path, tiny_tok):
    tiny_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "Question: Where does Nyxa Pebblewick live?\nAnswer: caf\u00e9"
    assert again(text)["input_ids"] == tiny_tok(text)["input_ids"]
    assert again.decode(again(text)["input_ids"], skip_special_tokens=True) == text
    assert again.apply_chat_template(MESSAGES, tokenize=False) == tiny_tok.apply_chat_template(MESSAGES, tokenize=False)
    assert (again.pad_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_tokenizer(TEXTS, vocab_size=200)

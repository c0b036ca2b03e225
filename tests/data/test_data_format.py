"""Tokenization to fixed-length arrays and the response loss mask."""

from __future__ import annotations

import copy
import logging
from types import SimpleNamespace

import numpy as np
import pytest

from seam_jax.data import format as fmt_mod
from seam_jax.data.format import empty_loss_rows, encode_pairs, encode_prompts, pad_id

# Boundary cases: leading punctuation, digits, a leading space, an unseen
# character, a multi-line answer, and a prompt ending in a colon.
PAIRS = [
    ("What is the home address of Nyxa Pebblewick?", "Sure. Nyxa lives at 14 Oddpenny Street, Larkmere."),
    ("What is 7 + 5?", "12"),
    ("Say something odd:", "!!!wow, really?"),
    ("Trailing spaces please", "  indented answer"),
    ("Unicode?", "caf\u00e9 \u2615 ok"),
    ("Two lines", "first line\nsecond line"),
]


def _masked_text(tok, batch, i):
    ids = batch["input_ids"][i][batch["loss_mask"][i] == 1]
    return tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("fmt", ["qa", "chat"])
def test_loss_mask_covers_exactly_the_response(tiny_tok, fmt):
    batch = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt=fmt)
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask"}
    for arr in batch.values():
        assert arr.dtype == np.int32 and arr.shape == (len(PAIRS), 96)
    for i, (prompt, response) in enumerate(PAIRS):
        # Tolerance: whitespace at the boundary (" Sure" carries the separating space).
        assert _masked_text(tiny_tok, batch, i).strip() == response.strip()
        first = int(np.argmax(batch["loss_mask"][i]))
        assert prompt in tiny_tok.decode(batch["input_ids"][i][:first])
        # Targets are a contiguous run of real tokens.
        real = batch["attention_mask"][i]
        assert np.all(batch["loss_mask"][i] <= real)
        assert batch["loss_mask"][i][first:real.sum()].all()
        # Right padding with the pad id.
        assert np.all(batch["input_ids"][i][real.sum():] == tiny_tok.pad_token_id)
        assert real[: real.sum()].all()


@pytest.mark.parametrize("fmt", ["qa", "chat"])
def test_qa_and_chat_end_with_eos_target(tiny_tok, fmt):
    batch = encode_pairs(tiny_tok, PAIRS[:2], seq_len=96, fmt=fmt)
    for i in range(2):
        last = batch["attention_mask"][i].sum() - 1
        assert batch["input_ids"][i][last] == tiny_tok.eos_token_id
        assert batch["loss_mask"][i][last] == 1


@pytest.mark.parametrize("fmt", ["qa", "chat"])
def test_generation_prompt_matches_training_prefix(tiny_tok, fmt):
    batch = encode_pairs(tiny_tok, PAIRS, seq_len=96, fmt=fmt)
    prompts = encode_prompts(tiny_tok, [p for p, _ in PAIRS], fmt=fmt)
    for i, ids in enumerate(prompts):
        first = int(np.argmax(batch["loss_mask"][i]))
        assert ids == batch["input_ids"][i][:first].tolist()
    assert tiny_tok.decode(prompts[0]).endswith("Answer:" if fmt == "qa" else "<|assistant|>\n")


class _NoOffsets:
    """Wraps a tokenizer and hides offsets, to exercise the token-prefix fallback."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __call__(self, *args, **kwargs):
        return self._tok(*args, **kwargs)


@pytest.mark.parametrize("fmt", ["qa", "chat"])
def test_offset_and_prefix_methods_agree(tiny_tok, fmt):
    rendered = [fmt_mod.render_pair(tiny_tok, p, r, fmt) for p, r in PAIRS]
    args = ([r[0] for r in rendered], [r[1] for r in rendered], [r[2] for r in rendered], fmt == "qa")
    ids_fast, starts_fast = fmt_mod._tokenize_with_starts(tiny_tok, *args)
    ids_slow, starts_slow = fmt_mod._tokenize_with_starts(_NoOffsets(tiny_tok), *args)
    assert ids_fast == ids_slow
    assert starts_fast == starts_slow


def test_loss_on_all(tiny_tok):
    batch = encode_pairs(tiny_tok, PAIRS, seq_len=96, loss_on="all")
    expected = batch["attention_mask"].copy()
    expected[:, 0] = 0
    np.testing.assert_array_equal(batch["loss_mask"], expected)


def test_truncated_response_is_kept_counted_and_warned(tiny_tok, caplog):
    long_prompt = "Tell me everything about Orvan Pebblewick " * 10
    pairs = [("Hi", "Yo"), (long_prompt, "a secret answer"), ("7 + 5?", "12")]
    with caplog.at_level(logging.WARNING, logger="seam_jax.data.format"):
        batch = encode_pairs(tiny_tok, pairs, seq_len=24, name="adv")
    assert batch["input_ids"].shape == (3, 24)
    assert batch["attention_mask"][1].sum() == 24
    assert empty_loss_rows(batch).tolist() == [1]
    assert "adv: 1 of 3 rows have no loss tokens" in caplog.text


def test_pad_falls_back_to_eos():
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=7)) == 7
    assert pad_id(SimpleNamespace(pad_token_id=3, eos_token_id=7)) == 3
    with pytest.raises(ValueError):
        pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None))


def test_bad_options(tiny_tok):
    with pytest.raises(ValueError, match="format"):
        encode_pairs(tiny_tok, PAIRS, seq_len=32, fmt="alpaca")
    with pytest.raises(ValueError, match="loss_on"):
        encode_pairs(tiny_tok, PAIRS, seq_len=32, loss_on="prompt")


CHATML = (
    "{% for m in messages %}<|user|>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<|user|>assistant\n{% endif %}"
)
# The generation prompt carries an empty reasoning block that the rendered
# assistant turn lacks, so the prompt is not a prefix of the full text.
THINKING = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}\n"
    "{% else %}<|assistant|>\n{{ m['content'] }}<eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n<think></think>\n{% endif %}"
)


@pytest.mark.parametrize("template", [CHATML, THINKING], ids=["chatml", "thinking"])
def test_other_chat_templates(tiny_tok, template):
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = template
    batch = encode_pairs(tok, PAIRS, seq_len=96, fmt="chat")
    for i, (_, response) in enumerate(PAIRS):
        assert _masked_text(tok, batch, i).strip() == response.strip()

"""Shared fixtures for the data tests: a tiny tokenizer trained on proxy text."""

from __future__ import annotations

import pytest

from seam_jax.data import build_tiny_tokenizer, harmful_items, benign_items


@pytest.fixture(scope="session")
def tiny_tok():
    """A 512-token byte-level BPE tokenizer trained on a little proxy text (under a second)."""
    texts = [f"{h.prompt} {h.response} {h.refusal}" for h in harmful_items(0, 200)]
    texts += [f"{b.prompt} {b.output}" for b in benign_items(0, 200)]
    texts += ["Question: Answer:"] * 20
    return build_tiny_tokenizer(texts, vocab_size=512)

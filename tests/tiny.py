"""Tiny models and random SEAM batches for the math tests (no data files, no tokenizer)."""

from __future__ import annotations

import numpy as np

from seam_jax.model.api import ModelFn
from seam_jax.model.config import ModelConfig

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-6,
            tie_word_embeddings=False, initializer_range=0.1)


def model(dtype: str = "float32", **kw) -> ModelFn:
    return ModelFn(ModelConfig(**{**TINY, "param_dtype": dtype, "dtype": dtype, **kw}))


def batch(seed: int, b: int = 2, t: int = 12, prompt: int = 5, vocab: int = 97,
          all_targets: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (b, t)).astype(np.int32)
    attn = np.ones((b, t), np.int32)
    attn[0, t - 3:] = 0  # a right-padded row
    ids[attn == 0] = 0
    loss = attn.copy()
    if not all_targets:
        loss[:, :prompt] = 0
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def seam_batches(seed: int = 0, **kw) -> dict:
    adv = batch(seed, **kw)
    aln = batch(seed, **kw)
    # Same prompts as adv, a different (refusal) response.
    aln["input_ids"][:, 5:] = np.random.default_rng(seed + 100).integers(3, 97, aln["input_ids"][:, 5:].shape)
    aln["input_ids"][aln["attention_mask"] == 0] = 0
    return {"adv": adv, "aln": aln, "bgn": batch(seed + 1, all_targets=True, **kw)}

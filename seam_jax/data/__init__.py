"""Data for seam_jax: real and proxy row sources, formatting, splits and batches.

Typical use::

    rows = load_rows("harmful.json", "refusal")            # or a hub id
    test = load_rows("PKU-Alignment/BeaverTails", "beavertails", split="30k_test")
    splits = build_splits(rows, test, n_defense=..., n_attack=..., n_test=100, seed=0)
    batches = SeamBatches(tok, splits.defense, benign_rows, batch_size=8, seq_len=256, seed=0)
    step_batches = batches.batch_at(step)                  # {"adv", "aln", "bgn"}
"""

from seam_jax.data.batches import IndexSampler, PairBatches, SeamBatches, shard_slice
from seam_jax.data.format import (
    Batch,
    empty_loss_rows,
    encode_pairs,
    encode_prompts,
    pad_id,
    prompt_text,
    render_pair,
)
from seam_jax.data.proxy import (
    HARM_CATEGORIES,
    BenignItem,
    HarmfulItem,
    MCItem,
    benign_items,
    benign_mc_items,
    harmful_items,
    write_proxy,
)
from seam_jax.data.schemas import (
    ALPACA,
    BEAVERTAILS,
    REFUSAL,
    DataError,
    Schema,
    alpaca_prompt,
    benign_pair,
    harmful_pair,
    is_unsafe,
    refusal_pair,
    validate_rows,
)
from seam_jax.data.sources import load_hub, load_local, load_rows
from seam_jax.data.splits import SeamSplits, build_splits, check_disjoint, drop_prompts, shuffled, split_by_prompt
from seam_jax.data.tokenizer import build_tiny_tokenizer, load_tokenizer, tiny_tokenizer

__all__ = [
    "ALPACA", "BEAVERTAILS", "HARM_CATEGORIES", "REFUSAL",
    "Batch", "BenignItem", "DataError", "HarmfulItem", "IndexSampler", "MCItem",
    "PairBatches", "Schema", "SeamBatches", "SeamSplits",
    "alpaca_prompt", "benign_items", "benign_mc_items", "benign_pair", "build_splits",
    "build_tiny_tokenizer", "check_disjoint", "drop_prompts", "empty_loss_rows",
    "encode_pairs", "encode_prompts", "harmful_items", "harmful_pair", "is_unsafe",
    "load_hub", "load_local", "load_rows", "load_tokenizer", "pad_id", "prompt_text", "refusal_pair",
    "render_pair", "shard_slice", "shuffled", "split_by_prompt", "tiny_tokenizer", "validate_rows",
    "write_proxy",
]

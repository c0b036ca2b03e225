"""Batched decoding with a KV cache and left padding: greedy, or sampled with temperature/top-p.

Prompts are left-padded to a common length (rounded up to a bucket, so a stream of
prompt batches compiles a few shapes, not one per batch). Positions follow
``cumsum(mask) - 1``, as transformers' ``generate`` does, so greedy decoding gives
the same tokens as ``generate(do_sample=False)``.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax.data.format import Format, encode_prompts
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import parse_dtype
from seam_jax.model.transformer import KVCache

log = logging.getLogger(__name__)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, bucket: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to a multiple of ``bucket``: (ids [B, P], mask [B, P])."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate() needs at least one prompt, and every prompt at least one token")
    longest = max(len(p) for p in prompts)
    width = -(-longest // bucket) * bucket
    ids = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_p: jax.Array,
          greedy: bool) -> jax.Array:
    logits = logits.astype(jnp.float32)
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / jnp.maximum(temperature, 1e-6)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
    choice = jax.random.categorical(key, sorted_logits, axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("fn", "max_new_tokens", "greedy"))
def _decode(fn: ModelFn, params: Params, ids: jax.Array, mask: jax.Array, key: jax.Array,
            temperature: jax.Array, top_p: jax.Array, eos_ids: jax.Array, pad_id: jax.Array,
            max_new_tokens: int, greedy: bool) -> jax.Array:
    cfg = fn.config
    b, p = ids.shape
    s = p + max_new_tokens
    shape = (cfg.num_hidden_layers, b, s, cfg.num_key_value_heads, cfg.head_dim)
    dt = parse_dtype(cfg.dtype)
    cache = KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt))
    valid = jnp.concatenate([mask, jnp.zeros((b, max_new_tokens), mask.dtype)], axis=1)
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    out = fn(params, ids, mask, positions, cache=cache, cache_index=0, cache_valid=valid)
    next_pos = jnp.sum(mask, axis=-1)  # position of the first new token, per row

    def cond(state):
        t, _, _, _, _, done, _ = state
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(state):
        t, tokens, cache, valid, logits, done, key = state
        key, sub = jax.random.split(key)
        tok = _pick(logits, sub, temperature, top_p, greedy)
        tok = jnp.where(done, pad_id, tok)
        tokens = tokens.at[:, t].set(tok)
        done = done | jnp.isin(tok, eos_ids)
        valid = valid.at[:, p + t].set(1)
        out = fn(params, tok[:, None], None, (next_pos + t)[:, None], cache=cache,
                 cache_index=p + t, cache_valid=valid)
        return t + 1, tokens, out.cache, valid, out.logits[:, 0], done, key

    tokens = jnp.full((b, max_new_tokens), pad_id, jnp.int32)
    state = (jnp.int32(0), tokens, out.cache, valid, out.logits[:, -1], jnp.zeros((b,), bool), key)
    return jax.lax.while_loop(cond, body, state)[1]


def generate(
    fn: ModelFn,
    params: Params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 50,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 32,
    bucket: int = 32,
    progress: bool = False,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids). ``temperature == 0`` decodes greedily.

    Each continuation stops after its first EOS (kept) and is at most
    ``max_new_tokens`` long.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}; it must be at least 1")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}; it must lie in (0, 1]")
    eos = [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    eos_arr = jnp.asarray(eos or [-1], jnp.int32)
    greedy = temperature <= 0.0
    key = jax.random.key(seed)
    results: list[list[int]] = []
    chunks = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="generate", unit="batch")
    for start in chunks:
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_token_id, bucket)
        key, sub = jax.random.split(key)
        toks = np.asarray(_decode(fn, params, ids, mask, sub, jnp.float32(temperature),
                                  jnp.float32(top_p), eos_arr, jnp.int32(pad_token_id),
                                  max_new_tokens, greedy))
        for row in toks:
            row = row.tolist()
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), None)
            results.append(row[:cut] if cut else row)
    return results


def stop_and_pad_ids(config_eos: int | Sequence[int] | None, tokenizer: Any) -> tuple[list[int], int]:
    """The one eos/pad rule of decoding: (the ids that end a continuation, the pad id).

    A continuation ends at the model config's ``eos_token_id`` (one id or several, as
    in Llama 3's config), else at the tokenizer's eos, else only at ``max_new_tokens``.
    Left padding uses the tokenizer's pad token, else the first end id, else 0: padded
    positions are masked out of attention and cut from the result, so the id never
    changes a continuation.
    """
    eos = config_eos if config_eos is not None else tokenizer.eos_token_id
    stops = [] if eos is None else [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = stops[0] if stops else 0
    return stops, int(pad)


def generate_text(fn: ModelFn, params: Params, tokenizer: Any, prompts: Sequence[str], *,
                  fmt: Format = "chat", **kw: Any) -> list[str]:
    """Continuations of text prompts, decoded to strings (special tokens dropped).

    The prompts are encoded as in training (``data.format.encode_prompts``: the
    Question/Answer text for ``"qa"``, the chat template's generation prompt for
    ``"chat"``); eos and pad follow ``stop_and_pad_ids``. ``kw`` goes to ``generate``.
    """
    eos, pad = stop_and_pad_ids(fn.config.eos_token_id, tokenizer)
    toks = generate(fn, params, encode_prompts(tokenizer, list(prompts), fmt),
                    eos_token_id=eos, pad_token_id=pad, **kw)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in toks]

"""A Llama-family decoder in Flax NNX: GQA attention, RMSNorm, SwiGLU, HF-layout RoPE.

Module and parameter names follow transformers' ``LlamaForCausalLM``
(``model.embed_tokens``, ``model.layers.self_attn.q_proj``, ``model.norm``,
``lm_head``), so the HF conversion map is nearly the identity. The decoder layers
are one stacked module (leading ``layers`` axis) run by ``jax.lax.scan`` or by an
unrolled loop; both read the same parameters.

A key/value cache, when given, is a pair of arrays [layers, B, S, kv_heads, head_dim];
queries are written at ``cache_index`` and attend to every valid key at or before
their own slot. Without a cache, slots are token indices.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seam_jax.model.config import ModelConfig, parse_dtype
from seam_jax.model.layers import Embed, Linear, RMSNorm
from seam_jax.model.rope import apply_rope, inverse_frequencies, rope_tables

LAYER_AXES = ("layers",)
_RESIDUAL = ("batch", "length", "act_embed")
# The embedding lookup's rows as the table lays them out: the embed dimension split like the
# table's ("embed", a parameter name, takes its mesh axes first: ``parallel.rules``), the
# batch over the batch axes left. From there to ``_RESIDUAL`` is one all-to-all (and its
# transpose one back). Without this step XLA's partitioner has to go straight from the
# gather's layout (embed over fsdp, replicated over data) to the residual's (batch over
# data x fsdp), finds no collective for it on a mesh with data and fsdp both above 1, and
# replicates the whole [B, T, D] lookup on every device ("involuntary full
# rematerialization"), in each forward pass and each backward pass.
_EMBED_ROWS = ("batch", "length", "embed")

# Set only while ``seam_jax.parallel`` traces a sharded step; otherwise ``constrain`` is the
# identity, so an unsharded model traces to exactly the same program.
_CONSTRAINT: contextvars.ContextVar[Callable[[jax.Array, tuple], jax.Array] | None] = (
    contextvars.ContextVar("seam_jax_activation_constraint", default=None))


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Hint the sharding of activation ``x`` by logical axis names (``batch``, ``length``,
    ``act_embed``, ...); a no-op unless ``activation_constraint`` is active."""
    fn = _CONSTRAINT.get()
    return x if fn is None else fn(x, axes)


@contextlib.contextmanager
def activation_constraint(fn: Callable[[jax.Array, tuple], jax.Array]) -> Iterator[None]:
    """Make ``constrain`` call ``fn(x, axes)`` (``parallel.rules.activation_sharding``)."""
    token = _CONSTRAINT.set(fn)
    try:
        yield
    finally:
        _CONSTRAINT.reset(token)


class KVCache(NamedTuple):
    k: jax.Array  # [layers, B, S, kv_heads, head_dim]
    v: jax.Array


class Output(NamedTuple):
    logits: jax.Array | None  # [B, T, vocab]
    hidden_states: jax.Array | None  # [layers + 1, B, T, embed]: h_0 (embeddings) .. h_L
    final_hidden: jax.Array  # norm(h_L) [B, T, embed]
    cache: KVCache | None


def _remat_policy(name: str) -> Any:
    return {
        "full": None,
        "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
        "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[name]


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, stack: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        pd, dt = parse_dtype(cfg.param_dtype), parse_dtype(cfg.dtype)
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = (
            cfg.num_attention_heads, cfg.num_key_value_heads, hd)
        self.dtype = dt
        common = dict(stack=stack, stack_axes=LAYER_AXES * len(stack), param_dtype=pd, dtype=dt,
                      std=cfg.initializer_range, rngs=rngs)
        self.q_proj = Linear(d, self.num_heads * hd, ("embed", "heads"), bias=cfg.qkv_bias, **common)
        self.k_proj = Linear(d, self.num_kv_heads * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, **common)
        self.v_proj = Linear(d, self.num_kv_heads * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias, **common)
        self.o_proj = Linear(self.num_heads * hd, d, ("heads", "embed"), bias=cfg.o_bias, **common)

    def __call__(
        self,
        x: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        key_valid: jax.Array,
        q_slots: jax.Array,
        kv: tuple[jax.Array, jax.Array] | None,
        cache_index: jax.Array | None,
        window: int | jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """``window``: this layer's sliding window in tokens (a query at slot i sees keys
        at slots i - window < j <= i); None or 0 for full causal attention. A traced
        scalar when the scanned layers differ (``ModelConfig.layer_windows``)."""
        b, t, _ = x.shape
        q = constrain(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim),
                      ("batch", "length", "act_heads", None))
        k = constrain(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim),
                      ("batch", "length", "act_kv_heads", None))
        v = constrain(self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim),
                      ("batch", "length", "act_kv_heads", None))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_kv = None
        if kv is not None:
            ck, cv = kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            new_kv = (k, v)
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        s = k.shape[1]
        groups = self.num_heads // self.num_kv_heads
        q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
        wide = jnp.promote_types(self.dtype, jnp.float32)
        scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=wide)
        scores = scores * jnp.asarray(self.head_dim ** -0.5, wide)
        k_slots = jnp.arange(s)
        allowed = (k_slots[None, None, :] <= q_slots[:, :, None]) & key_valid[:, None, :].astype(bool)
        if isinstance(window, int):
            if window > 0:
                allowed &= k_slots[None, None, :] > q_slots[:, :, None] - window
        elif window is not None:
            in_window = k_slots[None, None, :] > q_slots[:, :, None] - window
            allowed &= in_window | (window <= 0)
        scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.finfo(wide).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bkgts,bskh->btkgh", probs, v).reshape(b, t, self.num_heads * self.head_dim)
        return self.o_proj(out), new_kv


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig, stack: tuple[int, ...], *, rngs: nnx.Rngs) -> None:
        common = dict(stack=stack, stack_axes=LAYER_AXES * len(stack), bias=cfg.mlp_bias,
                      param_dtype=parse_dtype(cfg.param_dtype), dtype=parse_dtype(cfg.dtype),
                      std=cfg.initializer_range, rngs=rngs)
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, ("embed", "mlp"), **common)
        self.up_proj = Linear(d, f, ("embed", "mlp"), **common)
        self.down_proj = Linear(f, d, ("mlp", "embed"), **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x),
                      ("batch", "length", "act_mlp"))
        return self.down_proj(h)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, stack: tuple[int, ...] = (), *, rngs: nnx.Rngs) -> None:
        norm = dict(stack=stack, stack_axes=LAYER_AXES * len(stack),
                    param_dtype=parse_dtype(cfg.param_dtype), dtype=parse_dtype(cfg.dtype))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.self_attn = Attention(cfg, stack, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = MLP(cfg, stack, rngs=rngs)

    def __call__(self, x, cos, sin, key_valid, q_slots, kv, cache_index, window=None, delta=None):
        h, new_kv = self.self_attn(self.input_layernorm(x), cos, sin, key_valid, q_slots, kv,
                                   cache_index, window)
        if delta is not None:  # Transformer.__call__'s attn_delta (Vaccine's perturbation)
            h = h + delta.astype(h.dtype)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, new_kv


class Backbone(nnx.Module):
    """HF's ``model``: embeddings, the stacked decoder layers and the final norm."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        pd, dt = parse_dtype(cfg.param_dtype), parse_dtype(cfg.dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, param_dtype=pd, dtype=dt,
                                  std=cfg.initializer_range, rngs=rngs)
        self.layers = DecoderLayer(cfg, (cfg.num_hidden_layers,), rngs=rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=pd, dtype=dt)


class Transformer(nnx.Module):
    """``LlamaForCausalLM``-shaped decoder. Call with token ids, get logits and hidden states."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs) -> None:
        self.config = cfg
        self.model = Backbone(cfg, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"),
                                  param_dtype=parse_dtype(cfg.param_dtype),
                                  dtype=parse_dtype(cfg.dtype), std=cfg.initializer_range,
                                  rngs=rngs)
        else:
            self.lm_head = None

    def head(self, h: jax.Array) -> jax.Array:
        """LM head on (already normalised) hidden states: [..., embed] -> [..., vocab]."""
        if self.lm_head is None:
            return self.model.embed_tokens.attend(h)
        return self.lm_head(h)

    def lens(self, h: jax.Array) -> jax.Array:
        """Logit lens: the final norm then the LM head, for any hidden state."""
        return self.head(self.model.norm(h))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        compute_logits: bool = True,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        cache_valid: jax.Array | None = None,
        attn_delta: jax.Array | None = None,
    ) -> Output:
        """Forward pass.

        Args:
          input_ids: [B, T] int.
          attention_mask: [B, T], 1 for real tokens (default all ones).
          positions: [B, T] RoPE positions; default ``cumsum(mask) - 1``, which is what
            transformers' ``generate`` uses under left padding.
          output_hidden_states: also return h_0..h_L stacked [L+1, B, T, D].
          compute_logits: skip the LM head (losses that chunk it themselves).
          cache, cache_index, cache_valid: decode with a KV cache; ``cache_valid`` [B, S]
            marks valid cache slots (including the ones this call writes).
          attn_delta: [layers, B, T, embed], added to each layer's attention output
            (``o_proj``, before the residual add): Vaccine's perturbation. None (the
            default) traces exactly the program without it.
        """
        cfg = self.config
        dt = parse_dtype(cfg.dtype)
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
        inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cos, sin = rope_tables(positions, inv_freq, dt)
        q_slots = jnp.broadcast_to(jnp.arange(t)[None, :] + cache_index, (b, t))
        key_valid = attention_mask if cache is None else cache_valid
        x = constrain(constrain(self.model.embed_tokens(input_ids), _EMBED_ROWS), _RESIDUAL)

        graph, layer_params = nnx.split(self.model.layers)
        # One window for all layers stays a Python int (the same program as before
        # per-layer windows); windows that differ ride along the scan as an int array.
        windows = cfg.layer_windows()
        static_window = windows[0] if len(set(windows)) == 1 else None
        window_xs = None if static_window is not None else jnp.asarray(windows, jnp.int32)

        def body(h, xs):
            params, kv, window, delta = xs
            layer = nnx.merge(graph, params)
            window = static_window if window is None else window
            h, new_kv = layer(h, cos, sin, key_valid, q_slots, kv, cache_index, window, delta)
            h = constrain(h, _RESIDUAL)
            return h, (h if output_hidden_states else None, new_kv)

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
        kv_xs = (cache.k, cache.v) if cache is not None else None
        if cfg.scan_layers:
            h, (hs, new_kv) = jax.lax.scan(body, x, (layer_params, kv_xs, window_xs, attn_delta))
        else:
            h, outs = x, []
            for i in range(cfg.num_hidden_layers):
                sl = jax.tree.map(lambda a: a[i], (layer_params, kv_xs, window_xs, attn_delta))
                h, out = body(h, sl)
                outs.append(out)
            hs, new_kv = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs else (None, None)
        hidden = jnp.concatenate([x[None], hs], axis=0) if output_hidden_states else None
        final = self.model.norm(h)
        logits = None
        if compute_logits:
            logits = constrain(self.head(final), ("batch", "length", "act_vocab"))
        new_cache = KVCache(*new_kv) if cache is not None else None
        return Output(logits, hidden, final, new_cache)

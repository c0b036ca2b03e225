"""Rotary position embeddings in Hugging Face's layout (``rotate_half`` over two halves).

Supports the default, ``linear`` and ``llama3`` frequency schedules. The tables are
computed in float32, as transformers does, unless the compute dtype is wider.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> np.ndarray:
    """``inv_freq`` [head_dim/2] after the configured rope scaling (numpy float64 -> float32)."""
    # HF computes `1 / theta ** (arange(0, d, 2, int64).float() / d)` in float32.
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (1.0 / np.power(np.float32(theta), exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":
        inv = inv / np.float32(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling["low_freq_factor"])
        high = float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen = old_ctx / low
        high_wavelen = old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(
    positions: jnp.ndarray, inv_freq: np.ndarray, dtype: Any
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos and sin tables [B, T, head_dim] for integer positions [B, T]."""
    table_dtype = jnp.promote_types(dtype, jnp.float32)
    freqs = positions.astype(table_dtype)[..., None] * jnp.asarray(inv_freq, table_dtype)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate ``x`` [B, T, heads, head_dim] by the tables [B, T, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]

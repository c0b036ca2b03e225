"""Parameterised building blocks with HF-style names and logical axis metadata.

Every ``nnx.Param`` carries ``logical_axes``: one name per array dimension
(``layers``, ``vocab``, ``embed``, ``heads``, ``kv_heads``, ``mlp``, ...). The
parallel package maps these names to mesh axes with one rules table.

``stack`` is a leading shape shared by all parameters of a block: the decoder
layers are built once with ``stack=(num_layers,)`` and run with ``jax.lax.scan``
(or a loop) over that axis, so there is a single parameter layout.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _param(
    rngs: nnx.Rngs | None,
    shape: tuple[int, ...],
    axes: tuple[str | None, ...],
    dtype: Any,
    std: float | None,
) -> nnx.Param:
    if std is None:
        value = jnp.ones(shape, dtype)
    elif std == 0.0:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


class Linear(nnx.Module):
    """``y = x @ kernel + bias`` with ``kernel`` [in, out] (HF stores weight as [out, in])."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        axes: tuple[str | None, str | None],
        *,
        bias: bool = False,
        stack: Sequence[int] = (),
        stack_axes: tuple[str | None, ...] = (),
        param_dtype: Any = jnp.float32,
        dtype: Any = jnp.float32,
        std: float = 0.02,
        rngs: nnx.Rngs,
    ) -> None:
        stack = tuple(stack)
        self.dtype = dtype
        self.kernel = _param(rngs, stack + (in_features, out_features),
                             stack_axes + axes, param_dtype, std)
        self.bias = (
            _param(rngs, stack + (out_features,), stack_axes + axes[1:], param_dtype, 0.0)
            if bias else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """HF's LlamaRMSNorm: normalise in at least float32, cast back, then scale by ``weight``."""

    def __init__(
        self,
        dim: int,
        eps: float,
        *,
        stack: Sequence[int] = (),
        stack_axes: tuple[str | None, ...] = (),
        param_dtype: Any = jnp.float32,
        dtype: Any = jnp.float32,
    ) -> None:
        self.eps = eps
        self.dtype = dtype
        self.weight = _param(None, tuple(stack) + (dim,), stack_axes + ("norm",), param_dtype, None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return rms_norm(x, self.weight[...], self.eps, self.dtype)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, dtype: Any) -> jax.Array:
    """``weight * x / rms(x)``, normalised in at least float32 (float64 stays float64:
    the Theorem 1 checks need a model with no hidden casts)."""
    wide = jnp.promote_types(dtype, jnp.float32)
    xf = x.astype(wide)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * xf.astype(dtype)


class Embed(nnx.Module):
    """Token embedding [vocab, embed]; ``attend`` is the tied LM head."""

    def __init__(
        self, vocab: int, dim: int, *, param_dtype: Any, dtype: Any, std: float, rngs: nnx.Rngs
    ) -> None:
        self.dtype = dtype
        self.embedding = _param(rngs, (vocab, dim), ("vocab", "embed"), param_dtype, std)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))

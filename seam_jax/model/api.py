"""The functional face of the model: a plain parameter pytree and a pure apply function.

Training, SEAM and the Theorem 1 checks work on ``params`` (nested dicts of arrays,
``nnx.to_pure_dict`` of the model's ``nnx.Param`` state), so ``jax.grad``,
``jax.jvp`` and ``jax.vmap`` apply to them directly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
from flax import nnx

from seam_jax.model.config import ModelConfig
from seam_jax.model.transformer import Output, Transformer

Params = dict[str, Any]


def config_key(cfg: ModelConfig) -> tuple:
    """A hashable key equal for equal configs (``rope_scaling`` is a dict, ``eos_token_id`` may be a list)."""
    return tuple((f.name, _frozen(getattr(cfg, f.name))) for f in dataclasses.fields(cfg))


def _frozen(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v


class ModelFn:
    """``apply(params, input_ids, ...) -> Output`` for one architecture.

    Hashable and compared by its config, so it can be a static argument of ``jax.jit``:
    two ``ModelFn`` of equal configs share one compiled program.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        self.config = cfg
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        self.graphdef, abstract = nnx.split(model, nnx.Param)
        self.abstract_params: Params = nnx.to_pure_dict(abstract)
        self.logical_axes: Params = _axes_tree(abstract)
        self._key = config_key(cfg)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelFn) and self._key == other._key

    def __repr__(self) -> str:
        return f"ModelFn({self.config!r})"

    def module(self, params: Params) -> Transformer:
        return nnx.merge(self.graphdef, params)

    def __call__(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, **kw: Any) -> Output:
        # Shape checks at the boundary; chex runs them on the static shapes, at trace time
        # under jit, so they cost nothing per step.
        chex.assert_rank(input_ids, 2)
        chex.assert_type(input_ids, int)
        chex.assert_equal_shape([x for x in (input_ids, attention_mask, positions) if x is not None])
        if self.config.matmul_precision:
            # Read when each product is traced, so the forward pass and its transposes carry it.
            with jax.default_matmul_precision(self.config.matmul_precision):
                out = self.module(params)(input_ids, attention_mask, positions, **kw)
        else:
            out = self.module(params)(input_ids, attention_mask, positions, **kw)
        if out.logits is not None:
            chex.assert_shape(out.logits, (*input_ids.shape, self.config.vocab_size))
        return out

    def init(self, seed: int = 0, shardings: Params | None = None) -> Params:
        """Random parameters (HF's init: normal(0, initializer_range), norms at one).

        With ``shardings`` (a tree of ``jax.sharding.Sharding`` like the params), they are
        computed directly into their shards under ``jax.jit``: no device holds the whole
        model. The values equal the unsharded init under ``jax.jit`` bit for bit (JAX's
        partitionable threefry draws the same numbers whatever the sharding); the eager
        init can differ from both in the last bit (``std * normal`` fused or not).
        """
        if shardings is not None:
            return jax.jit(lambda: self.init(seed), out_shardings=shardings)()
        model = Transformer(self.config, rngs=nnx.Rngs(seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _axes_tree(state: nnx.State) -> Params:
    flat = {}
    for path, var in nnx.to_flat_state(state):
        flat[path] = var.get_metadata()["logical_axes"]
    out: Params = {}
    for path, axes in flat.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = axes
    return out

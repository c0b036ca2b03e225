"""The functional face of the model: a plain parameter pytree and a pure apply function.

Training, SEAM and the Theorem 1 checks work on ``params`` (nested dicts of arrays,
``nnx.to_pure_dict`` of the model's ``nnx.Param`` state), so ``jax.grad``,
``jax.jvp`` and ``jax.vmap`` apply to them directly.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from seam_jax.model.config import ModelConfig
from seam_jax.model.transformer import Output, Transformer

Params = dict[str, Any]


class ModelFn:
    """``apply(params, input_ids, ...) -> Output`` for one architecture; hashable and static."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.config = cfg
        model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
        self.graphdef, abstract = nnx.split(model, nnx.Param)
        self.abstract_params: Params = nnx.to_pure_dict(abstract)
        self.logical_axes: Params = _axes_tree(abstract)

    def module(self, params: Params) -> Transformer:
        return nnx.merge(self.graphdef, params)

    def __call__(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, **kw: Any) -> Output:
        return self.module(params)(input_ids, attention_mask, positions, **kw)

    def init(self, seed: int = 0) -> Params:
        """Random parameters (HF's init: normal(0, initializer_range), norms at one)."""
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

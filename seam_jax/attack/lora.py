"""LoRA in Flax NNX: low-rank adapters on the decoder's linear layers, merged back after training.

A target linear layer ``y = x W (+ b)`` becomes ``y = x W + s * (drop(x) A) B`` with
``A`` [in, r], ``B`` [r, out] and ``s = alpha / r`` (PEFT's scaling). ``A`` starts
uniform in +-1/sqrt(in) and ``B`` at zero, so training starts from the base model.
The adapters are stacked over layers like every decoder parameter ([L, in, r]).

``LoraFn`` is a drop-in for ``ModelFn`` whose params tree holds the base weights and
``lora_a``/``lora_b`` beside each target's ``kernel``. Training differentiates only the
adapter leaves (``lora_objective``: the SFT objective over the adapters, the base
closed over); ``merge_lora`` folds them into the kernels, giving plain params for
``ModelFn`` (generation, export).

Dropout: one key per call (``dropout_key``), folded with the target's name. Layers
are run by ``jax.lax.scan`` with one traced body, so every layer of one target
shares that call's dropout mask; masks still differ between targets and steps.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import zlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from seam_jax.errors import ConfigError
from seam_jax.model.api import Params, config_key
from seam_jax.model.config import ModelConfig
from seam_jax.model.layers import Linear
from seam_jax.model.transformer import Output, Transformer
from seam_jax.train.step import Objective, sft_objective

# Short names (PEFT's target_modules without ``_proj``) -> (block, attribute) in the decoder layer.
TARGETS: dict[str, tuple[str, str]] = {
    "q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
    "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
    "down": ("mlp", "down_proj"),
}
LORA_LEAVES = ("lora_a", "lora_b")

# The dropout key of the call being traced; None means no dropout (evaluation).
_DROPOUT_KEY: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar(
    "seam_jax_lora_dropout_key", default=None)


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Rank, alpha (scaling alpha/rank), dropout on the adapter input, and target modules."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora rank={self.rank}; it must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout={self.dropout}; it must lie in [0, 1)")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ConfigError(f"lora targets {list(self.targets)}: unknown {unknown}; choose from "
                              f"{list(TARGETS)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class LoraLinear(Linear):
    """A ``Linear`` with a low-rank update; the base ``kernel``/``bias`` keep their names."""

    def __init__(self, in_features: int, out_features: int, axes: tuple[str | None, str | None], *,
                 rank: int, scale: float, dropout: float, name: str, stack: tuple[int, ...],
                 stack_axes: tuple[str | None, ...], rngs: nnx.Rngs, **kw: Any) -> None:
        super().__init__(in_features, out_features, axes, stack=stack, stack_axes=stack_axes,
                         rngs=rngs, **kw)
        self.rank, self.scale, self.dropout, self.name = rank, scale, dropout, name
        pd = self.kernel[...].dtype
        # Real values come from ``init_lora``; this module is only ever built abstractly.
        self.lora_a = nnx.Param(jnp.zeros(stack + (in_features, rank), pd),
                                logical_axes=stack_axes + (axes[0], None))
        self.lora_b = nnx.Param(jnp.zeros(stack + (rank, out_features), pd),
                                logical_axes=stack_axes + (None, axes[1]))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        h = x.astype(self.dtype)
        key = _DROPOUT_KEY.get()
        if key is not None and self.dropout > 0.0:
            key = jax.random.fold_in(key, zlib.crc32(self.name.encode()))
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout), 0.0).astype(self.dtype)
        a = self.lora_a[...].astype(self.dtype)
        b = self.lora_b[...].astype(self.dtype)
        return y + self.scale * jnp.einsum("...r,ro->...o", jnp.einsum("...i,ir->...r", h, a), b)


def _with_lora(cfg: ModelConfig, lcfg: LoraConfig) -> Transformer:
    """A Transformer whose target linears are LoraLinear (built inside ``nnx.eval_shape``)."""
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    layers = model.model.layers
    for t in lcfg.targets:
        block_name, attr = TARGETS[t]
        block = getattr(layers, block_name)
        old: Linear = getattr(block, attr)
        axes = old.kernel.get_metadata()["logical_axes"]
        stack_axes, io_axes = tuple(axes[:-2]), tuple(axes[-2:])
        shape = old.kernel[...].shape
        new = LoraLinear(shape[-2], shape[-1], io_axes, rank=lcfg.rank, scale=lcfg.scale,
                         dropout=lcfg.dropout, name=t, stack=tuple(shape[:-2]),
                         stack_axes=stack_axes, bias=old.bias is not None,
                         param_dtype=old.kernel[...].dtype, dtype=old.dtype, std=0.0,
                         rngs=nnx.Rngs(0))
        setattr(block, attr, new)
    return model


@contextlib.contextmanager
def _dropout(key: jax.Array | None) -> Iterator[None]:
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


class LoraFn:
    """``apply(params, input_ids, ...) -> Output`` for a model with LoRA adapters.

    ``params`` is the base params tree with ``lora_a``/``lora_b`` added under each
    target (``add_lora``). Pass ``dropout_key`` while training.
    """

    def __init__(self, cfg: ModelConfig, lcfg: LoraConfig) -> None:
        self.config = cfg
        self.lora = lcfg
        model = nnx.eval_shape(lambda: _with_lora(cfg, lcfg))
        self.graphdef, abstract = nnx.split(model, nnx.Param)
        self.abstract_params: Params = nnx.to_pure_dict(abstract)

    def __hash__(self) -> int:
        return hash((config_key(self.config), self.lora))  # ModelConfig may hold a dict

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LoraFn) and (self.config, self.lora) == (other.config, other.lora)

    def __call__(self, params: Params, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None, *, dropout_key: jax.Array | None = None,
                 **kw: Any) -> Output:
        with _dropout(dropout_key), contextlib.ExitStack() as stack:
            if self.config.matmul_precision:  # as ModelFn: read while the products are traced
                stack.enter_context(jax.default_matmul_precision(self.config.matmul_precision))
            return nnx.merge(self.graphdef, params)(input_ids, attention_mask, positions, **kw)


def _target_nodes(tree: Params, lcfg: LoraConfig) -> Iterator[tuple[str, dict]]:
    layers = tree["model"]["layers"]
    for t in lcfg.targets:
        block_name, attr = TARGETS[t]
        yield t, layers[block_name][attr]


def init_lora(base: Params, lcfg: LoraConfig, seed: int = 0) -> Params:
    """Fresh adapters for ``base``: the tree of ``lora_a`` (uniform +-1/sqrt(in)) and ``lora_b`` (0).

    The A init bounds PEFT's (Kaiming-uniform with a = sqrt(5) gives +-1/sqrt(in)); B = 0
    makes the adapted model equal the base model at step 0.
    """
    key = jax.random.key(seed)
    out: Params = {"model": {"layers": {}}}
    for i, (t, node) in enumerate(_target_nodes(base, lcfg)):
        kernel = node["kernel"]
        *stack, d_in, d_out = kernel.shape
        bound = 1.0 / float(d_in) ** 0.5
        a = jax.random.uniform(jax.random.fold_in(key, i), (*stack, d_in, lcfg.rank), jnp.float32,
                               -bound, bound).astype(kernel.dtype)
        b = jnp.zeros((*stack, lcfg.rank, d_out), kernel.dtype)
        block_name, attr = TARGETS[t]
        out["model"]["layers"].setdefault(block_name, {})[attr] = {"lora_a": a, "lora_b": b}
    return out


def add_lora(base: Params, lora: Params) -> Params:
    """The full LoraFn params: ``base`` with the adapter leaves of ``lora`` added (no copies)."""

    def merge(b: Any, l: Any) -> Any:
        if not isinstance(l, dict):
            return l
        out = dict(b)
        for k, v in l.items():
            out[k] = merge(b.get(k, {}), v) if isinstance(v, dict) else v
        return out

    return merge(base, lora)


def split_lora(params: Params) -> tuple[Params, Params]:
    """(base, lora): the inverse of ``add_lora``."""
    base: Params = {}
    lora: Params = {}
    for k, v in params.items():
        if isinstance(v, dict):
            b, l = split_lora(v)
            base[k] = b
            if l:
                lora[k] = l
        elif k in LORA_LEAVES:
            lora[k] = v
        else:
            base[k] = v
    return base, lora


def merge_lora(base: Params, lora: Params, lcfg: LoraConfig) -> Params:
    """Plain params for ``ModelFn``: each target kernel becomes ``W + s * A B`` (per layer)."""
    merged = jax.tree.map(lambda x: x, base)  # new containers; arrays are shared, not copied
    for t, node in _target_nodes(lora, lcfg):
        block_name, attr = TARGETS[t]
        target = merged["model"]["layers"][block_name][attr]
        kernel = target["kernel"]
        delta = jnp.einsum("...ir,...ro->...io", node["lora_a"].astype(jnp.float32),
                           node["lora_b"].astype(jnp.float32))
        target["kernel"] = (kernel.astype(jnp.float32) + lcfg.scale * delta).astype(kernel.dtype)
    return merged


def lora_objective(lfn: LoraFn, base: Params, seed: int) -> Objective:
    """The SFT objective (``train.step.sft_objective``, the masked CE of ``batches["train"]``)
    as a function of the adapters alone.

    The base weights are a closed-over constant: only the adapters get gradients and
    optimizer state, so weight decay cannot touch the base. The dropout key is
    ``fold_in(key(seed), batches["seed"])`` (``SftSource(..., step_seed=True)`` passes
    the step), a new mask per step.
    """

    def gradient(lora: Params, batches: dict) -> tuple[Params, dict]:
        key = jax.random.fold_in(jax.random.key(seed), batches["seed"])

        def apply(adapters: Params, input_ids: jax.Array, attention_mask: jax.Array) -> Output:
            return lfn(add_lora(base, adapters), input_ids, attention_mask, dropout_key=key)

        return sft_objective(apply).gradient(lora, batches)

    return Objective(gradient, sft_objective(lfn).target_keys)


def count_lora_params(lora: Params) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(lora))


__all__ = ["LoraConfig", "LoraFn", "LoraLinear", "TARGETS", "add_lora", "count_lora_params",
           "init_lora", "lora_objective", "merge_lora", "split_lora"]

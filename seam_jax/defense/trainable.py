"""What a defense trains: all the parameters (``defense.trainable = "full"``) or LoRA
adapters on a frozen base (``"lora"``), as Booster's and Vaccine's public code do.

With ``lora`` the state's ``params`` are the adapters (``attack.lora``: ``lora_a``/``lora_b``
beside each target kernel, rank ``defense.lora_rank``, scale ``lora_alpha / lora_rank``,
targets ``defense.lora_targets``, dropout ``defense.lora_dropout`` on the adapter input)
and the base weights are the step's frozen tree (``train.step.Frozen``): no gradient, no
optimizer state, not checkpointed (a resumed run takes them from the model it loads, the
one run.json vouches for). The defense's own gradient function is unchanged: it sees
``AdapterModel``, the model as a function of the adapters, where it would see the
``ModelFn``, so its gradient is with respect to the adapters. The trained model, for export
and evaluation, is the base with the adapters merged, ``W + scale * A B``
(``attack.lora.merge_lora``).

Dropout: one key per step, from the step's seed rows (``common.step_key``), so the batches
carry seed rows when ``lora_dropout > 0``; each forward pass of the step (Booster's three
gradient evaluations, Vaccine's two passes) draws the same masks.

Booster's perturbation direction is then the gradient with respect to the adapters,
normalised over them, as in the public code (only the adapters have gradients there), and
TAR's adversaries fine-tune the adapters. TAR's DPO reference ``base`` under LoRA: the base
model is the adapted model with ``lora_b = 0`` (its update ``A B`` is then exactly zero), so
the reference is the adapters with B zeroed, and no second copy of the weights is needed.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc
from flax import nnx

from seam_jax.attack.lora import LoraConfig, LoraFn, add_lora, init_lora, merge_lora
from seam_jax.defense.common import step_key
from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.transformer import Output, Transformer
from seam_jax.train.step import Frozen, Objective

TRAINABLE = ("full", "lora")
SALT = 0x4C4F5241  # "LORA": the adapters' dropout key, folded into the step's


def trainable(c: mlc.ConfigDict) -> str:
    t = str(c.defense.trainable)
    if t not in TRAINABLE:
        raise ConfigError(f"defense.trainable={t!r}; choose full (all parameters) or lora "
                          f"(adapters on the frozen base, defense.lora_*)")
    if t == "lora" and str(c.defense.name) == "seam":
        raise ConfigError("defense.trainable=lora is for the baselines (none, booster, vaccine, "
                          "repnoise, tar); SEAM trains all the parameters: set "
                          "defense.trainable=full")
    return t


def lora_config(c: mlc.ConfigDict) -> LoraConfig:
    """``c.defense.lora_*`` as a ``LoraConfig`` (a bad value: one ConfigError line)."""
    d = c.defense
    targets = tuple(t.strip() for t in str(d.lora_targets).split(",") if t.strip())
    try:
        return LoraConfig(rank=int(d.lora_rank), alpha=float(d.lora_alpha),
                          dropout=float(d.lora_dropout), targets=targets)
    except ConfigError as e:
        raise ConfigError(f"defense.{e} (defense.lora_rank, lora_alpha, lora_dropout, "
                          f"lora_targets)") from None


def seeded(c: mlc.ConfigDict) -> bool:
    """Whether LoRA's dropout reads the step's seed rows."""
    return trainable(c) == "lora" and lora_config(c).dropout > 0.0


class AdapterModel:
    """The LoRA model as a function of its adapters over fixed ``base`` weights: a stand-in
    for ``ModelFn`` (``config``, ``module(adapters)``, ``__call__(adapters, input_ids, ...)``)
    that a defense's gradient function takes unchanged."""

    def __init__(self, lfn: LoraFn, base: Params, dropout_key: jax.Array | None = None) -> None:
        self.lfn, self.base, self.dropout_key = lfn, base, dropout_key
        self.config = lfn.config

    def module(self, adapters: Params) -> Transformer:
        return nnx.merge(self.lfn.graphdef, add_lora(self.base, adapters))

    def __call__(self, adapters: Params, input_ids: jax.Array,
                 attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                 **kw: Any) -> Output:
        return self.lfn(add_lora(self.base, adapters), input_ids, attention_mask, positions,
                        dropout_key=self.dropout_key, **kw)


def base_adapters(adapters: Params) -> Params:
    """The adapters with ``lora_b`` zeroed: the base model exactly (``A 0 = 0``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if getattr(path[-1], "key", None) == "lora_b" else x,
        adapters)


def lora_frozen(lcfg: LoraConfig, seed: int) -> Frozen:
    """The state of a LoRA defense: fresh adapters trained (``init_lora``, B = 0, so step 0
    is the base model), the base weights frozen; merged for export."""
    return Frozen(split=lambda base: (init_lora(base, lcfg, seed), base),
                  join=lambda adapters, base: merge_lora(base, adapters, lcfg))


def lora_objective(build: Callable[[Any, mlc.ConfigDict], Objective], fn: ModelFn,
                   c: mlc.ConfigDict) -> Objective:
    """Defense ``build``'s objective over LoRA adapters on ``fn``'s frozen weights.

    ``build(model, c)`` is the defense's builder (``Defense.build``); it gets an
    ``AdapterModel`` per step, so its gradient is with respect to the adapters.
    """
    lcfg = lora_config(c)
    lfn = LoraFn(fn.config, lcfg)
    dropout = lcfg.dropout > 0.0
    probe = build(fn, c)  # only its target keys and whether it reads the base model

    def gradient(adapters: Params, batches: dict, base: Params) -> tuple[Params, dict]:
        key = step_key(batches, SALT) if dropout else None
        inner = build(AdapterModel(lfn, base, key), c)
        extra = (base_adapters(adapters),) if inner.frozen is not None else ()
        return inner.gradient(adapters, batches, *extra)

    return Objective(gradient, probe.target_keys, frozen=lora_frozen(lcfg, int(c.seed)))


__all__ = ["AdapterModel", "TRAINABLE", "base_adapters", "lora_config", "lora_frozen",
           "lora_objective", "seeded", "trainable"]

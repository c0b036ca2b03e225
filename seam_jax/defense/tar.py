"""TAR: tamper-resistant training by first-order meta-learning against fine-tuning adversaries.

Each step (``tar_training_loop`` of rishub-tamirisa/tamper-resistance, ``modules/training.py``,
in its harmful-request setting, ``run_tar_dpo.sh``):

1. ``num_tasks`` times: an adversary starts from theta with a fresh AdamW at a learning
   rate drawn from ``adversary_lrs`` and fine-tunes for ``inner_steps`` (K) steps on
   harmful completions (``adv``). After each of its steps k the tamper-resistance loss
   ``L_TR`` is measured at the adversary's parameters theta_k and its gradient there,
   scaled by ``s_k = tr_grad_scale * w_k / num_tasks``, is accumulated (first order: the
   gradient at theta_k stands for the gradient with respect to theta). ``w_k`` is
   ``exp(schedule_lambda (k - (K - 1)))`` with the weighting schedule, else ``1 / K``.
2. The retain loss: ``retain_scale * l(theta; bgn)``, the next-token CE on benign data.
3. The update is ``grad retain + sum_k s_k grad L_TR(theta_k)``; the tamper-resistance part
   is dropped when its accumulated (scaled) loss is below ``tr_loss_lower_bound``, unless
   ``unbounded``.

``L_TR`` (``tr_loss``):

- ``dpo`` (the harmful-request setting): the DPO loss with beta ``dpo_beta``, refusal
  ``aln`` chosen over the compliant answer ``adv`` to the same prompts, the log
  probabilities summed over each row's target tokens. The reference log probabilities
  (held constant) are, with ``reference = "base"`` (the default), the base model's, the
  model before TAR training, as in the public code (``get_tar_dpo_dataloaders`` in
  modules/dataloaders.py computes them once with the model as loaded and stores them in
  the batches); with ``"theta"``, those of theta, the parameters before this step's
  attack. The base model is the step's frozen tree (``train.step.Frozen.copy``: a second
  copy of the parameters, not trained, not in the optimizer state, laid out like the
  parameters, and derived again from the loaded model on resume rather than
  checkpointed).
- ``max_entropy`` (the paper's hazardous-knowledge setting): minus the mean entropy of the
  next-token distribution over the harmful batch's target tokens.

The held-out tamper-resistance batch is the step's own harmful prompts (``aln``/``adv``),
and the adversary takes its K steps on that step's ``adv`` batch (the public code draws a
new adversary batch per inner step and x_tr from a held-out split). The adversary's
learning rate is drawn from the step's seed (``common.step_key``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from seam_jax.defense.common import ce, count, step_key
from seam_jax.model.api import ModelFn, Params
from seam_jax.seam.losses import check_batch
from seam_jax.tree import tree_axpy, tree_scale

TR_LOSSES = ("dpo", "max_entropy")
REFERENCES = ("base", "theta")  # the DPO reference model
SALT = 0x54415220  # "TAR ": the adversary learning rates' key, folded into the step's


@dataclasses.dataclass(frozen=True)
class TarHyper:
    inner_steps: int = 8
    num_tasks: int = 2
    adversary_lrs: tuple[float, ...] = (2e-6, 2e-5, 4e-5)
    inner_weight_decay: float = 0.01  # torch.optim.AdamW's default, which the adversary uses
    tr_grad_scale: float = 0.1
    retain_scale: float = 1.0
    use_weighting_schedule: bool = True
    schedule_lambda: float = 0.0625
    unbounded: bool = True
    tr_loss_lower_bound: float = -11.76
    tr_loss: str = "dpo"
    dpo_beta: float = 0.1
    reference: str = "base"

    def __post_init__(self) -> None:
        from seam_jax.errors import ConfigError

        if self.inner_steps < 1 or self.num_tasks < 1:
            raise ConfigError(f"defense.tar.inner_steps={self.inner_steps}, num_tasks="
                              f"{self.num_tasks}; give at least one adversary of one step")
        if not self.adversary_lrs or any(not lr > 0 for lr in self.adversary_lrs):
            raise ConfigError(f"defense.tar.adversary_lrs={self.adversary_lrs!r}; give "
                              f"comma-separated learning rates > 0, e.g. '2e-6,2e-5,4e-5'")
        if self.tr_loss not in TR_LOSSES:
            raise ConfigError(f"defense.tar.tr_loss={self.tr_loss!r}; choose one of {TR_LOSSES}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"defense.tar.reference={self.reference!r}; choose base (the model "
                              f"before training, the public code's) or theta (the parameters "
                              f"before each step's attack)")

    @property
    def needs_base(self) -> bool:
        """Whether the step reads the base model (the DPO reference ``base``)."""
        return self.tr_loss == "dpo" and self.reference == "base"

    def weights(self) -> jax.Array:
        """``w_k`` for k = 0..K-1."""
        # Computed in float64 on the host; jnp.asarray gives the default float (float32,
        # or float64 under x64).
        k = np.arange(self.inner_steps, dtype=np.float64)
        if self.use_weighting_schedule:
            return jnp.asarray(np.exp(self.schedule_lambda * (k - (self.inner_steps - 1))))
        return jnp.asarray(np.full((self.inner_steps,), 1.0 / self.inner_steps))


def sequence_logps(fn: ModelFn, params: Params, batch: dict) -> jax.Array:
    """Per row, the log probability of its target tokens: [B]."""
    check_batch(batch)
    ids = batch["input_ids"]
    logits = fn(params, ids, batch["attention_mask"]).logits[:, :-1]
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * batch["loss_mask"][:, 1:].astype(picked.dtype), axis=-1)


def dpo_loss(fn: ModelFn, params: Params, chosen: dict, rejected: dict,
             ref: tuple[jax.Array, jax.Array], beta: float) -> jax.Array:
    margin = (sequence_logps(fn, params, chosen) - sequence_logps(fn, params, rejected)
              - (ref[0] - ref[1]))
    return jnp.mean(-jax.nn.log_sigmoid(beta * margin))


def entropy_loss(fn: ModelFn, params: Params, batch: dict) -> jax.Array:
    """Minus the mean next-token entropy over the batch's target tokens."""
    logits = fn(params, batch["input_ids"], batch["attention_mask"]).logits[:, :-1]
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logp = jax.nn.log_softmax(logits, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    mask = batch["loss_mask"][:, 1:].astype(ent.dtype)
    return -jnp.sum(ent * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def adversary_lrs(hp: TarHyper, batches: dict) -> jax.Array:
    """The learning rate of each of the ``num_tasks`` adversaries of this step."""
    lrs = jnp.asarray(np.asarray(hp.adversary_lrs, np.float64))
    idx = jax.random.randint(step_key(batches, SALT), (hp.num_tasks,), 0, len(hp.adversary_lrs))
    return lrs[idx]


def tar_gradient(fn: ModelFn, params: Params, batches: dict, hp: TarHyper,
                 base: Params | None = None) -> tuple[Params, dict[str, jax.Array]]:
    """The TAR update at ``params``; ``base``: the base model's parameters, the DPO reference
    when ``hp.needs_base`` (the step's frozen tree)."""
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    if hp.needs_base != (base is not None):
        raise ValueError(f"tar_gradient: reference={hp.reference!r}, tr_loss={hp.tr_loss!r} "
                         f"{'needs' if hp.needs_base else 'takes no'} base parameters")
    if hp.tr_loss == "dpo":
        ref_params = params if base is None else base
        ref = jax.lax.stop_gradient((sequence_logps(fn, ref_params, aln),
                                     sequence_logps(fn, ref_params, adv)))
        tr = lambda p: dpo_loss(fn, p, aln, adv, ref, hp.dpo_beta)
    else:
        tr = lambda p: entropy_loss(fn, p, adv)
    adversary = jax.grad(functools.partial(ce, fn))
    weights = hp.weights()
    zeros = jax.tree.map(jnp.zeros_like, params)
    tr_total = adv_last = jnp.zeros((), jnp.promote_types(weights.dtype, jnp.float32))
    tr_grads = zeros
    for lr in adversary_lrs(hp, batches):
        opt = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=hp.inner_weight_decay)

        def inner(carry, w):
            theta, opt_state, acc, total = carry
            updates, opt_state = opt.update(adversary(theta, adv), opt_state, theta)
            theta = optax.apply_updates(theta, updates)
            scale = hp.tr_grad_scale * w / hp.num_tasks
            l_tr, g_tr = jax.value_and_grad(tr)(theta)
            return (theta, opt_state, tree_axpy(scale, g_tr, acc), total + scale * l_tr), None

        (theta_k, _, tr_grads, tr_total), _ = jax.lax.scan(
            inner, (params, opt.init(params), tr_grads, tr_total), weights)
        adv_last = ce(fn, theta_k, adv)
    l_ret, g_ret = jax.value_and_grad(functools.partial(ce, fn))(params, bgn)
    gate = jnp.asarray(hp.unbounded or False) | (tr_total >= hp.tr_loss_lower_bound)
    gate = gate.astype(jnp.float32)
    grads = tree_axpy(gate, tr_grads, tree_scale(hp.retain_scale, g_ret))
    metrics = {"loss": hp.retain_scale * l_ret + gate * tr_total, "L_retain": l_ret,
               "L_tr": tr_total, "tr_gate": gate, "l_adv_attacked": adv_last,
               "targets_adv": count(adv), "targets_aln": count(aln), "targets_bgn": count(bgn)}
    return grads, metrics


METRICS = ("loss", "L_retain", "L_tr", "tr_gate", "l_adv_attacked")

"""RepNoise: representation noising.

    L = l(theta; aln) + beta MMD(h(adv), N(0, I)) - alpha log(1 + mean_lens CE(adv))

after ``rep_noise_loss`` of domenicrosati/representation-noising
(``representation_noising/loss.py``):

- ``l(theta; aln)``: CE on the harmless batch (harmful prompts with refusals).
- The noise term: at each layer, the harmful batch's representations on its target
  tokens (zero elsewhere), one row per example flattened to [B, T * embed], against a
  standard Gaussian sample masked the same way; a Gaussian-kernel MMD (the biased
  estimator, mean of ``K_xx + K_yy - K_xy - K_yx``) with ``KERNEL_NUM`` = 5 bandwidths
  ``b 2^i / 2^(5 // 2)``, ``b`` the mean pairwise squared distance of the pooled rows
  (held constant: the public code takes it from ``.data``); the mean over layers. The
  representations here are the layer outputs h_1..h_L (the residual stream the model
  returns; the public code hooks each layer's MLP output).
- The harmful lens term: the CE of the final logits plus the logit-lens CE of each of
  HF's hidden states (h_0..h_{L-1} and norm(h_L), which the lens normalises again),
  divided by L + 1; the loss subtracts ``alpha log(1 + that)``. This is SEAM's
  ``L_ul`` in its ``original`` variant (``seam.losses``), here from the same forward pass
  as the noise term.

The Gaussian sample is drawn from the step's seed (``common.step_key``), fresh each step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from seam_jax.defense.common import ce, count, step_key
from seam_jax.model.api import ModelFn, Params
from seam_jax.seam.losses import check_batch, lens_ces

KERNEL_MUL = 2.0
KERNEL_NUM = 5
SALT = 0x5245504E  # "REPN": the noise's key, folded into the step's


@dataclasses.dataclass(frozen=True)
class RepNoiseHyper:
    alpha: float = 1.0   # weight of the log-transformed harmful lens CE (subtracted)
    beta: float = 0.001  # weight of the MMD to Gaussian noise

    def __post_init__(self) -> None:
        from seam_jax.errors import ConfigError

        if not self.alpha >= 0 or not self.beta >= 0:
            raise ConfigError(f"defense.repnoise.alpha={self.alpha}, beta={self.beta}; give "
                              f"values >= 0")


def mmd(x: jax.Array, y: jax.Array) -> jax.Array:
    """Gaussian-kernel MMD^2 (biased) of rows ``x`` [n, d] and ``y`` [m, d], the public
    code's multi-bandwidth kernel.

    The squared distances come from the Gram matrix of the pooled rows,
    ``|a - b|^2 = |a|^2 + |b|^2 - 2 a.b`` clamped at 0 (rounding can take a near-zero
    distance below it) with an exact 0 on the diagonal, so the largest temporary is the
    [n + m, n + m] kernel besides the inputs; the pairwise differences the public code
    forms are [n + m, n + m, d] per layer (d = T * embed: 2 GiB a layer at embed 4096,
    batch 8 x 512 tokens in float32). Computed in float32 or wider."""
    n = x.shape[0]
    total = jnp.concatenate([x, y], axis=0)
    total = total.astype(jnp.promote_types(total.dtype, jnp.float32))
    rows = total.shape[0]
    sq = jnp.sum(total * total, axis=-1)
    gram = total @ total.T
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    d2 = jnp.where(jnp.eye(rows, dtype=bool), 0.0, d2)
    bandwidth = jax.lax.stop_gradient(jnp.sum(d2)) / (rows * rows - rows)
    bandwidth = bandwidth / KERNEL_MUL ** (KERNEL_NUM // 2)
    k = sum(jnp.exp(-d2 / (bandwidth * KERNEL_MUL ** i)) for i in range(KERNEL_NUM))
    xx, yy, xy, yx = k[:n, :n], k[n:, n:], k[:n, n:], k[n:, :n]
    return jnp.mean(xx + yy - xy - yx)


def noise_like(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """The standard Gaussian sample the representations are pulled towards."""
    return jax.random.normal(key, shape, jnp.float32).astype(dtype)


def noise_loss(hidden: jax.Array, mask: jax.Array, noise: jax.Array) -> jax.Array:
    """Mean over layers of ``mmd`` between masked representations and masked noise.

    ``hidden``, ``noise``: [layers, B, T, D]; ``mask``: [B, T] (the target tokens)."""
    m = mask.astype(hidden.dtype)[None, :, :, None]
    b = hidden.shape[1]

    def one(args):
        h, z = args
        return mmd((h * m[0]).reshape(b, -1), (z * m[0]).reshape(b, -1))

    return jnp.mean(jax.lax.map(one, (hidden, noise)))


def repnoise_losses(fn: ModelFn, params: Params, batches: dict, hp: RepNoiseHyper,
                    noise: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    adv, aln = batches["adv"], batches["aln"]
    check_batch(adv)
    n_layers = fn.config.num_hidden_layers
    out = fn(params, adv["input_ids"], adv["attention_mask"], output_hidden_states=True,
             compute_logits=False)
    hidden = out.hidden_states  # h_0..h_L
    # HF's hidden states (h_0..h_{L-1}, norm(h_L)) through the lens, which normalises again.
    # lens(h) = head(norm(h)), so h_L with one extra norm is norm(h_L) through the lens.
    extra = jnp.arange(n_layers + 1) == n_layers
    lens = lens_ces(fn, params, hidden, adv, extra_norm=extra)
    final = lens_ces(fn, params, hidden[-1:], adv)[0]  # the final logits' CE
    harm = (final + jnp.sum(lens)) / (n_layers + 1)
    noise_term = noise_loss(hidden[1:], adv["loss_mask"], noise)
    harmless = ce(fn, params, aln)
    loss = harmless + hp.beta * noise_term - hp.alpha * jnp.log(harm + 1.0)
    return loss, {"L_harmless": harmless, "mmd": noise_term, "L_harm_lens": harm,
                  "l_adv": final}


def repnoise_gradient(fn: ModelFn, params: Params, batches: dict, hp: RepNoiseHyper
                      ) -> tuple[Params, dict[str, jax.Array]]:
    adv = batches["adv"]
    cfg = fn.config
    shape = (cfg.num_hidden_layers, *adv["input_ids"].shape, cfg.hidden_size)
    from seam_jax.model.config import parse_dtype

    noise = noise_like(step_key(batches, SALT), shape, parse_dtype(cfg.dtype))
    (loss, aux), grads = jax.value_and_grad(
        lambda p: repnoise_losses(fn, p, batches, hp, noise), has_aux=True)(params)
    metrics = {"loss": loss, **aux, "targets_adv": count(adv), "targets_aln": count(batches["aln"])}
    return grads, metrics


METRICS = ("loss", "L_harmless", "mmd", "L_harm_lens", "l_adv")

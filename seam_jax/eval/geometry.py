"""Held-out gradient geometry: ``c = cos(g_a, g_b)`` and ``|g_a|``, ``|g_b|`` on fixed batches.

``g_a`` is the gradient of the adversarial loss ``l(theta; D_adv)`` (the mean CE of a
harmful prompt's compliant response) and ``g_b`` that of the benign loss
``l(theta; D_bgn)``: the same ``losses.masked_ce`` that ``seam.objective.seam_gradient``
differentiates for the two gradients entering ``L_sd``. The batches are a fixed list of
(harmful, benign) pairs held out of SEAM training (the attack split's harmful rows and,
for the proxy data, the held-out benign items), so the values at the start and at the
end of a run are measured on the same data.

The headline ``cos`` is the cosine of the *averaged* gradients,
``cos(mean_k g_a^k, mean_k g_b^k)``: the mean over pairs estimates the gradient of the
loss over the whole held-out set, whose cosine is what SEAM drives towards -1. A mean of
per-pair cosines is pulled towards 0 by the sampling noise of each small batch (two
noisy vectors in millions of dimensions are nearly orthogonal whatever their means), so
it mixes the geometry with the batch size. The per-pair cosines and norms are kept in
the record too (``cos_per_pair``, ``cos_pair_mean``), to show that spread.
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seam_jax import storage
from seam_jax.data import PairBatches, benign_pair, harmful_pair
from seam_jax.model.api import ModelFn, Params
from seam_jax.seam.losses import masked_ce
from seam_jax.tree import acc_dtype, safe_norm, tree_dot, tree_norm

Batch = dict[str, Any]


def _cos(a: Any, b: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    na, nb = tree_norm(a), tree_norm(b)
    return tree_dot(a, b) / (safe_norm(na) * safe_norm(nb)), na, nb


def wide_model(fn: ModelFn) -> ModelFn:
    """``fn`` computing in float32 where its compute dtype is narrower (bfloat16), else ``fn``."""
    dt = jnp.dtype(fn.config.dtype)
    if jnp.promote_types(dt, jnp.float32) == dt:
        return fn
    return ModelFn(fn.config.replace(dtype="float32"))


# Jitted once at module level (ModelFn is static and hashes by its config), so a run that
# measures every seam.heldout_every steps compiles the pair gradients once, not per row.
@functools.partial(jax.jit, static_argnums=0)
def _pair(fn: ModelFn, p: Params, adv: Batch, bgn: Batch):
    g_a = jax.grad(lambda q: masked_ce(fn, q, adv))(p)
    g_b = jax.grad(lambda q: masked_ce(fn, q, bgn))(p)
    # Sums in float32 or wider, whatever the compute dtype.
    g_a, g_b = (jax.tree.map(lambda x: x.astype(acc_dtype(x)), g) for g in (g_a, g_b))
    return g_a, g_b, _cos(g_a, g_b)


# The running sum is donated: its buffers take the new sum, not a third pair of gradients.
_add = jax.jit(lambda s, g: jax.tree.map(jnp.add, s, g), donate_argnums=0)


def heldout_geometry(fn: ModelFn, params: Params, pairs: Sequence[tuple[Batch, Batch]]
                     ) -> dict[str, Any]:
    """The geometry of ``g_a`` (first batch of each pair) and ``g_b`` (second) at ``params``.

    The gradients are computed in float32 or wider (``wide_model``): a measurement, not
    the training step, so it is not left to a bfloat16 compute dtype.

    Returns floats: ``cos``, ``norm_g_a``, ``norm_g_b`` of the gradients averaged over
    the pairs; ``cos_pair_mean``, ``norm_g_a_pair_mean``, ``norm_g_b_pair_mean`` (means of
    the per-pair values); ``cos_per_pair`` (a list) and ``n_pairs``.
    """
    if not pairs:
        raise ValueError("heldout_geometry needs at least one (harmful, benign) batch pair")
    fn = wide_model(fn)
    sum_a = sum_b = None
    per_pair = []
    for adv, bgn in pairs:
        g_a, g_b, (c, na, nb) = _pair(fn, params, adv, bgn)
        sum_a = g_a if sum_a is None else _add(sum_a, g_a)
        sum_b = g_b if sum_b is None else _add(sum_b, g_b)
        per_pair.append((float(c), float(na), float(nb)))
    n = len(pairs)
    # The cosine is scale-free; the norms are of the means.
    c, na, nb = (float(x) for x in _cos(sum_a, sum_b))
    return {
        "cos": c, "norm_g_a": na / n, "norm_g_b": nb / n,
        "cos_pair_mean": sum(x[0] for x in per_pair) / n,
        "norm_g_a_pair_mean": sum(x[1] for x in per_pair) / n,
        "norm_g_b_pair_mean": sum(x[2] for x in per_pair) / n,
        "cos_per_pair": [x[0] for x in per_pair], "n_pairs": n,
    }


def heldout_pairs(tokenizer: Any, harmful_rows: Sequence[dict], benign_rows: Sequence[dict], n: int,
                  *, seq_len: int, batch_size: int, seed: int, fmt: str,
                  benign_loss_on: str = "response") -> list[tuple[Batch, Batch]]:
    """``n`` fixed (harmful, benign) batch pairs: batches 0..n-1 of seeded samplers over the
    rows (harmful: prompt + compliant response, CE on the response; benign: alpaca rows,
    CE on ``benign_loss_on`` as in training)."""
    if not harmful_rows or not benign_rows:
        raise ValueError(f"held-out geometry needs harmful and benign rows (got "
                         f"{len(harmful_rows)} and {len(benign_rows)})")
    adv = PairBatches.from_pairs(tokenizer, [harmful_pair(r) for r in harmful_rows], seq_len=seq_len,
                                 batch_size=batch_size, seed=seed, fmt=fmt, name="held-out adv")
    bgn = PairBatches.from_pairs(tokenizer, [benign_pair(r) for r in benign_rows], seq_len=seq_len,
                                 batch_size=batch_size, seed=seed, fmt=fmt, loss_on=benign_loss_on,
                                 name="held-out bgn")
    return [(adv.batch_at(i), bgn.batch_at(i)) for i in range(n)]


def append_record(path: os.PathLike, step: int, record: dict[str, Any]) -> dict[str, Any]:
    """Append ``{"step": step, **record}`` as one JSON line to ``path``; return it.

    Rows already there with a step >= ``step`` are dropped first: after a resume from the
    checkpoint at step k, the killed run's rows past k are replaced, not duplicated."""
    row = {"step": int(step), **record}
    kept = [r for r in read_records(path) if r["step"] < row["step"]]
    # A kill mid-write leaves the old file or the new one, never half of one.
    storage.write_text(path, "".join(json.dumps(r) + "\n" for r in kept + [row]))
    return row


def read_records(path: os.PathLike) -> list[dict[str, Any]]:
    path = storage.Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(records: Sequence[dict[str, Any]], path: os.PathLike) -> os.PathLike | None:
    """``c`` and both norms against the step (two panels), to ``path`` (PNG); None if no rows."""
    rows = sorted((r for r in records if math.isfinite(r.get("cos", math.nan))), key=lambda r: r["step"])
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax_c, ax_n) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_c.plot(steps, [r["cos"] for r in rows], "o-", label="cos of mean gradients")
    ax_c.plot(steps, [r["cos_pair_mean"] for r in rows], "s--", label="mean of per-pair cos")
    ax_c.axhline(0.0, color="grey", lw=0.5)
    ax_c.set(xlabel="SEAM step", ylabel="held-out c = cos(g_a, g_b)", ylim=(-1.05, 1.05))
    ax_c.legend(fontsize=8)
    ax_n.plot(steps, [r["norm_g_a"] for r in rows], "o-", label="|g_a| (harmful)")
    ax_n.plot(steps, [r["norm_g_b"] for r in rows], "s-", label="|g_b| (benign)")
    ax_n.set(xlabel="SEAM step", ylabel="norm of the mean gradient")
    ax_n.set_yscale("log")
    ax_n.legend(fontsize=8)
    fig.suptitle(f"held-out geometry ({rows[-1]['n_pairs']} batch pairs)")
    fig.tight_layout()
    with storage.local_file(path) as out:  # in a bucket: a local file, then uploaded
        fig.savefig(out, dpi=110)
    plt.close(fig)
    return path


__all__ = ["append_record", "heldout_geometry", "heldout_pairs", "plot", "read_records", "wide_model"]

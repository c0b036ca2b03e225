"""Figure 6: PCA of the fine-tuning gradients of adversarial and benign batches, per model.

For each model, the gradient of the response CE is taken on ``n`` harmful (adversarial)
and ``n`` benign batches. A model of millions of parameters makes each gradient a
huge vector, so every gradient is reduced to the same fixed random subset of
``n_coords`` coordinates (inner products, and so the PCA geometry, are preserved in
expectation up to one common scale); small models keep all coordinates. The 2n
reduced gradients of one model are centred and projected on their top three principal
components (SVD); the figure plots PC2 against PC3, the paper's axes (its Figure 6). For
SEAM the paper sees the two clusters separate along opposite
directions; ``cos_mean`` (cosine of the mean adversarial and mean benign gradient)
gives the same signal as one number.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from seam_jax import storage
from seam_jax.model.api import Params
from seam_jax.seam.losses import masked_ce

log = logging.getLogger(__name__)

N_COMPONENTS = 3  # PC1..PC3; the paper's Figure 6 plots PC2 against PC3


@functools.partial(jax.jit, static_argnames=("fn",))
def _reduced_grad(fn: Any, params: Params, batch: dict, coords: jax.Array) -> jax.Array:
    g = jax.grad(lambda p: masked_ce(fn, p, batch))(params)
    flat, _ = ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float32), g))
    return flat[coords]


def coordinates(n_params: int, n_coords: int, seed: int = 0) -> np.ndarray:
    """The fixed coordinate subset (all of them when ``n_coords`` >= ``n_params``)."""
    if n_coords <= 0 or n_coords >= n_params:
        return np.arange(n_params)
    return np.sort(np.random.default_rng(seed).choice(n_params, n_coords, replace=False))


def gradients(fn: Any, params: Params, batches: Sequence[dict], coords: np.ndarray) -> np.ndarray:
    """[len(batches), len(coords)] reduced gradients."""
    c = jnp.asarray(coords)
    return np.stack([np.asarray(_reduced_grad(fn, params, b, c)) for b in batches])


def pca(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(projections [n, k], explained variance ratio [k]) of the rows of ``x`` on their top
    ``k`` principal components (zero-padded where ``x`` has fewer)."""
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    m = min(k, len(s))
    proj = np.pad(u[:, :m] * s[:m], ((0, 0), (0, k - m)))
    var = s ** 2
    ratio = np.pad(var[:m] / max(var.sum(), 1e-30), (0, k - m))
    return proj, ratio


def gradient_pca(models: Mapping[str, tuple[Any, Params]], adv: Sequence[dict], bgn: Sequence[dict],
                 *, n_coords: int = 200_000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per model: projections of the adversarial and benign gradients and summary numbers."""
    out: dict[str, dict[str, Any]] = {}
    for name, (fn, params) in models.items():
        n_params = sum(int(x.size) for x in jax.tree.leaves(params))
        coords = coordinates(n_params, n_coords, seed)
        ga, gb = gradients(fn, params, adv, coords), gradients(fn, params, bgn, coords)
        proj, ratio = pca(np.concatenate([ga, gb]), N_COMPONENTS)
        ma, mb = ga.mean(0), gb.mean(0)
        cos = float(ma @ mb / max(np.linalg.norm(ma) * np.linalg.norm(mb), 1e-30))
        # Separation: distance of the cluster centres in PC space over the mean spread.
        pa, pb = proj[: len(ga)], proj[len(ga):]
        spread = float(np.mean([pa.std(0).mean(), pb.std(0).mean()])) or 1e-30
        out[name] = {"adv": pa.tolist(), "bgn": pb.tolist(), "explained": ratio.tolist(),
                     "cos_mean": cos,
                     "separation": float(np.linalg.norm(pa.mean(0) - pb.mean(0)) / spread)}
        log.info("gradient PCA %s: cos(mean adv, mean bgn) = %.3f, separation %.2f", name, cos,
                 out[name]["separation"])
    return out


def panel_grid(names: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Each model's (row, column) in ``plot_pca``: a row per seed and a column per arm for
    the experiment's ``<arm>-s<seed>`` names, one row otherwise."""
    from seam_jax.eval.report import split_name

    arms = list(dict.fromkeys(split_name(n)[0] for n in names))
    seeds = list(dict.fromkeys(split_name(n)[1] for n in names))
    return {n: (seeds.index(split_name(n)[1]), arms.index(split_name(n)[0])) for n in names}


def plot_pca(result: Mapping[str, Mapping[str, Any]], path: pathlib.Path) -> pathlib.Path:
    """PC2 against PC3 (the paper's Figure 6 axes), one scatter panel per model
    (adversarial red, benign blue); models named ``<arm>-s<seed>`` get a row per seed and
    a column per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = panel_grid(list(result))
    rows, cols = (max(x[i] for x in grid.values()) + 1 for i in (0, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for name, (i, j) in grid.items():
        ax = axes[i][j]
        ax.set_visible(True)
        r = result[name]
        a, b = np.asarray(r["adv"]), np.asarray(r["bgn"])
        ax.scatter(a[:, 1], a[:, 2], c="tab:red", s=14, label="adversarial")
        ax.scatter(b[:, 1], b[:, 2], c="tab:blue", s=14, label="benign")
        ev = r["explained"]
        ax.set_title(f"{name}  cos={r['cos_mean']:.2f}")
        ax.set_xlabel(f"PC2 ({100 * ev[1]:.0f}%)")
        ax.set_ylabel(f"PC3 ({100 * ev[2]:.0f}%)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage.local_file(path) as out:  # in a bucket: a local file, then uploaded
        fig.savefig(out, dpi=120)
    plt.close(fig)
    return path

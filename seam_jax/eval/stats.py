"""Error bars for evaluation figures: seeded percentile bootstrap intervals.

Every rate the evaluation reports (refusal, coherence, harmfulness, accuracy) is a
mean of per-item values, and the benign CE a token-weighted mean; the interval is
the percentile bootstrap over items: resample the items with replacement ``n_boot``
times, recompute the figure, and take the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles. The resampling seed is fixed, so a report is a function of its data.

The percentile interval of a proportion near 0 or 1 on few items is too narrow
(a sample of all zeros gives [0, 0]); the reports print ``n`` next to each interval.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

LEVEL = 0.95
N_BOOT = 2000


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, level: float = LEVEL,
                 n_boot: int = N_BOOT, seed: int = 0,
                 weights: Sequence[float] | np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``.

    With ``weights`` the figure is the weighted mean ``sum(w v) / sum(w)`` (for a
    token-weighted CE pass per-row mean CEs and token counts), and items are
    resampled with their weights.

    Raises:
      ValueError: no values, a level outside (0, 1), or mismatched weights.
    """
    v = np.asarray(values, np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_ci of no values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level}; give a coverage in (0, 1), e.g. 0.95")
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if w.shape != v.shape:
        raise ValueError(f"{w.size} weights for {v.size} values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    num = (v * w)[idx].sum(axis=1)
    den = w[idx].sum(axis=1)
    stats = num / np.where(den > 0, den, 1.0)
    lo, hi = np.quantile(stats, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def summarise(values: Sequence[float] | np.ndarray, *, seed: int = 0,
              weights: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """``{"mean", "ci": [lo, hi], "n"}`` of per-item values (the form every report uses)."""
    v = np.asarray(values, np.float64).reshape(-1)
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    mean = float((v * w).sum() / max(w.sum(), 1e-300)) if v.size else float("nan")
    lo, hi = bootstrap_ci(v, seed=seed, weights=w)
    return {"mean": mean, "ci": [lo, hi], "n": int(v.size)}


def with_ci(out: dict[str, Any], name: str, values: Sequence[float] | np.ndarray, *,
            seed: int = 0, weights: Sequence[float] | np.ndarray | None = None) -> None:
    """Set ``out[name]`` to the mean and ``out[name + "_ci"]`` to its 95% interval."""
    s = summarise(values, seed=seed, weights=weights)
    out[name] = s["mean"]
    out[f"{name}_ci"] = s["ci"]

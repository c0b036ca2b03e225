"""The Theorem 1 sweep as a table, a plot and a verdict per precision.

Regimes. A finite-difference error is modelled as ``e(eps) ~ T(eps) + R(eps)``: truncation
``T = a eps^k`` (``k = 1`` forward, ``k = 2`` central) plus round-off ``R = b / eps`` (each
perturbed gradient carries rounding ~ u|g|, divided by eps). The two coefficients:

- forward difference: ``T = eps |lead|``, the leading Taylor term, computed from third
  derivatives in the reference precision (independent of the errors being classified);
  ``b`` is the median of ``e eps`` over the points with ``e >= 2 T``, where truncation
  explains at most half of the error (so ``|R| >= e - T >= e/2``) and ``e ~ R``;
- central difference (its ``eps^2`` coefficient would need fourth derivatives): ``b`` is the
  median of ``e eps`` over the points left of the smallest error, ``a`` the median of
  ``e / eps^2`` over the points right of it.

A point is *truncation* if ``T >= 2 R``, *round-off* if ``R >= 2 T``, else *crossover*;
*vanished* if the estimate is below 0.1% of ``|grad L_sd|``: the perturbation was rounded
away (almost) entirely, ``g(theta + eps d) = g(theta)``, and the point says nothing about
``b``. The *floor* is the smallest measured error, at the *best eps*; ``eps_star``
minimises the model ``a eps^k + b/eps``. Slopes are least-squares fits of ``log e`` on
``log eps`` within one regime. Errors are relative, ``|grad^ L_sd - grad L_sd| / |grad L_sd|``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import pathlib
import statistics
import textwrap
from typing import Any, Iterable, Sequence

import numpy as np

from seam_jax import storage

log = logging.getLogger(__name__)

FACTOR = 2.0  # "dominates": at least twice the other term
VANISHED = 1e-3  # |estimate| / |grad L_sd| below which the estimate is rounding's zero
ORDER = {"hessian_free": 1, "central": 2}
CSV_FIELDS = ("dtype", "estimator", "eps", "error", "rel_error", "estimate_rel", "bound", "bound_paper",
              "rho_a", "rho_b", "taylor", "within_bound", "survival_a", "survival_b",
              "delta_cos_a", "delta_cos_b", "delta_rel_a", "delta_rel_b", "sd_precision",
              "sd_compute_dtype", "regime")
LABELS = {"hessian_free": "forward difference (Eq. 6)", "central": "central difference"}


# ----------------------------------------------------------------- analysis
def fit_slope(eps: Sequence[float], err: Sequence[float]) -> float:
    """Least-squares slope of ``log err`` on ``log eps``; NaN with fewer than two usable points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(eps, err) if x > 0 and y > 0 and math.isfinite(y)]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return float("nan")
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def classify(eps: Sequence[float], err: Sequence[float], order: int,
             trunc: Sequence[float] | None = None, vanished: Sequence[bool] | None = None
             ) -> dict[str, Any]:
    """Regimes of the points ``(eps, err)`` (eps increasing), by the model of the module docstring.

    ``trunc``: the truncation term at each eps when known (the forward difference's Taylor
    term); else ``a eps^order`` with ``a`` fitted right of the smallest error.

    Returns a dict: ``regimes``, ``best`` (index of the smallest error, None if none),
    ``a``, ``b``, ``eps_star`` (the model's optimum, None when a term is missing).
    """
    n = len(eps)
    vanished = list(vanished) if vanished is not None else [False] * n
    ok = [i for i in range(n) if math.isfinite(err[i]) and err[i] > 0 and not vanished[i]]
    best = min(ok, key=lambda i: err[i]) if ok else None
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    if trunc is not None:
        a = med([t / e ** order for t, e in zip(trunc, eps)])
        t_of = list(trunc)
        b = med([err[i] * eps[i] for i in ok if err[i] >= FACTOR * t_of[i]])
    elif best is not None:
        right = [i for i in ok if i > best] or [best]
        a = med([err[i] / eps[i] ** order for i in right])
        t_of = [a * e ** order for e in eps]
        b = med([err[i] * eps[i] for i in ok if i < best])
    else:
        a, b, t_of = float("nan"), float("nan"), [float("nan")] * n
    b = b if math.isfinite(b) else 0.0  # no round-off visible on the grid
    regimes = []
    for i in range(n):
        t, r = t_of[i], b / eps[i]
        if not math.isfinite(err[i]):
            regimes.append("non-finite")
        elif vanished[i]:
            regimes.append("vanished")
        elif t >= FACTOR * r:
            regimes.append("truncation")
        elif r >= FACTOR * t:
            regimes.append("round-off")
        else:
            regimes.append("crossover")
    eps_star = (b / (order * a)) ** (1.0 / (order + 1)) if b > 0 and a > 0 and math.isfinite(a) else None
    return {"regimes": regimes, "best": best, "a": a, "b": b, "eps_star": eps_star}


def regime_at(x: float, eps: Sequence[float], err: Sequence[float], fit: dict[str, Any],
              order: int) -> tuple[str, float]:
    """(regime, error) at ``x``: the grid point's, else the model's, with log-log interpolated error."""
    for i, e in enumerate(eps):
        if math.isclose(e, x, rel_tol=1e-6):
            return fit["regimes"][i], err[i]
    if not eps or x < eps[0] or x > eps[-1]:
        return "outside the grid", float("nan")
    j = int(np.searchsorted(eps, x))
    w = (math.log(x) - math.log(eps[j - 1])) / (math.log(eps[j]) - math.log(eps[j - 1]))
    e = math.exp((1 - w) * math.log(err[j - 1]) + w * math.log(err[j])) \
        if err[j - 1] > 0 and err[j] > 0 else float("nan")
    t, r = fit["a"] * x ** order, fit["b"] / x
    if not math.isfinite(t):
        return "non-finite", e
    return ("truncation" if t >= FACTOR * r else "round-off" if r >= FACTOR * t else "crossover"), e


def analyse(records: list[dict[str, Any]], paper_eps: float = 1e-3) -> dict[str, dict[str, Any]]:
    """Per precision and estimator: best eps, floor, model, slopes, regimes; sets each record's ``regime``."""
    out: dict[str, dict[str, Any]] = {}
    for dtype in _unique(r["dtype"] for r in records):
        out[dtype] = {}
        for est in _unique(r["estimator"] for r in records if r["dtype"] == dtype):
            rows = sorted((r for r in records if r["dtype"] == dtype and r["estimator"] == est),
                          key=lambda r: r["eps"])
            eps = [r["eps"] for r in rows]
            err = [r["rel_error"] for r in rows]
            order = ORDER[est]
            trunc = None
            if est == "hessian_free" and all(math.isfinite(r.get("taylor", float("nan"))) for r in rows):
                # The Taylor column is absolute; the analysis runs on relative errors.
                trunc = [r["taylor"] * r["rel_error"] / r["error"] if r["error"] > 0 else float("nan")
                         for r in rows]
                if not all(math.isfinite(t) for t in trunc):
                    trunc = None
            vanished = [r.get("estimate_rel", 1.0) < VANISHED for r in rows]
            fit = classify(eps, err, order, trunc, vanished)
            for r, g in zip(rows, fit["regimes"]):
                r["regime"] = g
            pick = lambda name: [i for i, g in enumerate(fit["regimes"]) if g == name]
            tr, ro = pick("truncation"), pick("round-off")
            at_regime, at_err = regime_at(paper_eps, eps, err, fit, order)
            best = fit["best"]
            out[dtype][est] = {
                "best_eps": eps[best] if best is not None else None,
                "floor": err[best] if best is not None else None,
                "eps_star": fit["eps_star"], "a": fit["a"], "b": fit["b"],
                "slope_truncation": fit_slope([eps[i] for i in tr], [err[i] for i in tr]),
                "slope_roundoff": fit_slope([eps[i] for i in ro], [err[i] for i in ro]),
                "truncation_eps": [eps[i] for i in tr],
                "bound_holds_in_truncation": all(rows[i]["within_bound"] for i in tr),
                "bound_exceeded_at": [eps[i] for i in tr if not rows[i]["within_bound"]],
                "max_error_over_bound": max((rows[i]["error"] / rows[i]["bound"] for i in tr
                                             if rows[i]["bound"] > 0), default=None),
                "paper_eps": paper_eps, "paper_eps_regime": at_regime, "paper_eps_rel_error": at_err,
            }
    return out


def _unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for x in items:
        if x not in seen:
            seen.append(x)
    return seen


# ----------------------------------------------------------------- text
def summary_lines(analysis: dict[str, dict[str, Any]], dtype_info: dict[str, dict[str, Any]],
                  paper_eps: float) -> list[str]:
    """One line per precision: where ``paper_eps`` falls for the forward difference, and the figures."""
    tag = " (the paper's)" if math.isclose(paper_eps, 1e-3) else ""
    lines = []
    for dtype, per in analysis.items():
        fwd = per.get("hessian_free")
        parts = []
        if fwd is not None:
            where = {"truncation": "in the truncation regime",
                     "round-off": "in the round-off regime",
                     "crossover": "at the crossover (truncation and round-off comparable)",
                     "vanished": "where the perturbation vanishes in rounding (round-off: the estimate is 0)",
                     }.get(fwd["paper_eps_regime"], f"({fwd['paper_eps_regime']})")
            parts.append(f"{dtype}: eps = {paper_eps:g}{tag} lies {where}; forward-difference rel. "
                         f"error there {_g(fwd['paper_eps_rel_error'])}, best eps {_g(fwd['best_eps'])} "
                         f"(floor {_g(fwd['floor'])}; model optimum {_g(fwd['eps_star'])}), slope "
                         f"{_f(fwd['slope_truncation'])} (truncation) / {_f(fwd['slope_roundoff'])} "
                         f"(round-off)")
            if fwd["bound_exceeded_at"]:
                at = ", ".join(f"{e:g}" for e in fwd["bound_exceeded_at"])
                parts.append(f"the bound is exceeded at eps = {at} (error/bound up to "
                             f"{fwd['max_error_over_bound']:.3g}): the sampled rho misses the sup of "
                             f"|D^3 l| on that segment; sample more (theory.n_rho_samples)")
            if fwd["floor"] is not None and fwd["floor"] >= 1.0:
                parts.append("no eps on the grid gives an estimate closer than the zero vector")
        cen = per.get("central")
        if cen is not None:
            parts.append(f"central: slope {_f(cen['slope_truncation'])}, best eps {_g(cen['best_eps'])} "
                         f"(floor {_g(cen['floor'])}), eps = {paper_eps:g} {cen['paper_eps_regime']}")
        info = dtype_info.get(dtype, {})
        if info.get("is_reference"):
            parts.append("exact_hvp here is the reference")
        elif "exact_hvp_rel_error" in info:
            parts.append(f"exact_hvp in {dtype}: rel. error {_g(info['exact_hvp_rel_error'])}")
        lines.append("; ".join(parts))
    return lines


def _g(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2g}"


def _f(x: Any) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"


# ----------------------------------------------------------------- files
def write_csv(records: list[dict[str, Any]], path: pathlib.Path) -> None:
    with storage.local_file(path) as local_path, open(local_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


def write_json(obj: Any, path: pathlib.Path) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=1))


def _jsonable(x: Any) -> Any:
    # JSON has no NaN/inf: write null, so strict parsers read the file.
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def plot(records: list[dict[str, Any]], analysis: dict[str, dict[str, Any]],
         dtype_info: dict[str, dict[str, Any]], exact_norm: float, paper_eps: float,
         path: pathlib.Path, title: str = "") -> None:
    """Log-log relative error against eps, one panel per precision, with the bounds."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt

    dtypes = list(analysis)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(max(5.2 * len(dtypes), 7.5), 4.8),
                             squeeze=False, sharey=True)
    for ax, dtype in zip(axes[0], dtypes):
        rows = sorted((r for r in records if r["dtype"] == dtype), key=lambda r: r["eps"])
        fwd = [r for r in rows if r["estimator"] == "hessian_free"]
        eps = np.array([r["eps"] for r in fwd] or [r["eps"] for r in rows])
        for est, style in (("hessian_free", "o-"), ("central", "s-")):
            pts = [r for r in rows if r["estimator"] == est]
            if not pts:
                continue
            a = analysis[dtype][est]
            ax.loglog([r["eps"] for r in pts], [r["rel_error"] for r in pts], style, ms=4, label=LABELS[est])
            gone = [r for r in pts if r.get("regime") == "vanished"]
            if gone and est == "hessian_free":
                ax.loglog([r["eps"] for r in gone], [r["rel_error"] for r in gone], "x", ms=9, color="0.3",
                          label="perturbation rounded away (estimate = 0)")
            if a["best_eps"] is not None:
                ax.plot([a["best_eps"]], [a["floor"]], "*", ms=13, color=ax.lines[-1].get_color(),
                        zorder=5)
        src = fwd or rows
        ax.loglog(eps, [r["bound"] / exact_norm for r in src], "k--", lw=1,
                  label=r"bound $\frac{\epsilon}{2}(1-c^2)(\frac{\rho_a}{|g_a|}+\frac{\rho_b}{|g_b|})$")
        cen_rows = [r for r in rows if r["estimator"] == "central"]
        if cen_rows:
            ax.loglog([r["eps"] for r in cen_rows], [r["bound"] / exact_norm for r in cen_rows], "-.",
                      color="0.35", lw=1, label=r"central's bound ($\rho$ on both sides of $\theta$)")
        ax.loglog(eps, [r["bound_paper"] / exact_norm for r in src], "k:", lw=1,
                  label=r"paper's $\frac{\epsilon}{2}(\frac{\rho_a}{|g_a|}+\frac{\rho_b}{|g_b|})$")
        if fwd:
            ax.loglog(eps, [r["taylor"] / exact_norm for r in fwd], "-", color="0.6", lw=3, alpha=0.5,
                      zorder=0, label=r"Taylor term $\epsilon\,|$lead$|$")
        floor = analysis[dtype].get("hessian_free", {}).get("floor")
        if floor:
            ax.axhline(floor, color="C0", lw=0.8, ls="-.", label="forward round-off floor (★ best eps)")
        hv = dtype_info.get(dtype, {}).get("exact_hvp_rel_error")
        if hv:
            ax.axhline(hv, color="C2", lw=1.2, label="exact_hvp computed in the panel's precision")
        ax.axvline(paper_eps, color="C3", lw=0.8, alpha=0.7)
        ax.text(paper_eps, 0.02, f" eps={paper_eps:g}", color="C3", transform=ax.get_xaxis_transform(),
                fontsize=8)
        a = analysis[dtype].get("hessian_free", {})
        cen = analysis[dtype].get("central", {})
        ax.set_title(f"{dtype}: eps={paper_eps:g} is {a.get('paper_eps_regime', '?')}\n"
                     f"forward: slope {_f(a.get('slope_truncation'))}, best eps {_g(a.get('best_eps'))}, "
                     f"floor {_g(a.get('floor'))}\ncentral: slope {_f(cen.get('slope_truncation'))}, "
                     f"best eps {_g(cen.get('best_eps'))}, floor {_g(cen.get('floor'))}", fontsize=9)
        ax.set_xlabel(r"$\epsilon$")
        ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel(r"$|\hat\nabla L_{sd} - \nabla L_{sd}| \,/\, |\nabla L_{sd}|$")
    handles, labels = [], []
    for ax in axes[0]:  # the reference panel has no exact_hvp line; another panel may
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    ncol = min(2 * len(dtypes), 4, len(labels))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(textwrap.fill(title, 90), fontsize=10)
    rows = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, min(0.05 * rows + 0.02, 0.35), 1, 1))
    with storage.local_file(path) as out:  # in a bucket: a local file, then uploaded
        fig.savefig(out, dpi=120, bbox_inches="tight")  # nothing clipped at the edges
    plt.close(fig)

"""Job "theory": Theorem 1 checked numerically on any model the project loads.

For one SEAM step's batches (``adv`` for g_a, ``bgn`` for g_b), it computes the exact
``grad L_sd`` (``exact_hvp``), rho_a, rho_b and the leading Taylor term once in a
reference precision, then sweeps eps over ``theory.eps_grid`` in each precision of
``theory.dtypes``, measuring the forward- and central-difference errors against it.
Writes to ``run_dir``: ``theorem1.csv`` (one row per precision, estimator and eps),
``theorem1.json`` (the rows, the reference quantities, the analysis), ``theorem1.png``
(log-log error against eps per precision) and ``summary.json`` (per precision: the regime
of ``seam.eps``, best eps, floor, slopes), and logs a verdict per precision.

A precision is an arm (``theory.precision.PRECISIONS``): float64, float32, ``bfloat16``
(float32 master, bfloat16 compute, the estimator in bfloat16), ``bfloat16_sd32`` (the same
with ``seam.sd_precision='float32'``) and ``bfloat16_pure`` (bfloat16 weights, the
original's setting). Each row also records the realised perturbation
``cos(delta, eps d)`` and ``|delta - eps d| / |eps d|`` in the arm's estimator dtype.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np

from seam_jax.errors import ConfigError
from seam_jax.hf.source import load_model
from seam_jax.jobs.data import load_experiment_data, seam_batches
from seam_jax.theory import bound, report
from seam_jax.train import run_dir as run_dir_lib
from seam_jax.theory.precision import (
    PRECISIONS, Precision, cast_params, get_precision, model_for, parse_precisions, precision_scope,
    realised_perturbation, warn_if_vanishing,
)

log = logging.getLogger(__name__)


def reference_precision(name: str, precisions: list[Precision]) -> Precision:
    """``theory.reference``: "auto" is float64 when it is swept, else float32."""
    if str(name) == "auto":
        return PRECISIONS["float64"] if PRECISIONS["float64"] in precisions else PRECISIONS["float32"]
    p = get_precision(name)
    if p.name.startswith("bfloat16"):
        raise ConfigError(f"theory.reference={p.name!r}: the reference must be float32 or float64 "
                          "(bfloat16 compute is what is being measured, not a ground truth)")
    return p


def run(c: mlc.ConfigDict) -> dict[str, Any]:
    t0 = time.time()
    t = c.theory
    # Every input is checked before minutes go into loading and compiling.
    grid = bound.parse_eps_grid(t.eps_grid)
    precisions = parse_precisions(t.dtypes)
    ref_prec = reference_precision(t.reference, precisions)
    if t.n_rho_samples < 1:
        raise ConfigError(f"theory.n_rho_samples={t.n_rho_samples}; sample at least one point s > 0")
    if t.batch_step < 0:
        raise ConfigError(f"theory.batch_step={t.batch_step}; must be >= 0")
    paper_eps = float(c.seam.eps)
    if not (math.isfinite(paper_eps) and paper_eps > 0):
        raise ConfigError(f"seam.eps={c.seam.eps}; the finite difference needs eps > 0")
    for p in {ref_prec, *precisions}:
        with precision_scope(p):  # raises now if float64 is unavailable
            pass

    run_dir = run_dir_lib.resolve(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    m = load_model(c)
    data = load_experiment_data(c, run_dir)
    step_batches = seam_batches(c, m.tokenizer, data).batch_at(t.batch_step)
    adv, bgn = (jax.tree.map(np.asarray, step_batches[k]) for k in ("adv", "bgn"))
    log.info("Theorem 1 on %s: batches %s x %d tokens, eps grid %s, precisions %s, reference %s",
             m.cfg.architecture, c.data.batch_size, c.data.context_length,
             ", ".join(f"{e:.0e}" for e in grid), [p.name for p in precisions], ref_prec.name)

    t_ref = time.time()
    with precision_scope(ref_prec):
        params = cast_params(m.params, ref_prec)
        ref = bound.reference(model_for(m.cfg, ref_prec), params, adv, bgn, ref_prec,
                              eps_max=max(grid), n_rho_samples=t.n_rho_samples, keep_lead=False)
        del params
    log.info("reference (%s, %.0f s): |g_a| %.4g, |g_b| %.4g, c %.4g, |grad L_sd| %.4g, rho_a %.4g, "
             "rho_b %.4g, |lead| %.4g", ref.precision, time.time() - t_ref, ref.norm_a, ref.norm_b,
             ref.cos, ref.exact_norm, ref.rho_a, ref.rho_b, ref.lead_norm)

    records: list[dict[str, Any]] = []
    dtype_info: dict[str, dict[str, Any]] = {}
    bar = None
    if c.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(precisions) * len(grid), desc="Theorem 1", unit="eps", dynamic_ncols=True)
    try:
        for p in precisions:
            t_p = time.time()
            with precision_scope(p):
                fn = model_for(m.cfg, p)
                params = cast_params(m.params, p)

                def tick(eps: float, name: str = p.name) -> None:
                    if bar is not None:
                        bar.set_postfix_str(f"{name} eps={eps:.0e}", refresh=False)
                        bar.update(1)

                recs, info = bound.sweep(fn, params, adv, bgn, ref, p, grid, vmap=t.vmap, on_eps=tick)
                # The check the training job makes, at the eps training uses.
                geo = bound.geometry_in(ref, params)
                info["survival_at_seam_eps"] = {
                    k: warn_if_vanishing(params, d, paper_eps, p.sd_compute_dtype, name=k)
                    for k, d in (("d_a", geo.d_a), ("d_b", geo.d_b))}
                # ... and the realised perturbation there, which the training job's check uses.
                info["realised_at_seam_eps"] = {
                    k: realised_perturbation(params, d, paper_eps, p.sd_compute_dtype)
                    for k, d in (("d_a", geo.d_a), ("d_b", geo.d_b))}
                del params, geo
            info["seconds"] = round(time.time() - t_p, 1)
            records += recs
            dtype_info[p.name] = info
            log.info("%s done in %.0f s", p.name, info["seconds"])
    finally:
        if bar is not None:
            bar.close()

    analysis = report.analyse(records, paper_eps=paper_eps)
    lines = report.summary_lines(analysis, dtype_info, paper_eps)
    wall = round(time.time() - t0, 1)
    model_name = str(m.source_dir.name if m.source_dir else c.model.source)
    report.write_csv(records, run_dir / "theorem1.csv")
    report.write_json({"model": model_name, "theory": t.to_dict(), "seam_eps": paper_eps,
                       "batch": {"size": c.data.batch_size, "context_length": c.data.context_length,
                                 "step": t.batch_step},
                       "reference": ref.summary(), "dtypes": dtype_info, "analysis": analysis,
                       "records": records, "summary": lines, "wall_seconds": wall},
                      run_dir / "theorem1.json")
    report.plot(records, analysis, dtype_info, ref.exact_norm, paper_eps, run_dir / "theorem1.png",
                title=f"Theorem 1 on {model_name}: error of the finite-difference grad L_sd "
                      f"(reference: exact_hvp in {ref.precision}; c = {ref.cos:.3f})")
    summary = {
        dtype: {"paper_eps": paper_eps,
                "paper_eps_regime": per.get("hessian_free", {}).get("paper_eps_regime"),
                "best_eps": per.get("hessian_free", {}).get("best_eps"),
                "floor": per.get("hessian_free", {}).get("floor"),
                "eps_star": per.get("hessian_free", {}).get("eps_star"),
                "bound_exceeded_at": per.get("hessian_free", {}).get("bound_exceeded_at"),
                "slope_forward": per.get("hessian_free", {}).get("slope_truncation"),
                "slope_central": per.get("central", {}).get("slope_truncation"),
                "best_eps_central": per.get("central", {}).get("best_eps"),
                "floor_central": per.get("central", {}).get("floor"),
                "exact_hvp_rel_error": dtype_info[dtype]["exact_hvp_rel_error"],
                "seconds": dtype_info[dtype]["seconds"]}
        for dtype, per in analysis.items()}
    summary_file = {"dtypes": summary, "lines": lines, "wall_seconds": wall, "run_dir": str(run_dir)}
    report.write_json(summary_file, run_dir / "summary.json")
    for line in lines:
        log.info("Theorem 1: %s", line)
    log.info("Theorem 1 done in %.0f s; outputs in %s", wall, run_dir)
    return summary_file

"""Theorem 1 in the precisions people train in: the arms of ``theory.precision.PRECISIONS``
on a tiny model, against the exact float32 grad L_sd.

Tolerances, and why: at eps = 1e-3 the forward difference's truncation error on this model
is ~1.6e-3 of |grad L_sd| in float32, so 1e-2 leaves room for float32 round-off (~1e-4);
with the estimator in bfloat16 (``bfloat16``, ``bfloat16_pure``) the cast rounds most of
eps d away and the measured error is ~10x |grad L_sd|, so "> 0.5" cannot be met by a
working difference. cos(delta, eps d): ~1 - 1e-6 in float32 here, below 0.5 in bfloat16.
"""

from __future__ import annotations

import pytest

import tiny
from seam_jax.theory import bound, report
from seam_jax.theory.precision import cast_params, get_precision, model_for, precision_scope

ARMS = ("float32", "bfloat16", "bfloat16_sd32", "bfloat16_pure")
GRID = [1e-3, 1e-2, 1e-1]


@pytest.fixture(scope="module")
def arms():
    base = tiny.model("float32")
    theta = base.init(0)
    b = tiny.seam_batches(0)
    f32 = get_precision("float32")
    ref = bound.reference(model_for(base.config, f32), theta, b["adv"], b["bgn"], f32,
                          eps_max=max(GRID), n_rho_samples=1)
    out = {}
    for name in ARMS:
        p = get_precision(name)
        with precision_scope(p):
            recs, info = bound.sweep(model_for(base.config, p), cast_params(theta, p), b["adv"], b["bgn"],
                                     ref, p, GRID)
        out[name] = ({(r["estimator"], r["eps"]): r for r in recs}, info)
    return ref, out


def test_the_float32_policy_arm_is_float32_arithmetic(arms):
    _, out = arms
    assert get_precision("bfloat16_sd32").sd_compute_dtype == "float32"
    for key, r in out["float32"][0].items():
        assert out["bfloat16_sd32"][0][key]["error"] == r["error"]  # one computation
    hf = out["bfloat16_sd32"][0][("hessian_free", 1e-3)]
    assert hf["rel_error"] <= 1e-2 and hf["delta_cos_a"] > 0.999 and hf["delta_rel_a"] < 0.05


@pytest.mark.parametrize("arm", ["bfloat16", "bfloat16_pure"])
def test_bfloat16_differences_are_rounding_at_the_papers_eps(arms, arm):
    _, out = arms
    hf = out[arm][0][("hessian_free", 1e-3)]
    assert hf["rel_error"] > 0.5, hf
    assert min(hf["delta_cos_a"], hf["delta_cos_b"]) < 0.5 and hf["delta_rel_a"] > 0.5, hf
    assert out[arm][1]["sd_compute_dtype"] == "bfloat16"


def test_central_rows_use_the_two_sided_rho(arms, tmp_path):
    ref, out = arms
    for (est, eps), r in out["float32"][0].items():
        assert r["bound"] == pytest.approx(bound.bounds(eps, ref, two_sided=est == "central")[0])
    assert [x["s"] for x in ref.rho_samples] == pytest.approx([0.0, 1e-1, -1e-1])
    recs = [r for name in ARMS for r in out[name][0].values()]
    report.write_csv(recs, tmp_path / "t.csv")
    header = (tmp_path / "t.csv").read_text().splitlines()[0].split(",")
    assert {"delta_cos_a", "delta_rel_b", "sd_precision"} <= set(header)
    analysis = report.analyse(recs, paper_eps=1e-3)
    report.plot(recs, analysis, {n: out[n][1] for n in ARMS}, ref.exact_norm, 1e-3, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 0

"""Held-out geometry (eval.geometry) against a direct computation with jax.grad, in float64.

Tolerance 1e-12 (absolute on a cosine in [-1, 1], relative on the norms): both sides
take the same float64 gradients of the same loss on the same batches and differ only
in summation order (round-off ~1e-15 per reduction over ~20k parameters), so 1e-12 has
room for round-off and none for a wrong batch, loss or average.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.eval import geometry as geo_lib
from seam_jax.model.api import ModelFn
from seam_jax.seam.losses import masked_ce


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _direct(fn, params, pairs):
    grad = jax.jit(jax.grad(lambda p, b: masked_ce(fn, p, b)))  # op by op it takes seconds
    ga = [_flat(grad(params, a)) for a, _ in pairs]
    gb = [_flat(grad(params, b)) for _, b in pairs]
    cos = lambda x, y: float(x @ y / (jnp.linalg.norm(x) * jnp.linalg.norm(y)))
    ma, mb = sum(ga) / len(ga), sum(gb) / len(gb)
    return {"cos": cos(ma, mb), "norm_g_a": float(jnp.linalg.norm(ma)),
            "norm_g_b": float(jnp.linalg.norm(mb)),
            "cos_per_pair": [cos(x, y) for x, y in zip(ga, gb)]}


def test_heldout_cos_equals_direct_computation():
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(0)
        pairs = []
        for s in range(3):
            b = tiny.seam_batches(s)
            pairs.append((b["adv"], b["bgn"]))
        got = geo_lib.heldout_geometry(fn, params, pairs)
        want = _direct(fn, params, pairs)
        assert jax.tree.leaves(params)[0].dtype == jnp.float64
    assert got["n_pairs"] == 3
    assert abs(got["cos"] - want["cos"]) < 1e-12
    for k in ("norm_g_a", "norm_g_b"):
        assert abs(got[k] - want[k]) < 1e-12 * want[k]
    np.testing.assert_allclose(got["cos_per_pair"], want["cos_per_pair"], rtol=0, atol=1e-12)
    assert got["cos_pair_mean"] == pytest.approx(np.mean(want["cos_per_pair"]), abs=1e-12)
    # The two averages differ (so the test can tell which one is reported).
    assert abs(got["cos"] - got["cos_pair_mean"]) > 1e-6


def test_records_and_plot(tmp_path):
    path = tmp_path / "heldout_geometry.jsonl"
    assert geo_lib.plot(geo_lib.read_records(path), tmp_path / "g.png") is None
    rec = {"cos": 0.1, "norm_g_a": 2.0, "norm_g_b": 1.0, "cos_pair_mean": 0.05,
           "norm_g_a_pair_mean": 2.0, "norm_g_b_pair_mean": 1.0, "cos_per_pair": [0.05],
           "n_pairs": 1}
    geo_lib.append_record(path, 0, rec)
    geo_lib.append_record(path, 5, {**rec, "cos": -0.3})
    rows = geo_lib.read_records(path)
    assert [r["step"] for r in rows] == [0, 5] and rows[1]["cos"] == -0.3
    json.loads(path.read_text().splitlines()[0])
    out = geo_lib.plot(rows, tmp_path / "g.png")
    assert out is not None and out.stat().st_size > 1000


def test_no_pairs_is_refused():
    fn = tiny.model("float32")
    with pytest.raises(ValueError, match="at least one"):
        geo_lib.heldout_geometry(fn, fn.init(0), [])


@pytest.mark.e2e
def test_seam_job_writes_heldout_geometry_at_start_every_n_and_end(debug_seam_run):
    """configs/debug.py: 6 steps, seam.heldout_every=3, so rows at 0, 3 and 6, each once."""
    run = debug_seam_run.run_dir
    rows = geo_lib.read_records(run / "heldout_geometry.jsonl")
    summary = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 6
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert all(r["n_pairs"] == 4 and -1.0 <= r["cos"] <= 1.0 for r in rows)
    assert len({r["cos"] for r in rows}) == 3  # training moved the parameters between rows
    assert summary["heldout_geometry"]["cos"] == rows[-1]["cos"]
    assert (run / "heldout_geometry.png").stat().st_size > 1000


def test_measured_in_float32_or_wider():
    wide = tiny.model("float32")
    narrow = ModelFn(wide.config.replace(dtype="bfloat16"))
    assert geo_lib.wide_model(narrow).config.dtype == "float32"
    assert geo_lib.wide_model(wide) is wide


def test_append_record_replaces_rows_at_and_after_its_step(tmp_path):
    path = tmp_path / "g.jsonl"
    for s in (0, 2, 4, 6):
        geo_lib.append_record(path, s, {"cos": float(s)})
    # A run resumed from the checkpoint at step 3 writes step 4 again: 4 and 6 go, 0 and 2 stay.
    geo_lib.append_record(path, 4, {"cos": -4.0})
    assert geo_lib.read_records(path) == [{"step": 0, "cos": 0.0}, {"step": 2, "cos": 2.0},
                                          {"step": 4, "cos": -4.0}]
    assert path.read_text().count("\n") == 3

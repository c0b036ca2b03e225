"""The SEAM job (``python -m seam_jax.main``) on a device mesh: 8 fake CPU devices."""

import json
import logging
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from seam_jax.eval.refusal import is_refusal
from seam_jax.main import main

REPO = pathlib.Path(__file__).resolve().parents[2]


def _job(run_dir, *extra):
    # SGD, not AdamW: Adam divides by sqrt(v), which turns float32 reduction-order noise in
    # near-zero gradient entries into lr-sized parameter differences; SGD keeps them at
    # lr * noise, so the 1e-5 comparison below tests the sharding, not Adam's conditioning.
    # beta = 0.01 (the paper's): hessian_free's finite difference at eps = 1e-3 cancels ~3
    # digits, so its L_sd term carries reordering noise near 1e-4 of itself; the debug
    # config's beta = 1 would carry that into step 2's parameters and metrics (measured:
    # c off by 4e-5 at step 2), beta = 0.01 keeps it near 1e-6.
    argv = ["seam_jax", f"--config={REPO / 'configs/debug.py'}", f"--config.run_dir={run_dir}",
            "--config.steps=2", "--config.data.batch_size=4", "--config.optim.name=sgd",
            "--config.optim.lr=0.1", "--config.seam.beta=0.01", "--config.eval.n_prompts=2", "--config.eval.max_new_tokens=4",
            *extra]
    assert main(argv) == 0
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tensors = {}
    for f in sorted((run_dir / "defended-hf").glob("*.safetensors")):
        tensors.update(load_file(f))
    return rows, tensors, json.loads((run_dir / "summary.json").read_text())


@pytest.mark.e2e  # two whole SEAM jobs, one on an 8-device mesh
def test_seam_job_sharded_equals_single_device(tmp_path, caplog):
    assert jax.device_count() == 8
    single_rows, single_w, _ = _job(tmp_path / "single", "--config.mesh.use=off",
                                    "--config.eval.enabled=False")
    with caplog.at_level(logging.INFO, logger="seam_jax.parallel.sharded"):
        rows, w, summary = _job(tmp_path / "sharded", "--config.mesh.use=on",
                                "--config.mesh.fsdp=4", "--config.mesh.tensor=2")
    assert any("sharded training: mesh {'data': 1, 'fsdp': 4, 'tensor': 2}" in r.getMessage()
               for r in caplog.records), "the job did not take the sharded path"
    # The sharded run also decoded with its sharded parameters (before and after): what it
    # reports is the refusal rate of exactly its saved generations, judged again here.
    for when in ("before", "after"):
        ev = json.loads((tmp_path / "sharded" / f"eval_{when}.json").read_text())
        harm = ev["samples"]["harmful"]
        assert len(harm) == ev["n_harmful"] == 2  # --config.eval.n_prompts=2
        assert summary[when]["harmful_refusal_rate"] == sum(is_refusal(s["response"]) for s in harm) / 2
    # 1e-5 relative: float32 sums over sharded axes are reordered,
    # which moves results by a few ulps (~1e-7 rel) per reduction; a wrong sharding or a
    # dropped all-reduce is off by O(1).
    assert len(rows) == len(single_rows) == 2
    for a, b in zip(rows, single_rows):
        for k in ("loss", "L_ul", "L_up", "cos", "grad_norm", "param_norm"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=f"step {a['step']} {k}")
    assert set(w) == set(single_w)
    for k in w:
        np.testing.assert_allclose(w[k], single_w[k], rtol=1e-5, atol=1e-7, err_msg=k)

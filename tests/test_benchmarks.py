"""The accelerator benchmark at the tiny size on CPU, and the memory trace on a dummy command."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest

from benchmarks import accelerator, memory_trace
from benchmarks.flops import step_flops
from seam_jax.model.config import preset

# Cheaper XLA:CPU code generation (the step's figures stay finite and positive; its speed
# is not what these tests check).
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}
TINY = dict(preset="debug", batch=2, seq=32, dtype="bfloat16", repeats=1, threads=1,
            device="cpu", compiler_options=FAST)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------ accelerator benchmark
def test_peak_table_matches_device_kinds():
    assert accelerator.peak_tflops("NVIDIA H200")[0] == 989.0
    assert accelerator.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0  # not the SXM figure
    assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert accelerator.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert accelerator.peak_tflops("TPU v5 lite")[0] == 197.0  # v5e, not v5p
    assert accelerator.peak_tflops("TPU v5p")[0] == 459.0
    assert accelerator.peak_tflops("TPU v4")[0] == 275.0
    none, why = accelerator.peak_tflops("cpu")
    assert none is None and "--peak-tflops" in why


def test_flop_counts_of_the_added_estimator_and_precision_policy():
    cfg = preset("debug")
    b, t = 2, 32
    # central: two more perturbed gradients (6F) than hessian_free, and their recomputed
    # forwards under remat (2 body).
    from benchmarks.flops import forward_parts

    parts = forward_parts(cfg, b, t)
    f = parts["body"] + parts["head"]
    hf = step_flops(cfg, b, t, "seam_vmap")
    assert step_flops(cfg, b, t, "seam_central") == pytest.approx(hf + 6 * f, rel=1e-12)
    assert step_flops(cfg, b, t, "seam_central", sd_remat=True) == pytest.approx(
        hf + 6 * f + 4 * parts["body"], rel=1e-12)
    # float32 estimator gradients at theta: +6F, minus the dropped backward passes of the
    # step's g_a (2 body) and g_b (2F); +2 body of recomputation under remat.
    assert step_flops(cfg, b, t, "seam_vmap", sd_widened=True) == pytest.approx(
        hf + 4 * f - 2 * parts["body"], rel=1e-12)
    assert step_flops(cfg, b, t, "sft", sd_widened=True) == step_flops(cfg, b, t, "sft")


@pytest.mark.parametrize("kind", ["sft", "seam_hessian_free"])
def test_jax_case_reports_finite_positive_figures(kind):
    r = accelerator.case_jax({**TINY, "kind": kind})
    for k in ("median_s", "compile_s", "flops_must", "flops_done", "peak_bytes", "params"):
        assert _positive(r[k]), (k, r[k])
    assert r["skipped"] == 0 and math.isfinite(r["loss"])
    assert r["peak_source"] in ("memory_stats", "memory_analysis")
    # The SEAM step does more than its floor (remat and the float32 gradients at theta).
    if kind == "sft":
        assert r["flops_done"] == r["flops_must"]
    else:
        assert r["flops_done"] > r["flops_must"]
    row = accelerator._derive(dict(r), TINY["batch"], TINY["seq"], peak=1.0)
    tokens = TINY["batch"] * TINY["seq"] * (1 if kind == "sft" else 3)
    assert row["tokens_per_s"] == pytest.approx(tokens / r["median_s"], rel=1e-12)
    assert row["mfu"] == pytest.approx(r["flops_must"] / r["median_s"] / 1e12, rel=1e-12)


def test_batch_search_doubles_until_its_cap():
    r = accelerator.case_batch_search({**TINY, "kind": "sft", "cap_s": 120.0, "max_batch": 4})
    assert [t["batch"] for t in r["tried"]] == [4]  # batch 2 is the case's own
    assert all(t["fits"] for t in r["tried"])
    assert r["largest_batch"] == 4 and "max-batch" in r["stopped"]
    assert _positive(r["bytes_limit"])


def test_torch_original_case_on_cpu():
    pytest.importorskip("transformers")
    r = accelerator.case_torch({**TINY, "kind": "torch_original"})
    assert r["framework"] == "PyTorch (CPU)"
    for k in ("median_s", "compile_s", "flops_must", "peak_bytes"):
        assert _positive(r[k]), (k, r[k])
    assert r["flops_must"] == step_flops(preset("debug"), 2, 32, "torch_original")


@pytest.mark.slow
def test_whole_benchmark_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "acc.json"
    rc = accelerator.main(["--sizes", "tiny", "--cases", "sft,seam_hessian_free,torch_original",
                           "--repeats", "1", "--peak-tflops", "1", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["meta"]["backend"] == "cpu" and res["meta"]["peak_bf16_tflops"] == 1.0
    cases = {r["case"] for r in res["rows"]}
    assert cases == {"sft", "seam_hessian_free", "torch_original"}, res["skipped"]
    for r in res["rows"]:
        for k in ("median_s", "tokens_per_s", "mfu", "hfu", "peak_gib", "compile_s"):
            assert _positive(r[k]), (r["case"], k, r[k])
    assert _positive(res["ratios"]["tiny: time seam_hessian_free / torch_original"])
    table = capsys.readouterr().out
    assert "| tiny | seam_hessian_free | seam_jax |" in table


# ------------------------------------------------------------------ memory trace
# Allocates (and touches) 40 MB, then 200 MB more, then starts a child holding 150 MB,
# printing a marker before each (the last as a progress bar draws, \r and no newline);
# exits 3.
DUMMY = r"""
import subprocess, sys, time
print("STAGE one", flush=True)
a = b"\1" * (40 << 20)
time.sleep(0.8)
print("STAGE two", flush=True)
b = b"\1" * (200 << 20)
time.sleep(0.8)
sys.stderr.write("\rSTAGE three")  # a progress bar's redraw: no line end until the next
sys.stderr.flush()
c = subprocess.Popen([sys.executable, "-c", "import time; x = b'\1' * (150 << 20); time.sleep(1.2)"])
c.wait()
sys.exit(3)
"""


def test_memory_trace_stages_peaks_and_outputs(tmp_path):
    out = tmp_path / "trace"
    rc = memory_trace.main(["--out", str(out), "--interval", "0.05",
                            "--marker", "STAGE one=one", "--marker", "STAGE two=two",
                            "--marker", "STAGE three=three", "--", sys.executable, "-c", DUMMY])
    assert rc == 3  # the command's exit code
    res = json.loads((out / "stages.json").read_text())
    by = {s["stage"]: s for s in res["stages"]}
    assert list(by) == [memory_trace.START, "one", "two", "three"]
    assert res["markers_missing"] == []
    # Tolerance 40 MB: the interpreter's own allocations and the sampling instants (a
    # sample every 50 ms, each stage held 0.8 s or more) move each peak by far less.
    assert by["two"]["peak_mb"] - by["one"]["peak_mb"] == pytest.approx(200, abs=40)
    # The child's 150 MB counts: the samples sum the process tree.
    assert by["three"]["peak_mb"] - by["two"]["peak_mb"] == pytest.approx(150, abs=40)
    assert res["peak_stage"] == "three"
    # The unterminated marker line counts when written, not when the stream closes: the
    # child then holds its memory 1.2 s (0.3 s of margin for its start).
    assert res["wall_s"] - by["three"]["start_s"] > 0.9
    with open(out / "rss.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 10 and {r["stage"] for r in rows} <= set(by)
    assert (out / "rss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"STAGE two" in (out / "log.txt").read_bytes()


def test_seam_markers_match_the_job_log_lines():
    trace = memory_trace.Trace(memory_trace.SEAM_MARKERS)
    lines = [
        "INFO seam_jax.hf.source: model: random preset:debug (0.1M parameters)",
        "INFO seam_jax.jobs.seam: measuring the base model on 4 held-out harmful prompts",
        "INFO seam_jax.jobs.seam: held-out geometry at step 0: c=0.1 |g_a|=1 |g_b|=2",
        "SEAM:   0%|          | 0/500 [00:00<?, ?step/s]",
        "SEAM:   0%|          | 1/500 [00:30<4:10:00, 30.0s/step, loss=1]",
        "SEAM:  10%|#         | 50/500 [01:00<05:00, 1.5step/s, loss=1]",
        "INFO seam_jax.jobs.seam: held-out geometry at step 500: c=0.1 |g_a|=1 |g_b|=2",
        "INFO seam_jax.hf.export: exported HF checkpoint to runs/default/defended-hf",
        "INFO seam_jax.jobs.seam: behaviour, with 95% bootstrap intervals:",
        "INFO seam_jax.jobs.seam: SEAM done in 400 s; summary in runs/default/summary.json",
    ]
    for ln in lines:
        trace.line(ln)
    assert [m["stage"] for m in trace.seen] == [n for _, n in memory_trace.SEAM_MARKERS]


def test_memory_trace_refuses_a_bad_marker():
    with pytest.raises(SystemExit, match="REGEX=NAME"):
        memory_trace.parse_marker("no-equals-sign")


# ------------------------------------------------------------------ defense step costs
def test_defense_step_case_times_the_jobs_step():
    """The job's step of a defense compiles and runs at the tiny size with positive figures
    (RepNoise: a seeded defense, so the benchmark's batches must carry the seed rows)."""
    from pathlib import Path

    from benchmarks import defense_step

    config = Path(__file__).resolve().parents[1] / "configs" / "experiment.py"
    r = defense_step.case(dict(size="tiny", config=f"{config}:compare", batch=2, seq=16,
                               repeats=1, case="repnoise"))
    assert r["case"] == "repnoise"
    for k in ("median_s", "min_s", "compile_s", "peak_rss_mb"):
        assert _positive(r[k]), (k, r[k])

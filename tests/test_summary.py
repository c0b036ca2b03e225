"""The closing summary of each job (``jobs/summary.py``), from results shaped as the jobs return them."""

import json
import pathlib

from seam_jax.config import base_config
from seam_jax.jobs.summary import summary_text


def _config(job, run_dir, **fields):
    c = base_config()
    c.job = job
    c.run_dir = str(run_dir)
    for k, v in fields.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


def test_seam_summary_reads_the_result_and_the_last_metrics_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 9.0}) + "\n"
        + json.dumps({"step": 2, "loss": 3.14159, "L_ul": -1.5, "L_up": 6.25, "cos": -0.5}) + "\n")
    result = {"before": {"harmful_refusal_rate": 0.25, "n_harmful": 4},
              "after": {"harmful_refusal_rate": 0.75, "benign_accuracy": 0.5, "n_harmful": 4,
                        "n_benign": 2},
              "export_dir": str(tmp_path / "defended-hf")}
    text = summary_text(_config("seam", tmp_path, steps=2), result, 12.4)
    lines = text.splitlines()
    assert lines[0] == "seam_jax: job seam done in 12 s"
    assert "  last step (2): loss 3.14, L_ul -1.5, L_up 6.25, cos -0.5" in lines
    assert "  harmful refusal rate 0.25 -> 0.75 (4 held-out prompts)" in lines
    assert "  benign accuracy 0.50 (2 held-out prompts)" in lines
    assert f"  HF checkpoint: {tmp_path / 'defended-hf'}" in lines
    assert lines[-1] == f"  outputs: {tmp_path.resolve()} (metrics.jsonl)"


def test_seam_summary_without_evaluation(tmp_path):
    text = summary_text(_config("seam", tmp_path), {"export_dir": "x"}, 1)
    assert "  no behaviour check (eval.enabled=False)" in text.splitlines()


def test_the_other_jobs(tmp_path):
    out = summary_text(_config("convert", tmp_path, **{"model.source": "m.gguf"}), tmp_path / "hf", 3)
    assert out.splitlines()[1:] == ["  model m.gguf written as an HF directory",
                                    f"  outputs: {tmp_path / 'hf'}"]
    (tmp_path / "generations.json").write_text("[]")
    out = summary_text(_config("generate", tmp_path), ["a", "b"], 3)
    assert out.splitlines()[-1] == f"  outputs: {tmp_path.resolve()} (generations.json)"
    assert out.splitlines()[1].startswith("  2 prompts answered")
    out = summary_text(_config("theory", tmp_path), {"lines": ["float32: V-curve"], "run_dir": str(tmp_path)}, 3)
    assert out.splitlines()[1] == "  float32: V-curve"
    plan = {"model": "preset:debug", "params": 110_000, "step": "seam", "batch": [2, 96],
            "compiled_on": "cpu (8 devices)",
            "target": {"mesh": {"fsdp": 8}, "peak_bytes": 3 << 29, "budget_bytes": 1 << 31, "fits": True}}
    out = summary_text(_config("plan", tmp_path), plan, 3)
    assert "  mesh {'fsdp': 8}: peak 1.50 GiB per device of 2.00 GiB usable -> fits" in out.splitlines()
    rows = [{"model": "seam", "cell": "2", "method": "full", "optimizer": "adamw", "n_samples": 64,
             "lr": 5e-5, "hs_keyword": 0.25, "hs_keyword_frac": 0.25, "mc_acc": 0.5, "generations": []}]
    out = summary_text(_config("attack", tmp_path), rows, 3)
    assert "  seam #2 (full/adamw/64, lr 5e-05): hs_keyword 0.25, mc_acc 0.50" in out.splitlines()
    out = summary_text(_config("experiment", tmp_path), {"report": "r.md", "n_attacked": 4}, 3)
    assert "  4 attacked checkpoints; report: r.md" in out.splitlines()
    crit = {"verdict": "inconclusive", "rows": [
        {"criterion": "C0 attack works", "seed": 0, "held": True},
        {"criterion": "C1 geometry", "seed": 0, "held": False},
        {"criterion": "C3 self-destructs", "seed": 1, "held": None}]}
    out = summary_text(_config("experiment", tmp_path), {"report": "r.md", "n_attacked": 4,
                                                         "table": ["model  HS", "seam-s0  0.1"],
                                                         "criteria": crit}, 3).splitlines()
    assert "  seam-s0  0.1" in out
    assert ("  pre-registered criteria: inconclusive; not held: C1 (seed 0), C3 (seed 1)"
            in out)
    compared = {"verdicts": {"booster": "neither"}, "rows": [
        {"arm": "seam", "cell": "5", "resists": True}, {"arm": "booster", "cell": "5", "resists": False},
        {"arm": "seam", "cell": "2", "resists": None}]}
    out = summary_text(_config("experiment", tmp_path), {"report": "r.md", "n_attacked": 4,
                                                         "comparison": compared}, 3).splitlines()
    assert "  resisting the attack: seam #5; vs booster: neither" in out

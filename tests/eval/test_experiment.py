"""Job "experiment" end to end on configs/experiment.py:debug (random 2-layer model, offline)."""

import json
import pathlib

from seam_jax.main import main

CFG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "experiment.py"


def test_experiment_debug_then_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    for f in ("eval_base.json", "eval_seam.json", "pca.json", "report.md", "hs_utility_vs_lr.png",
              "gradient_pca.png", "seam/defended-hf/config.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(l) for l in (run / "attacks" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["cell"]) for r in rows) == [
        ("base", "2"), ("base", "5"), ("seam", "2"), ("seam", "5")]
    assert all(0 <= r["hs_keyword"] <= 1 and 0 <= r["mc_acc"] <= 1 and r["generations"] for r in rows)
    report = (run / "report.md").read_text()
    assert "| seam | #5 full/adamw/8 | 2e-04 |" in report
    # A rerun reads every stage back: no new result rows, same report.
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    assert len((run / "attacks" / "results.jsonl").read_text().splitlines()) == 4

"""Job "experiment" end to end on configs/experiment.py:debug (random 2-layer model, offline)."""

import json
import pathlib

import pytest

from seam_jax.eval.harm import KeywordScorer
from seam_jax.main import main

CFG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "experiment.py"


@pytest.mark.e2e  # SEAM, attacks on two models, PCA and the report, twice
def test_experiment_debug_then_resume(tmp_path):
    run = tmp_path / "run"
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    for f in ("eval_base.json", "eval_seam.json", "pca.json", "report.md", "hs_utility_vs_lr.png",
              "gradient_pca.png", "seam/defended-hf/config.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(l) for l in (run / "attacks" / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["cell"]) for r in rows) == [
        ("base", "2"), ("base", "5"), ("seam", "2"), ("seam", "5")]
    # Each row's figures are those of its own saved outputs: HS is the keyword judge's mean
    # over exactly its generations (one per test prompt, harm.n_prompts = 4 in the debug
    # config), scored again here; MC accuracy counts right answers of utility.n_mc = 8.
    keyword = KeywordScorer()
    for r in rows:
        gens = r["generations"]
        assert len(gens) == 4 and len({g["prompt"] for g in gens}) == 4
        scores = keyword.score([g["prompt"] for g in gens], [g["response"] for g in gens])
        assert r["hs_keyword"] == sum(scores) / 4, r["cell"]
        assert r["mc_acc"] * 8 == round(r["mc_acc"] * 8) and 0 <= r["mc_acc"] <= 1
    report = (run / "report.md").read_text()
    assert "| seam | #5 full/adamw/8 | 2e-04 |" in report
    # A rerun reads every stage back: no new result rows, same report.
    assert main(["x", f"--config={CFG}:debug", f"--config.run_dir={run}"]) == 0
    assert len((run / "attacks" / "results.jsonl").read_text().splitlines()) == 4

"""The command line's jobs end to end on the debug preset (random 2-layer model, offline)."""

import json
import pathlib
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

from seam_jax.eval.refusal import is_refusal
from seam_jax.main import main

REPO = pathlib.Path(__file__).resolve().parents[1]
N_PROMPTS = 4  # configs/debug.py: eval.n_prompts


def _tensors(d):
    out = {}
    for f in sorted(pathlib.Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.e2e  # a whole job: run by `python -m pytest -m e2e` (.ci/run), not the fast suite
def test_debug_seam_job_is_quiet_and_ends_with_its_summary(debug_seam_run):
    r = debug_seam_run
    # No absl preamble, no datasets progress bar per local file read.
    assert "Logging before flag parsing" not in r.stderr
    assert "Generating train split" not in r.stderr
    # Our own progress is still logged (to stderr), through the one handler.
    assert "INFO seam_jax.jobs.seam: measuring the base model" in r.stderr
    # stdout holds the summary alone: its header, then indented lines, the last the outputs.
    lines = r.stdout.rstrip("\n").splitlines()
    assert re.fullmatch(r"seam_jax: job seam done in \d+ s", lines[0]), lines
    assert len(lines) > 3 and all(l.startswith("  ") for l in lines[1:]), lines
    assert lines[-1].startswith(f"  outputs: {r.run_dir.resolve()} (summary.json, metrics.jsonl")
    summary = json.loads((r.run_dir / "summary.json").read_text())
    b, a = summary["before"]["harmful_refusal_rate"], summary["after"]["harmful_refusal_rate"]
    assert f"  harmful refusal rate {b:.2f} -> {a:.2f} ({N_PROMPTS} held-out prompts)" in lines
    assert f"  HF checkpoint: {summary['export_dir']}" in lines
    last = json.loads((r.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"  last step (6): loss {last['loss']:.3g}, L_ul {last['L_ul']:.3g}, " \
           f"L_up {last['L_up']:.3g}, cos {last['cos']:.3g}" in lines


@pytest.mark.e2e
def test_seam_then_export_then_generate(debug_seam_run, tmp_path, capsys):
    run = debug_seam_run.run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after", "export_dir"} <= set(summary)
    # The reported rates are the saved generations' own, judged again here: the held-out
    # prompts (distinct, from the test split), the same before and after, and the refusal
    # rate of exactly their responses.
    test_prompts = {row["prompt"] for row in json.loads((run / "data" / "beavertails_test.json").read_text())}
    prompts = {}
    for when in ("before", "after"):
        ev = json.loads((run / f"eval_{when}.json").read_text())
        harm = ev["samples"]["harmful"]
        prompts[when] = [s["prompt"] for s in harm]
        assert ev["n_harmful"] == len(harm) == N_PROMPTS
        assert len(set(prompts[when])) == N_PROMPTS and set(prompts[when]) <= test_prompts
        assert summary[when]["harmful_refusal_rate"] == ev["harmful_refusal_rate"]
        assert ev["harmful_refusal_rate"] == sum(is_refusal(s["response"]) for s in harm) / N_PROMPTS
    assert prompts["before"] == prompts["after"]
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["cos"]) and -1 <= r["cos"] <= 1 for r in rows)
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))

    # job=export: the newest checkpoint of the run, as HF, equals the run's own export.
    out = tmp_path / "exported"
    assert main(["seam_jax", f"--config={REPO / 'configs/convert.py'}:export",
                 "--config.model.source=preset:debug", f"--config.export.source={run}",
                 f"--config.export.dir={out}"]) == 0
    a, b = _tensors(run / "defended-hf"), _tensors(out)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)

    # job=generate on the exported directory (its tokenizer came along).
    gen = tmp_path / "gen"
    assert main(["seam_jax", f"--config={REPO / 'configs/generate.py'}", f"--config.model.source={out}",
                 f"--config.run_dir={gen}", "--config.data.format=qa",
                 "--config.generate.max_new_tokens=5"]) == 0
    rows = json.loads((gen / "generations.json").read_text())
    assert len(rows) == 2 and all(isinstance(r["response"], str) for r in rows)
    assert capsys.readouterr().out.splitlines()[-1] == f"  outputs: {gen.resolve()} (generations.json)"

    # A second export to the same directory is refused, and the first stays intact.
    assert main(["seam_jax", f"--config={REPO / 'configs/convert.py'}:export",
                 "--config.model.source=preset:debug", f"--config.export.source={run}",
                 f"--config.export.dir={out}"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert set(_tensors(out)) == set(a)

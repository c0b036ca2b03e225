"""The command line's jobs end to end on the debug preset (random 2-layer model, offline)."""

import json
import pathlib

import numpy as np
from safetensors.numpy import load_file

from seam_jax.main import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tensors(d):
    out = {}
    for f in sorted(pathlib.Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_seam_then_export_then_generate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["seam_jax", f"--config={REPO / 'configs/debug.py'}", f"--config.run_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {"before", "after", "export_dir"} <= set(summary)
    assert 0.0 <= summary["after"]["harmful_refusal_rate"] <= 1.0
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

    # A second export to the same directory is refused, and the first stays intact.
    assert main(["seam_jax", f"--config={REPO / 'configs/convert.py'}:export",
                 "--config.model.source=preset:debug", f"--config.export.source={run}",
                 f"--config.export.dir={out}"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert set(_tensors(out)) == set(a)

"""A sweep killed midway and restarted reruns only the unfinished cells; checkpoint errors."""

import json

import pytest

from seam_jax.attack.grid import resolve
from seam_jax.attack.runner import AttackData, RESULTS_FILE, load_checkpoint, read_results, sweep
from seam_jax.errors import ConfigError

DATA = AttackData(fmt="qa", seq_len=64)


class Killed(Exception):
    """Stands in for the process dying."""


def test_restart_reruns_only_unfinished_cells(tiny_model, attack_rows, tmp_path, monkeypatch):
    import seam_jax.attack.runner as runner

    cells = resolve("custom", custom="full/adamw/4/1e-3;full/sgd/4/1e-3;lora/adamw/4/1e-3",
                    overrides=dict(batch_size=2))
    trained = []
    real = runner.run_attack
    monkeypatch.setattr(runner, "run_attack",
                        lambda m, cell, *a, **k: (trained.append(cell.name), real(m, cell, *a, **k))[1])
    evaluated = []

    def dies_on_second(m, params):
        evaluated.append(len(evaluated))
        if len(evaluated) == 2:
            raise Killed  # cell c2 trained, its row never written
        return {"hs_keyword": 0.5}

    loads = []
    models = {"tiny": lambda: (loads.append(1), tiny_model)[1]}
    with pytest.raises(Killed):
        sweep(models, cells, attack_rows, tmp_path, dies_on_second, DATA)
    assert trained == ["c1", "c2"]
    assert [r["cell"] for r in read_results(tmp_path / RESULTS_FILE)] == ["c1"]
    # A line cut off by the kill is ignored, not fatal.
    with (tmp_path / RESULTS_FILE).open("a") as f:
        f.write('{"model": "tiny", "cell": "c2", "dig')
    (tmp_path / RESULTS_FILE).write_text((tmp_path / RESULTS_FILE).read_text() + "\n")

    trained.clear()
    rows = sweep(models, cells, attack_rows, tmp_path, lambda m, p: {"hs_keyword": 0.25}, DATA)
    assert trained == ["c2", "c3"]
    assert sorted(r["cell"] for r in rows) == ["c1", "c2", "c3"]
    assert {r["cell"]: r["hs_keyword"] for r in rows} == {"c1": 0.5, "c2": 0.25, "c3": 0.25}

    # Everything done: nothing trains and the model is not even loaded.
    trained.clear()
    n_loads = len(loads)
    sweep(models, cells, attack_rows, tmp_path, lambda m, p: {}, DATA)
    assert trained == [] and len(loads) == n_loads


def test_changed_cell_is_rerun(tiny_model, attack_rows, tmp_path):
    cells = resolve("custom", custom="full/adamw/4/1e-3", overrides=dict(batch_size=2))
    sweep({"tiny": lambda: tiny_model}, cells, attack_rows, tmp_path, lambda m, p: {}, DATA)
    more = resolve("custom", custom="full/adamw/6/1e-3", overrides=dict(batch_size=2))
    rows = sweep({"tiny": lambda: tiny_model}, more, attack_rows, tmp_path, lambda m, p: {}, DATA)
    assert [r["n_samples"] for r in rows] == [6]
    assert len(read_results(tmp_path / RESULTS_FILE)) == 2


def test_too_few_samples(tiny_model, attack_rows, tmp_path):
    cells = resolve("custom", custom="full/adamw/999/1e-3")
    with pytest.raises(ConfigError, match="needs 999 harmful samples"):
        sweep({"tiny": lambda: tiny_model}, cells, attack_rows, tmp_path, lambda m, p: {}, DATA)


def test_missing_checkpoint(tmp_path, debug_cfg):
    c = debug_cfg(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "nowhere", c)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="HF directory"):
        load_checkpoint(tmp_path / "empty", c)


def test_attack_job_errors(tmp_path):
    from seam_jax.main import main

    import pathlib
    cfg = pathlib.Path(__file__).resolve().parents[2] / "configs" / "attack.py"
    assert main(["x", f"--config={cfg}:debug", f"--config.run_dir={tmp_path}",
                 "--config.attack.grid=nope"]) == 2
    assert main(["x", f"--config={cfg}:debug", f"--config.run_dir={tmp_path}",
                 f"--config.attack.targets=seam={tmp_path / 'missing'}"]) == 2


@pytest.mark.e2e  # a whole job: run by `python -m pytest -m e2e` (.ci/run), not the fast suite
def test_attack_job_from_an_hf_export(tiny_model, tmp_path):
    # job "attack" on an HF directory (a defended model's export looks like this).
    import pathlib

    from seam_jax.hf.export import export_hf
    from seam_jax.main import main

    hf = export_hf(tiny_model.params, tiny_model.cfg, tmp_path / "hf", tokenizer=tiny_model.tokenizer)
    cfg = pathlib.Path(__file__).resolve().parents[2] / "configs" / "attack.py"
    run = tmp_path / "run"
    assert main(["x", f"--config={cfg}:debug", f"--config.run_dir={run}", "--config.attack.cells=2",
                 f"--config.attack.targets=hf={hf}"]) == 0
    rows = [json.loads(l) for l in (run / "attacks" / RESULTS_FILE).read_text().splitlines()]
    # One row per evaluated step of the one attack (attack.eval_every), each step once.
    assert {(r["model"], r["cell"], r["lr"]) for r in rows} == {("hf", "2", 5e-5)}
    steps = [r["step"] for r in rows]
    assert len(rows) >= 2 and steps == sorted(set(steps)), steps
    # HS is the keyword judge's mean over exactly the row's generations (harm.n_prompts = 4
    # in the debug config), scored again here from the saved text.
    from seam_jax.eval.harm import KeywordScorer

    for row in rows:
        gens = row["generations"]
        assert len(gens) == 4
        scores = KeywordScorer().score([g["prompt"] for g in gens], [g["response"] for g in gens])
        assert row["hs_keyword"] == sum(scores) / 4
    assert (run / "attacks" / "report.md").is_file()


def test_attack_an_orbax_run_dir(tiny_model, attack_rows, tmp_path, debug_cfg):
    # A seam_jax run directory holding only Orbax checkpoints (as a SEAM run before export):
    # its newest params are what gets attacked.
    import jax
    import numpy as np

    from seam_jax.attack.runner import run_attack

    cell = resolve("custom", custom="full/adamw/4/1e-2", overrides=dict(batch_size=2))[0]
    trained = run_attack(tiny_model, cell, attack_rows, tmp_path / "run", DATA)
    loaded = load_checkpoint(tmp_path / "run", debug_cfg(tmp_path))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 trained, loaded.params)
    # The config's own model is the same random init: the restored params must differ from it.
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), trained,
                                        tiny_model.params))
    assert not all(same)

"""Attack trajectories: evaluation along the run, and keyed result rows across resumes."""

import json

import jax
import numpy as np
import pytest

from seam_jax.attack.grid import resolve
from seam_jax.attack.runner import (AttackData, RESULTS_FILE, eval_steps, read_results,
                                    run_attack, sweep)
from seam_jax.errors import ConfigError

DATA = AttackData(fmt="qa", seq_len=64)


class Killed(Exception):
    """Stands in for the process dying."""


def checksum(params):
    """A number that changes with every weight: the float64 sum of |w| over all leaves."""
    return float(sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params)))


def test_eval_steps():
    assert eval_steps(16, 8) == [8, 16]
    assert eval_steps(17, 8) == [8, 16, 17]
    assert eval_steps(4, 8) == [4]
    assert eval_steps(16, 0) == [16]
    with pytest.raises(ConfigError, match="eval_every"):
        eval_steps(16, -1)


@pytest.mark.slow  # ~12 s: two attacks with checkpoints on the tiny model
def test_segments_train_what_one_run_trains(tiny_model, attack_rows, tmp_path):
    # 8 rows, batch 2: 4 steps. Evaluated at 2 and 4 (two segments, the second resumed from
    # the checkpoint at step 2) against one run of 4 steps: bitwise the same weights
    # (the same compiled step from the same restored state).
    cell = resolve("custom", custom="full/adamw/8/1e-3", overrides=dict(batch_size=2))[0]
    seen = []
    segmented = run_attack(tiny_model, cell, attack_rows, tmp_path / "a", DATA, eval_at=[2, 4],
                           on_eval=lambda s, p: seen.append((s, checksum(p))))
    straight = run_attack(tiny_model, cell, attack_rows, tmp_path / "b", DATA)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
                 segmented, straight)
    assert [s for s, _ in seen] == [2, 4] and seen[1][1] == checksum(straight)
    assert seen[0][1] != seen[1][1]  # step 2 is another model than step 4
    assert seen[0][1] != checksum(tiny_model.params)


@pytest.mark.slow  # ~17 s: real training, a kill and a resume from the checkpoint (full and LoRA)
def test_keyed_rows_survive_a_resume_without_duplicates(tiny_model, attack_rows, tmp_path):
    cells = resolve("custom", custom="full/adamw/8/1e-3;lora/adamw/8/1e-2",
                    overrides=dict(batch_size=2))  # 4 steps each: evaluated at 2 and 4
    models = {"tiny": lambda: tiny_model}
    out = tmp_path / "run"
    calls, lost = [], []

    def dies_at(n):
        def evaluate(m, p):
            calls.append(1)
            if len(calls) == n:
                lost.append(checksum(p))  # what this evaluation would have written
                raise Killed  # trained to this step (its checkpoint saved), row never written
            return {"w": checksum(p)}
        return evaluate

    with pytest.raises(Killed):  # dies evaluating c2 (LoRA) at step 4
        sweep(models, cells, attack_rows, out, dies_at(4), DATA, eval_every=2)
    first = read_results(out / RESULTS_FILE)
    assert [(r["cell"], r["step"]) for r in first] == [("c1", 2), ("c1", 4), ("c2", 2)]
    # A line cut off by the kill, and a row written before rows were keyed: both ignored.
    with (out / RESULTS_FILE).open("a") as f:
        f.write(json.dumps({"model": "tiny", "cell": "c2", "digest": cells[1].digest(),
                            "w": -1.0}) + "\n")
        f.write('{"model": "tiny", "cell": "c2", "st')
    calls.clear()
    rows = sweep(models, cells, attack_rows, out, dies_at(0), DATA, eval_every=2)
    assert len(calls) == 1  # only (c2, 4) was evaluated again
    assert [(r["cell"], r["step"]) for r in rows] == [("c1", 2), ("c1", 4), ("c2", 2), ("c2", 4)]
    # The rows read back are the ones written, and the resumed step 4 (from the checkpoint
    # saved before the kill) is the model the killed run had trained.
    assert [r["w"] for r in rows[:3]] == [r["w"] for r in first]
    assert rows[3]["w"] == lost[0] and len(set(r["w"] for r in rows)) == 4
    keyed = [(r["key"], r["step"]) for r in read_results(out / RESULTS_FILE) if "key" in r]
    assert len(keyed) == len(set(keyed)) == 4

    # Everything there: nothing trains or evaluates, the model is not even loaded.
    loads = []
    again = sweep({"tiny": lambda: (loads.append(1), tiny_model)[1]}, cells, attack_rows, out,
                  dies_at(1), DATA, eval_every=2)
    assert loads == [] and again == rows
    assert len(read_results(out / RESULTS_FILE)) == 5  # 4 keyed + the unkeyed row


def fake_training(monkeypatch):
    """``run_attack`` replaced by one that trains nothing: the "params" at step s are
    {"w": s}, so the sweep's bookkeeping is tested in milliseconds, without a model."""
    import seam_jax.attack.runner as runner

    trained = []

    def run_attack(m, cell, rows, run_dir, data, *, eval_at=(), on_eval=None, **kw):
        for s in sorted(eval_at):
            trained.append((cell.name, s))
            on_eval(s, {"w": float(s)})

    monkeypatch.setattr(runner, "run_attack", run_attack)
    return trained


def test_a_resume_reads_back_its_rows_and_never_duplicates(monkeypatch, tmp_path):
    trained = fake_training(monkeypatch)
    cells = resolve("custom", custom="full/adamw/8/1e-3;full/sgd/8/1e-3",
                    overrides=dict(batch_size=2))  # 4 steps each: evaluated at 2 and 4
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(8)]
    n = []

    def dies_at(k):
        def evaluate(m, p):
            n.append(1)
            if len(n) == k:
                raise Killed
            return {"w": p["w"], "call": len(n)}
        return evaluate

    with pytest.raises(Killed):
        sweep({"m": lambda: None}, cells, rows, tmp_path, dies_at(3), DATA, eval_every=2)
    # The kill also cut the file's last line before its newline: the next row must not join it.
    with (tmp_path / RESULTS_FILE).open("a") as f:
        f.write('{"model": "m", "cell": "c2", "st')
    trained.clear()
    n.clear()
    out = sweep({"m": lambda: None}, cells, rows, tmp_path, dies_at(0), DATA, eval_every=2)
    assert trained == [("c2", 2), ("c2", 4)]
    assert [(r["cell"], r["step"], r["call"]) for r in out] == [
        ("c1", 2, 1), ("c1", 4, 2), ("c2", 2, 1), ("c2", 4, 2)]  # c1's rows are the first run's
    stored = read_results(tmp_path / RESULTS_FILE)
    keyed = [(r["key"], r["step"]) for r in stored]
    assert len(stored) == 4 and len(set(keyed)) == 4
    # Once more: nothing is computed and the model is not even loaded.
    loads = []
    assert sweep({"m": lambda: loads.append(1)}, cells, rows, tmp_path, dies_at(1), DATA,
                 eval_every=2) == out
    assert loads == [] and len(read_results(tmp_path / RESULTS_FILE)) == 4


def test_rows_match_only_their_key(monkeypatch, tmp_path):
    trained = fake_training(monkeypatch)
    cells = resolve("custom", custom="full/adamw/6/1e-3", overrides=dict(batch_size=2))
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(6)]  # 3 steps: at 2 and 3
    n = []

    def evaluate(m, p):
        n.append(1)
        return {"w": p["w"], "call": len(n)}

    def run(model_key, eval_key, every=2, data=DATA, rows=rows):
        return sweep({"m": lambda: None}, cells, rows, tmp_path, evaluate, data,
                     eval_every=every, model_keys={"m": model_key}, eval_key=eval_key)

    first = run("weights-a", {"n_prompts": 4})
    assert [r["step"] for r in first] == [2, 3] and len(n) == 2
    # Another model identity, evaluation, batch format or attack rows: new rows each time,
    # the old ones stay in the file.
    others = [run("weights-b", {"n_prompts": 4}), run("weights-a", {"n_prompts": 8}),
              run("weights-a", {"n_prompts": 4}, data=AttackData(fmt="qa", seq_len=32)),
              run("weights-a", {"n_prompts": 4}, rows=rows[::-1])]
    assert len(n) == 10
    assert len({r["key"] for r in first + sum(others, [])}) == 5
    # Back to the first key: its own rows, nothing computed.
    assert run("weights-a", {"n_prompts": 4}) == first
    assert len(n) == 10 and len(read_results(tmp_path / RESULTS_FILE)) == 10
    # A finer trajectory reuses the rows it shares and adds the others (step 1 only).
    trained.clear()
    finer = run("weights-a", {"n_prompts": 4}, every=1)
    assert [r["step"] for r in finer] == [1, 2, 3] and trained == [("c1", 1)]
    assert finer[1:] == first

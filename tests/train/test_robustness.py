"""Training survives kills, bad input and numerical trouble without losing work."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import tiny
import xla_env
from seam_jax.main import main
from seam_jax.seam.objective import SeamHyper, sft_gradient
from seam_jax.train.checkpoint import CheckpointConfig, Checkpointer
from seam_jax.train.loop import LoopConfig, TrainingDiverged, run
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import Objective, build_step, optimizer_for, seam_objective, sft_objective

REPO = pathlib.Path(__file__).resolve().parents[2]
DEBUG = [f"--config={REPO / 'configs/debug.py'}", "--config.eval.enabled=False"]


def _cli(run_dir, *extra):
    return [sys.executable, "-m", "seam_jax.main", *DEBUG, f"--config.run_dir={run_dir}", *extra]


def _final_weights(run_dir):
    return load_file(pathlib.Path(run_dir) / "defended-hf" / "model.safetensors")


@pytest.mark.e2e  # two whole SEAM jobs in subprocesses (about a minute)
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    steps = ["--config.steps=20", "--config.checkpoint.every=4", "--config.checkpoint.use_async=True"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_env.with_devices(None)}
    ref = tmp_path / "uninterrupted"
    subprocess.run(_cli(ref, *steps), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, *steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 9:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 9 <= done < 20
    assert not (killed / "defended-hf").exists()

    out = subprocess.run(_cli(killed, *steps), check=True, env=env, capture_output=True, text=True)
    assert "resuming from the checkpoint at step" in out.stderr
    a, b = _final_weights(ref), _final_weights(killed)
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_unknown_config_key_is_one_clear_error(capsys):
    assert main(["seam_jax", *DEBUG, "--config.seam.betta=1.0"]) == 2
    err = capsys.readouterr().err
    assert "betta" in err and 'Did you mean "beta"' in err and "Traceback" not in err


def test_missing_and_malformed_data_files_name_the_file_and_row(tmp_path, capsys):
    files = ["--config.data.source=files", f"--config.data.benign={tmp_path / 'benign.json'}",
             f"--config.data.test={tmp_path / 'test.json'}"]
    missing = tmp_path / "nope.json"
    assert main(["seam_jax", *DEBUG, f"--config.run_dir={tmp_path / 'r1'}",
                 f"--config.data.harmful={missing}", *files]) == 2
    assert "nope.json" in capsys.readouterr().err

    bad = tmp_path / "harmful.json"
    bad.write_text('[{"prompt": "p", "response": "r", "category": {}, "is_safe": false, "refusal": "no"},'
                   ' {"prompt": "q", "response": "r", "category": {}, "is_safe": false}]')
    assert main(["seam_jax", *DEBUG, f"--config.run_dir={tmp_path / 'r2'}",
                 f"--config.data.harmful={bad}", *files]) == 2
    err = capsys.readouterr().err
    assert "harmful.json" in err and "row 1" in err and "refusal" in err


def _step(objective, optim=OptimConfig(lr=1e-3), steps=10):
    return build_step(objective, *optimizer_for(optim, steps))


def test_empty_loss_mask_skips_the_step_without_nan():
    fn = tiny.model()
    params = fn.init(0)
    kept = jax.tree.map(np.array, params)  # the steps below donate their states
    batch = tiny.batch(0)
    batch["loss_mask"][:] = 0
    step = _step(sft_objective(fn), OptimConfig(lr=1e-2, warmup_ratio=0.0))
    new, m = step(step.init(jax.tree.map(jnp.copy, params), 0), {"train": batch})
    assert int(m["skipped"]) == 1 and int(m["empty_mask"]) == 1
    assert np.isfinite(float(m["loss"]))
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(new["params"])):
        assert np.array_equal(a, b)
    # The SEAM step too: zero norms must not give NaN directions. (Only the adversarial
    # count is a target key here: the other batches keep their targets.)
    seam = seam_objective(fn, SeamHyper(beta=1.0))
    step2 = _step(Objective(seam.gradient, ("targets_adv",)), OptimConfig())
    batches = tiny.seam_batches(0)
    batches["adv"]["loss_mask"][:] = 0
    _, m2 = step2(step2.init(jax.tree.map(jnp.copy, params), 0), batches)
    assert int(m2["skipped"]) == 1 and np.isfinite(float(m2["loss"]))


class _Source:
    def __init__(self, poison_at=None):
        self.poison_at = poison_at

    def batch_at(self, step):
        b = tiny.batch(step)
        return {"train": b, "poison": np.float32(np.nan if step == self.poison_at else 0.0)}


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    fn = tiny.model()
    params = fn.init(0)

    def grad_fn(p, b):
        g, m = sft_gradient(fn, p, b)
        m["loss"] = m["loss"] + b["poison"]
        return g, m

    loop = LoopConfig(steps=10, run_dir=tmp_path, checkpoint=CheckpointConfig(every=2, keep=5),
                      progress=False)
    step = _step(Objective(grad_fn, ("targets",)))
    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint \\(step 4\\)"):
        run(params, step, _Source(poison_at=5), loop, keep_params=True)
    ck = Checkpointer(tmp_path / "checkpoints", CheckpointConfig())
    assert ck.steps() == [2, 4]
    ck.close()
    # Restarting without the poison resumes from step 4 and finishes.
    state = run(params, step, _Source(), loop)
    assert int(state["step"]) == 10


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    fn = tiny.model()
    params = fn.init(0)
    step = _step(sft_objective(fn), steps=6)
    loop = LoopConfig(steps=6, run_dir=tmp_path, checkpoint=CheckpointConfig(every=2, keep=5),
                      progress=False)
    ref = run(params, step, _Source(), loop, keep_params=True)
    # Damage step 6: remove its array data (as a disk error or a partial copy would).
    latest = tmp_path / "checkpoints" / "6" / "state"
    for p in latest.iterdir():
        if p.is_dir():
            shutil.rmtree(p)
    loop.run_dir = tmp_path
    state = run(params, step, _Source(), loop)
    assert "cannot be read" in caplog.text and "step 6" in caplog.text
    # It resumed from step 4 and redid steps 5-6: the same result as the first run.
    for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(state["params"])):
        assert np.array_equal(a, b)

"""A run directory is a contract: what made it (run.json), who uses it (.lock), results kept
only for what they measured, and training that stops cleanly (signals, nothing to train).

Each test names the fault it covers; before these changes each of them exited 0 with a
stale or untrained model, or lost work."""

import fcntl
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import tiny
import xla_env
from seam_jax.main import main
from seam_jax.train import run_dir as rd
from seam_jax.train.checkpoint import CheckpointConfig, Checkpointer
from seam_jax.train.loop import Interrupted, LoopConfig, NothingTrained, run
from seam_jax.train.metrics import read_metrics
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import build_step, optimizer_for, sft_objective

REPO = pathlib.Path(__file__).resolve().parents[2]
DEBUG = [f"--config={REPO / 'configs/debug.py'}", "--config.eval.enabled=False"]
sys.path.insert(0, str(REPO / "configs"))
import debug as debug_config  # noqa: E402


def _cfg(**fields):
    c = debug_config.get_config()
    for name, value in fields.items():
        *sections, key = name.split(".")
        node = c
        for part in sections:
            node = node[part]
        node[key] = value
    return c


def _last_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# --- 1. run.json: another config or model is refused --------------------------------------

def test_manifest_refuses_another_config_naming_the_fields(tmp_path):
    ident = {"model": {"weights": "a"}, "data": {"rows.defense": "d"}}
    rd.Manifest.open(tmp_path, _cfg(), "seam").settle(**ident)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["config"]["seam.beta"] == 1.0 and saved["model"] == {"weights": "a"}
    assert "eval.n_prompts" not in saved["config"] and "checkpoint.every" not in saved["config"]

    # Fields that do not change the arithmetic (what is measured, how often it saves, where
    # the weights are found, logging) leave the run directory usable.
    rd.Manifest.open(tmp_path, _cfg(**{"eval.n_prompts": 1, "checkpoint.every": 1,
                                       "model.local_path": "/x", "progress": True,
                                       "data.n_test": 4, "seam.heldout_pairs": 1}),
                     "seam").settle(**ident)
    with pytest.raises(rd.RunDirError) as e:
        rd.Manifest.open(tmp_path, _cfg(**{"seam.beta": 0.5, "optim.lr": 5e-3}), "seam")
    line = str(e.value)
    assert "\n" not in line
    assert "optim.lr 0.001 -> 0.005" in line and "seam.beta 1.0 -> 0.5" in line, line
    assert "--config.run_dir" in line and "--config.resume=force" in line, line

    forced = _cfg(**{"seam.beta": 0.5, "optim.lr": 5e-3, "resume": "force"})
    assert rd.Manifest.open(tmp_path, forced, "seam").settle(**ident) == [
        "optim.lr 0.001 -> 0.005", "seam.beta 1.0 -> 0.5"]
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["config"]["seam.beta"] == 0.5 and len(saved["forced"]) == 1


def test_manifest_refuses_another_model_or_data(tmp_path):
    fn = tiny.model()
    ident = rd.model_identity(fn.config, fn.init(0))
    data = rd.data_identity({"defense": [{"prompt": "p"}]}, tiny.batch(0))
    rd.Manifest.open(tmp_path, _cfg(), "seam").settle(model=ident, data=data)
    other = rd.model_identity(fn.config, fn.init(1))  # same architecture, other weights
    with pytest.raises(rd.RunDirError, match=r"model identity: weights '\w+' -> '\w+'"):
        rd.Manifest.open(tmp_path, _cfg(), "seam").settle(model=other, data=data)
    bigger = tiny.model(num_hidden_layers=3)
    with pytest.raises(rd.RunDirError, match="architecture.num_hidden_layers 2 -> 3"):
        rd.Manifest.open(tmp_path, _cfg(), "seam").settle(
            model=rd.model_identity(bigger.config, bigger.init(0)), data=data)
    with pytest.raises(rd.RunDirError, match="data identity: first_batch"):
        rd.Manifest.open(tmp_path, _cfg(), "seam").settle(
            model=ident, data=rd.data_identity({"defense": [{"prompt": "p"}]}, tiny.batch(1)))


def test_weight_hash_is_the_same_on_any_sharding_and_sees_one_bit():
    params = tiny.model().init(0)
    fp = rd.fingerprint(params)
    mesh = jax.make_mesh((len(jax.devices()),), ("x",))
    sharded = jax.tree.map(lambda a: jax.device_put(a, jax.NamedSharding(
        mesh, jax.P("x") if a.shape[0] % len(jax.devices()) == 0 else jax.P())), params)
    assert rd.fingerprint(sharded) == fp
    leaf = jax.tree.leaves(params)[0]
    bits = np.asarray(leaf).copy().view(np.uint32)
    bits.flat[3] ^= 1  # the lowest mantissa bit of one weight
    flipped = jax.tree.map(lambda a: jnp.asarray(bits.view(np.float32)) if a is leaf else a, params)
    assert rd.fingerprint(flipped) != fp


@pytest.mark.e2e  # a whole (2-step) SEAM job, then two reruns that stop before training
def test_rerun_with_another_config_is_refused_then_forced(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["seam_jax", *DEBUG, f"--config.run_dir={run_dir}", "--config.steps=2"]
    assert main(args) == 0
    weights = load_file(run_dir / "defended-hf" / "model.safetensors")
    summary = (run_dir / "summary.json").read_text()
    capsys.readouterr()
    # Before: rc 0, 0 steps, the old model exported under the new config's digest.
    rc = main([*args, "--config.seam.beta=0.5", "--config.optim.lr=5e-3"])
    line = _last_line(capsys)
    assert rc == 2 and "seam.beta 1.0 -> 0.5" in line and "optim.lr 0.001 -> 0.005" in line, line
    assert "--config.resume=force" in line and "Traceback" not in line
    assert (run_dir / "summary.json").read_text() == summary  # nothing rewritten
    assert Checkpointer(run_dir / "checkpoints", CheckpointConfig()).steps() == [2]
    # Forced: it continues the checkpoints (here: nothing left to train) and says so.
    assert main([*args, "--config.seam.beta=0.5", "--config.optim.lr=5e-3",
                 "--config.resume=force"]) == 0
    forced = json.loads((run_dir / "summary.json").read_text())["resume_forced"]
    assert forced == ["optim.lr 0.001 -> 0.005", "seam.beta 1.0 -> 0.5"]
    again = load_file(run_dir / "defended-hf" / "model.safetensors")
    assert all(np.array_equal(weights[k], again[k]) for k in weights)


# --- 1b. cached stage results are keyed by what they measured ---------------------------

def test_cached_result_is_reused_only_for_what_it_measured(tmp_path, caplog):
    caplog.set_level("INFO")
    path = tmp_path / "eval_before.json"
    calls = []

    def measure(value):
        return lambda: calls.append(value) or {"refusal_rate": value}

    key = {"model": {"weights": "a"}, "eval.n_prompts": 4}
    assert rd.cached(path, key, measure(0.1)) == {"refusal_rate": 0.1}
    assert rd.cached(path, key, measure(0.2)) == {"refusal_rate": 0.1} and calls == [0.1]
    # Another model: measured again, and the file now holds that model's result.
    other = {"model": {"weights": "b"}, "eval.n_prompts": 4}
    assert rd.cached(path, other, measure(0.3)) == {"refusal_rate": 0.3}
    assert "model.weights 'a' -> 'b'" in caplog.text
    assert json.loads(path.read_text()) == {"refusal_rate": 0.3, "measured_for": other}
    assert rd.cached(tmp_path / "n.json", key, lambda: 7) == 7 == rd.cached(tmp_path / "n.json",
                                                                          key, lambda: 8)
    # A result without a key (left by an older version, or copied in) is never trusted.
    path.write_text(json.dumps({"refusal_rate": 0.9}))
    assert rd.cached(path, other, measure(0.4)) == {"refusal_rate": 0.4}
    assert calls == [0.1, 0.3, 0.4]


@pytest.mark.e2e  # a whole (1-step) SEAM job with its before/after evaluation
def test_an_eval_before_of_another_model_is_not_reported(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # Before: a stray eval_before.json (another model's, here made up) went into the summary.
    (run_dir / "eval_before.json").write_text(json.dumps({"harmful_refusal_rate": 0.123}))
    assert main(["seam_jax", f"--config={REPO / 'configs/debug.py'}", "--config.steps=1",
                 f"--config.run_dir={run_dir}"]) == 0
    before = json.loads((run_dir / "summary.json").read_text())["before"]
    assert before["harmful_refusal_rate"] != 0.123 and "measured_for" not in before
    stored = json.loads((run_dir / "eval_before.json").read_text())
    assert stored["measured_for"]["model"]["weights"] == json.loads(
        (run_dir / "run.json").read_text())["model"]["weights"]


# --- 4. a run that trains nothing fails --------------------------------------------------

def _step(steps=10):
    return build_step(sft_objective(tiny.model()), *optimizer_for(OptimConfig(lr=1e-3), steps))


class _Source:
    def __init__(self, empty_from=None, on_step=None):
        self.empty_from, self.on_step = empty_from, on_step

    def batch_at(self, step):
        if self.on_step:
            self.on_step(step)
        b = tiny.batch(step)
        if self.empty_from is not None and step >= self.empty_from:
            b["loss_mask"][:] = 0
        return {"train": b}


def test_all_steps_skipped_for_an_empty_mask_stops_the_run(tmp_path):
    loop = LoopConfig(steps=20, run_dir=tmp_path, checkpoint=CheckpointConfig(every=2),
                      progress=False, empty_hint="raise --config.data.context_length")
    with pytest.raises(NothingTrained) as e:
        run(tiny.model().init(0), _step(20), _Source(empty_from=0), loop)
    line = str(e.value)
    assert line.startswith("5 of the 5 steps run (to step 5) had no target tokens"), line
    assert line.endswith("raise --config.data.context_length")
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    # More than half of the steps skipped, later in a run, stops it too.
    loop2 = LoopConfig(steps=20, run_dir=tmp_path / "late", progress=False)
    with pytest.raises(NothingTrained, match="^6 of the 11 steps run"):
        run(tiny.model().init(0), _step(20), _Source(empty_from=5), loop2)


def test_context_too_short_for_any_response_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # Before: every step skipped with a warning, the input model exported unchanged, rc 0.
    rc = main(["seam_jax", *DEBUG, f"--config.run_dir={run_dir}", "--config.data.context_length=8"])
    line = _last_line(capsys)
    assert rc == 2 and "data.context_length=8: 0 of 64 adv" in line, line
    assert "raise --config.data.context_length" in line
    assert not (run_dir / "defended-hf").exists() and not (run_dir / "checkpoints").exists()


# --- 6. SIGINT / SIGTERM: a checkpoint at the current step, one line ----------------------

def _sft_run(run_dir, source, steps=6, stop_after=None):
    loop = LoopConfig(steps=steps, run_dir=run_dir, checkpoint=CheckpointConfig(every=4, keep=5),
                      progress=False, stop_after=stop_after)
    return run(tiny.model().init(0), _step(steps), source, loop)


def test_sigterm_saves_the_current_step_and_the_rerun_resumes_bitwise(tmp_path):
    ref = _sft_run(tmp_path / "ref", _Source())

    def term(step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as e:
        _sft_run(tmp_path / "run", _Source(on_step=term))
    assert e.value.exit_code == 143
    assert str(e.value).startswith("SIGTERM: training stopped at step 3 of 6"), str(e.value)
    assert Checkpointer(tmp_path / "run" / "checkpoints", CheckpointConfig()).steps() == [3]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone
    state = _sft_run(tmp_path / "run", _Source())
    for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(state["params"])):
        assert np.array_equal(a, b)
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


_TWICE = textwrap.dedent("""
    import os, pathlib, signal, sys
    sys.path.insert(0, {tests!r})
    import tiny
    from seam_jax.train.checkpoint import CheckpointConfig
    from seam_jax.train.loop import LoopConfig, run
    from seam_jax.train.optim import OptimConfig
    from seam_jax.train.step import build_step, optimizer_for, sft_objective

    class Source:
        def batch_at(self, step):
            if step == 2:  # Ctrl-C, and Ctrl-C again before the step ends
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return {{"train": tiny.batch(step)}}

    step = build_step(sft_objective(tiny.model()), *optimizer_for(OptimConfig(), 6))
    run(tiny.model().init(0), step, Source(), LoopConfig(
        steps=6, run_dir=pathlib.Path({run_dir!r}), checkpoint=CheckpointConfig(every=1, use_async=False),
        progress=False))
""")


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    script = _TWICE.format(tests=str(REPO / "tests"), run_dir=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "XLA_FLAGS": xla_env.with_devices(None)})
    assert proc.returncode == 130, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == ("seam_jax: SIGINT again: exiting now, without a checkpoint at this "
                         "step"), lines[-3:]
    assert "Traceback" not in proc.stderr
    # The checkpoints of the steps before (every=1) are there; step 3 was not written.
    assert Checkpointer(tmp_path / "run" / "checkpoints", CheckpointConfig()).steps()[-1] == 2


@pytest.mark.e2e  # a SEAM job in a subprocess, stopped by SIGTERM, then its rerun
def test_sigterm_on_the_debug_job_saves_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    # 200 steps: the signal must land while the loop runs, which alone handles it. At 40, the
    # 38 debug steps left after the second metrics row are short enough that a test process
    # slowed by a parallel suite on two cores could send SIGTERM during the export, where the
    # default action kills with -15 (the flaky failure; the assertion below names it). 200
    # gives it five times the margin, at the cost of the rerun's extra steps.
    steps = 200
    cmd = [sys.executable, "-m", "seam_jax.main", *DEBUG, f"--config.run_dir={run_dir}",
           f"--config.steps={steps}", "--config.checkpoint.every=50"]
    env = {**os.environ, "XLA_FLAGS": xla_env.with_devices(None)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be stopped"
    rows_seen = len(metrics.read_text().splitlines())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != -signal.SIGTERM, (
        f"SIGTERM (sent at {rows_seen} rows) arrived after the training loop, which alone "
        f"handles it: {err[-1000:]}")
    # Before: SIGTERM killed it outright (SIGINT: a KeyboardInterrupt traceback), no checkpoint.
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("seam_jax: error: Interrupted: SIGTERM: training stopped at step "), last
    assert "Traceback" not in err
    at = int(last.split("at step ")[1].split()[0])
    assert Checkpointer(run_dir / "checkpoints", CheckpointConfig()).steps() == [at]
    assert len(read_metrics(metrics)) == at
    assert not (run_dir / "defended-hf").exists()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming from the checkpoint at step {at}" in out.stderr
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, steps + 1))


# --- 7. one run per directory; metrics hold each step once -------------------------------

_HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); " \
        "f.write('pid held-by-test'); f.flush(); print('locked', flush=True); time.sleep(120)"


def test_second_run_on_a_locked_run_dir_refuses(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Before: both runs trained, and metrics.jsonl had every step twice.
        rc = main(["seam_jax", *DEBUG, f"--config.run_dir={run_dir}"])
        line = _last_line(capsys)
        assert rc == 2 and f"{run_dir} is in use by another run" in line, line
        assert "pid held-by-test" in line and "--config.run_dir" in line
        with pytest.raises(rd.RunDirError, match="in use by another run"):
            _sft_run(run_dir, _Source())
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # Released with its holder: the directory is usable again, and within one process the
    # lock is re-entrant (a job holds it around its own training loop).
    with rd.locked(run_dir):
        with rd.locked(run_dir):
            pass
        f = open(run_dir / ".lock")
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.close()


def test_resume_drops_the_metrics_rows_past_the_checkpoint(tmp_path):
    # Killed after step 5 (the checkpoint is at step 4), mid-way through writing a row.
    _sft_run(tmp_path, _Source(), stop_after=5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 6
    _sft_run(tmp_path, _Source())
    # Before: rows 1-5, the cut-off line, then 5 and 6 again.
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_manifest_refuses_another_defense(tmp_path):
    """A run directory trained with one defense is refused for another (its name and its own
    hyperparameters are arithmetic); SEAM runs record no defense field, as before."""
    ident = {"model": {"weights": "a"}, "data": {"rows.defense": "d"}}
    rd.Manifest.open(tmp_path, _cfg(), "seam").settle(**ident)
    assert not any(k.startswith("defense.") for k in json.loads((tmp_path / "run.json").read_text())["config"])
    with pytest.raises(rd.RunDirError) as e:
        rd.Manifest.open(tmp_path, _cfg(**{"defense.name": "booster"}), "seam")
    assert "defense.name" in str(e.value), e.value
    other = tmp_path / "booster"
    other.mkdir()
    rd.Manifest.open(other, _cfg(**{"defense.name": "booster"}), "seam").settle(**ident)
    with pytest.raises(rd.RunDirError) as e:
        rd.Manifest.open(other, _cfg(**{"defense.name": "booster", "defense.booster.lam": 1.0}), "seam")
    assert "defense.booster.lam" in str(e.value), e.value
    # Another defense's section does not change this run's arithmetic.
    rd.Manifest.open(other, _cfg(**{"defense.name": "booster", "defense.tar.inner_steps": 9}),
                     "seam").settle(**ident)


def test_manifest_refuses_another_lora_setting(tmp_path):
    """A LoRA defense's adapters are its arithmetic: switching to full training, or another
    rank or scale, is refused; a full-parameter run records none of the lora_* fields."""
    ident = {"model": {"weights": "a"}, "data": {"rows.defense": "d"}}
    lora = {"defense.name": "booster", "defense.trainable": "lora", "defense.lora_rank": 8}
    rd.Manifest.open(tmp_path, _cfg(**lora), "seam").settle(**ident)
    for change in ({"defense.trainable": "full"}, {"defense.lora_rank": 4},
                   {"defense.lora_alpha": 2.0}):
        with pytest.raises(rd.RunDirError) as e:
            rd.Manifest.open(tmp_path, _cfg(**{**lora, **change}), "seam")
        assert next(iter(change)) in str(e.value), e.value
    full = tmp_path / "full"
    full.mkdir()
    rd.Manifest.open(full, _cfg(**{"defense.name": "booster"}), "seam").settle(**ident)
    recorded = json.loads((full / "run.json").read_text())["config"]
    assert not any(k.startswith("defense.lora_") or k == "defense.trainable" for k in recorded)

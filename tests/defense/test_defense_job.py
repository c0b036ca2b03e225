"""Every baseline trains through the SEAM job (``--config.defense.name``): checkpoints,
resumes bitwise after SIGKILL, and exports, on the debug preset (random 2-layer model).

SEAM's own run of this is tests/train/test_robustness.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file
import xla_env

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS = ["--config.steps=20", "--config.checkpoint.every=4", "--config.checkpoint.use_async=True",
         "--config.eval.enabled=False", "--config.seam.heldout_pairs=0",
         "--config.defense.tar.inner_steps=2", "--config.defense.tar.num_tasks=1"]


# "booster+lora": Booster training LoRA adapters (defense.trainable=lora, dropout 0.05, so
# its batches carry seed rows); the checkpoints hold the adapters, the export merges them.
LORA = ["--config.defense.trainable=lora"]


def _cli(run_dir, name):
    name, _, lora = name.partition("+")
    return [sys.executable, "-m", "seam_jax.main", f"--config={REPO / 'configs/debug.py'}",
            f"--config.run_dir={run_dir}", f"--config.defense.name={name}", *STEPS,
            *(LORA if lora else [])]


def _weights(run_dir):
    return load_file(pathlib.Path(run_dir) / "defended-hf" / "model.safetensors")


@pytest.mark.e2e  # three whole jobs per defense in subprocesses (about a minute each)
@pytest.mark.parametrize("name", ["none", "booster", "vaccine", "repnoise", "tar", "booster+lora"])
def test_defense_trains_resumes_bitwise_after_sigkill_and_exports(tmp_path, name):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_env.with_devices(None)}
    ref = tmp_path / "uninterrupted"
    first = subprocess.run(_cli(ref, name), check=True, env=env, capture_output=True, text=True,
                           cwd=REPO)
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["defense"] == name.partition("+")[0]
    assert f"{summary['defense']} done in " in first.stderr and "SEAM done" not in first.stderr
    rows = [json.loads(l) for l in (ref / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and all(r["skipped"] == 0 for r in rows)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed, name), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO)
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

    out = subprocess.run(_cli(killed, name), check=True, env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert "resuming from the checkpoint at step" in out.stderr
    a, b = _weights(ref), _weights(killed)
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    if name.endswith("+lora"):
        # job=export from the run's checkpoint (its params are the adapters): merged into
        # the base, as the job's own export.
        out = tmp_path / "exported"
        subprocess.run([sys.executable, "-m", "seam_jax.main",
                        f"--config={REPO / 'configs/convert.py'}:export",
                        "--config.model.source=preset:debug", f"--config.export.source={killed}",
                        f"--config.export.dir={out}", "--config.defense.name=booster", *LORA],
                       check=True, env=env,
                       capture_output=True, cwd=REPO)
        c = load_file(out / "model.safetensors")
        assert set(c) == set(b) and all(np.array_equal(c[k], b[k]) for k in b)

"""Every user-fixable fault ends in one line on stderr and exit code 2, before heavy work.

Each test runs the command line (``seam_jax.main.main``, in process unless the fault
needs its own process), and checks the exit code, that stderr holds exactly one
``seam_jax: error:`` line naming the field or file, and no traceback.
"""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import time

import pytest

from seam_jax.main import main

REPO = pathlib.Path(__file__).resolve().parents[1]
DEBUG = f"--config={REPO / 'configs/debug.py'}"


def _run(capsys, *args: str) -> tuple[int, str]:
    rc = main(["seam_jax", *args])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("seam_jax: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return rc, lines[0]


# ------------------------------------------------------------------ config values
@pytest.mark.parametrize("override, needle", [
    ("checkpoint.every=0", "checkpoint.every=0"),  # was ZeroDivisionError after compiling
    ("checkpoint.keep=0", "checkpoint.keep=0"),  # kept no checkpoint at all
    ("optim.grad_accum=0", "optim.grad_accum=0"),  # was treated as 1
    ("optim.lr=-0.001", "optim.lr=-0.001"),  # trained by gradient ascent
    ("eval.n_prompts=0", "eval.n_prompts=0"),  # reported a rate measured on nothing
    ("export.dtype=float8", "export.dtype='float8'"),  # failed only after training
    ("export.max_shard_size=lots", "export.max_shard_size='lots'"),
    ("seam.sd_precision=bf16", "seam.sd_precision='bf16'"),  # was refused after run.json was written
    ("seam.lens_layers=a,b", "seam.lens_layers='a,b'"),
])
def test_bad_config_value_is_one_line_before_the_model_loads(override, needle, tmp_path, capsys):
    run = tmp_path / "run"
    rc, line = _run(capsys, DEBUG, f"--config.run_dir={run}", f"--config.{override}")
    assert rc == 2 and needle in line, line
    assert not run.exists()  # nothing ran: no model, no data, no compile


def test_unusable_export_dir_is_refused_before_training(tmp_path, capsys):
    target = tmp_path / "target"
    target.write_text("a file, not a directory")
    run = tmp_path / "run"
    rc, line = _run(capsys, DEBUG, f"--config.run_dir={run}", f"--config.export.dir={target}")
    assert rc == 2 and str(target) in line and "is a file" in line, line
    assert not run.exists() and target.read_text() == "a file, not a directory"


@pytest.mark.parametrize("variant", ["configs/plan.py", "configs/attack.py", "configs/experiment.py"])
def test_unknown_config_variant_names_the_variants(variant, capsys):
    rc, line = _run(capsys, f"--config={REPO / variant}:nosuch")
    assert rc == 2 and "nosuch: unknown variant" in line and "debug" in line, line


# ------------------------------------------------------------------ files and the OS
def test_read_only_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    """Root ignores permissions, so the read-only file system is simulated at ``os.mkdir``
    (which pathlib, os.makedirs and etils.epath's local paths all call). The job must stop
    before any work: the model is never loaded."""
    run = tmp_path / "run"
    real_mkdir = os.mkdir

    def mkdir(path, *a, **kw):
        if os.fspath(path) == str(run):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    import seam_jax.jobs.seam as seam_job

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded before the run_dir was found read-only")

    monkeypatch.setattr(seam_job, "load_model", no_load)
    rc, line = _run(capsys, DEBUG, f"--config.run_dir={run}")
    assert rc == 2 and "Read-only file system" in line and str(run) in line, line
    assert "writable" in line, line


def test_full_disk_is_one_line():
    from seam_jax.main import _one_line

    e = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/model.safetensors")
    line = _one_line(e)
    assert "No space left on device: /data/out/model.safetensors" in line and "disk is full" in line


def _debug_model_dir(path: pathlib.Path) -> pathlib.Path:
    from seam_jax.hf.export import export_hf
    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import preset

    cfg = preset("debug")
    return export_hf(ModelFn(cfg).init(0), cfg, path)


def test_truncated_safetensors_names_the_file(tmp_path, capsys):
    model = _debug_model_dir(tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, line = _run(capsys, f"--config={REPO / 'configs/convert.py'}",
                    f"--config.model.source={model}", f"--config.export.dir={tmp_path / 'out'}")
    assert rc == 2 and str(weights) in line and "truncated or corrupt" in line, line


def test_corrupt_cached_result_names_the_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval_before.json").write_text('{"refusal_rate": 0.5')  # cut off mid-write
    rc, line = _run(capsys, DEBUG, f"--config.run_dir={run}")
    assert rc == 2 and str(run / "eval_before.json") in line and "not valid JSON" in line, line


def test_missing_tokenizer_is_not_blamed_on_sentencepiece(tmp_path):
    from seam_jax.data.tokenizer import load_tokenizer
    from seam_jax.errors import ConfigError

    model = _debug_model_dir(tmp_path / "model")  # weights and config.json, no tokenizer
    with pytest.raises(ConfigError) as e:
        load_tokenizer(model)
    assert "holds no tokenizer" in str(e.value) and "sentencepiece" not in str(e.value)


def test_missing_local_classifier_is_not_a_bad_repo_id(tmp_path):
    pytest.importorskip("torch")
    from seam_jax.errors import ConfigError
    from seam_jax.eval.harm_classifier import ClassifierScorer

    missing = tmp_path / "no" / "classifier"
    with pytest.raises(ConfigError) as e:
        ClassifierScorer(str(missing))
    assert f"directory {missing} does not exist" in str(e.value), e.value
    assert "repo" not in str(e.value).lower()


# ------------------------------------------------------------------ distributed start-up
def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("process_id, needle", [
    (1, "cannot reach the coordinator at"),  # nothing listens at the address
    (0, "did not bring up all 2 processes"),  # the coordinator waits for a peer that never comes
])
def test_unreachable_coordinator_fails_within_the_timeout(process_id, needle, tmp_path):
    """Was: JAX's 300 s default, then an abort with a C++ stack trace. A 2 s timeout here;
    the bound (60 s) covers the interpreter and JAX start-up on a loaded 2-core machine."""
    address = f"127.0.0.1:{_free_loopback_port()}"
    cmd = [sys.executable, "-m", "seam_jax.main", DEBUG, f"--config.run_dir={tmp_path / 'run'}",
           f"--config.distributed.coordinator_address={address}",
           "--config.distributed.num_processes=2", f"--config.distributed.process_id={process_id}",
           "--config.distributed.init_timeout=2"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    wall = time.monotonic() - t0
    lines = [l for l in proc.stderr.splitlines() if l.startswith("seam_jax: error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and needle in lines[0] and address in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Check failure" not in proc.stderr, proc.stderr
    assert wall < 60, wall


def test_verbose_adds_the_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["seam_jax", DEBUG, f"--config.run_dir={run}", "--config.checkpoint.every=0",
               "--verbose"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "checkpoint.every=0" in err.splitlines()[-1]

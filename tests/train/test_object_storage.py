"""Run directories in a bucket (``gs://``): every output through ``seam_jax.storage``.

Before: every job turned ``run_dir`` into a local ``pathlib.Path``, so ``gs://bucket/run``
became a local folder named ``gs:``, and then the scheme was refused outright. Now a
``gs://`` run directory is read and written through etils.epath (fsspec's ``gcs``
protocol) and Orbax (TensorStore's GCS driver). The tests use ``fake_gcs``: a stand-in
for gcsfs on the fsspec side, and a loopback HTTP server speaking the GCS JSON API for
TensorStore, both over one local folder (``root/BUCKET/NAME``), so no network is used
and each test can look at the objects directly.

Equality of resumed and uninterrupted training is exact (no tolerance): resume is bitwise
on one CPU (tests/train/test_robustness.py), and the storage must not change a bit.
"""

import itertools
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import fake_gcs
import tiny
import xla_env
from seam_jax import storage
from seam_jax.errors import ConfigError
from seam_jax.main import main
from seam_jax.train import run_dir as rd
from seam_jax.train.checkpoint import SUMS, CheckpointConfig, Checkpointer
from seam_jax.train.loop import LoopConfig, run
from seam_jax.train.metrics import read_metrics
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import build_step, optimizer_for, sft_objective

REPO = pathlib.Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DEBUG = [f"--config={REPO / 'configs/debug.py'}", "--config.eval.enabled=False"]
_names = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One fake GCS per test file (TensorStore reads its address once per process)."""
    root = tmp_path_factory.mktemp("fake-gcs")
    srv = fake_gcs.FakeGCSServer(root)
    saved = {k: os.environ.get(k) for k in fake_gcs.env(srv)}
    os.environ.update(fake_gcs.env(srv))
    undo = fake_gcs.install(root)
    yield srv
    undo()
    srv.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def bucket(server):
    """A fresh bucket: (its gs:// URL, its local folder in the fake)."""
    name = f"bucket-{os.getpid()}-{next(_names)}"
    (server.root / name).mkdir()
    return f"gs://{name}", server.root / name


# --- where a run directory is ---------------------------------------------------------------

def test_resolve_keeps_gs_urls_and_refuses_other_schemes(bucket, tmp_path, monkeypatch):
    url, _ = bucket
    monkeypatch.chdir(tmp_path)
    p = storage.resolve(f"{url}/run/")
    assert str(p) == f"{url}/run" and str(p / "checkpoints") == f"{url}/run/checkpoints"
    assert rd.resolve(f"{url}/run") == p and not storage.is_local(p)
    assert storage.is_local(storage.resolve("runs/a"))
    for bad, what in (("s3://b/run", "s3:// is not supported"), ("memory://run", "memory:// is not"),
                      ("gs:///run", "name the bucket")):
        with pytest.raises(ConfigError, match=what) as e:
            storage.resolve(bad, "export.dir")
        assert "\n" not in str(e.value) and str(e.value).startswith(f"export.dir={bad!r}")
    assert list(tmp_path.iterdir()) == []  # no local folder named gs: (the old fault)


def test_gs_without_its_backend_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import fsspec

    def no_gcsfs(protocol):
        raise ImportError("Install gcsfs to access Google Storage")

    monkeypatch.setattr(fsspec, "get_filesystem_class", no_gcsfs)
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # import raises ImportError
    monkeypatch.chdir(tmp_path)
    rc = main(["seam_jax", *DEBUG, "--config.run_dir=gs://some-bucket/run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == ("seam_jax: error: ConfigError: run_dir='gs://some-bucket/run': a gs:// "
                      "location needs gcsfs and google-cloud-storage in this Python (pip install "
                      "'seam_jax[gcs]'), or mount the bucket (gcsfs, Filestore/NFS) and give its "
                      "local path"), err[0]
    assert list(tmp_path.iterdir()) == []


# --- the operations a bucket does differently ------------------------------------------------

def test_writes_appends_and_staged_files_are_whole_objects(bucket, tmp_path, monkeypatch):
    url, host = bucket
    monkeypatch.chdir(tmp_path)
    run_dir = storage.resolve(f"{url}/run")
    storage.write_text(run_dir / "a.json", '{"x": 1}')
    storage.append_text(run_dir / "log.txt", "one\n")
    storage.append_text(run_dir / "log.txt", "two\n")
    assert (host / "run" / "log.txt").read_text() == "one\ntwo\n"
    with storage.local_file(run_dir / "fig.png") as f:
        assert storage.is_local(f) and not str(f).startswith("gs:")
        f.write_bytes(b"\x89PNG")
    with storage.local_dir(run_dir / "hf") as d:
        (d / "config.json").write_text("{}")
        (d / "sub").mkdir()
        (d / "sub" / "x.bin").write_bytes(b"12345")
    with pytest.raises(RuntimeError):  # a block that fails uploads nothing
        with storage.local_dir(run_dir / "failed") as d:
            (d / "half.bin").write_bytes(b"1")
            raise RuntimeError("cut short")
    assert [rel for rel, _ in storage.files_under(run_dir)] == [
        "a.json", "fig.png", "hf/config.json", "hf/sub/x.bin", "log.txt"]
    assert storage.size(run_dir / "hf" / "sub" / "x.bin") == 5
    assert not (run_dir / "failed").exists()
    assert list(tmp_path.iterdir()) == []  # nothing of it on the local disk


def test_the_lock_is_skipped_with_one_line_in_a_bucket(bucket, caplog):
    url, host = bucket
    with caplog.at_level(logging.WARNING, logger="seam_jax.train.run_dir"):
        with rd.locked(f"{url}/run"):
            with rd.locked(f"{url}/run"):  # re-entrant: the job and its loop both take it
                pass
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{url}/run is in a bucket, where an flock "
                                                   f"cannot be held: no lock is taken"), lines
    assert not (host / "run" / rd.LOCK).exists()


def test_manifest_and_cached_results_live_in_the_bucket(bucket):
    url, host = bucket
    sys.path.insert(0, str(REPO / "configs"))
    import debug

    run_dir = storage.resolve(f"{url}/run")
    rd.Manifest.open(run_dir, debug.get_config(), "seam").settle(model={"weights": "a"}, data={})
    assert json.loads((host / "run" / rd.MANIFEST).read_text())["model"] == {"weights": "a"}
    other = debug.get_config()
    other.seam.beta = 0.5
    with pytest.raises(rd.RunDirError, match=r"seam.beta 1.0 -> 0.5"):
        rd.Manifest.open(run_dir, other, "seam")
    calls = []
    assert rd.cached(run_dir / "eval.json", {"k": 1}, lambda: calls.append(1) or {"v": 2}) == {"v": 2}
    assert rd.cached(run_dir / "eval.json", {"k": 1}, lambda: calls.append(1) or {"v": 3}) == {"v": 2}
    assert calls == [1]


# --- checkpoints and training ------------------------------------------------------------------

def test_a_checkpoint_in_a_bucket_is_verified_and_a_damaged_one_set_aside(bucket, caplog):
    url, host = bucket
    state = {"w": jax.numpy.arange(64, dtype=jax.numpy.float32), "step": jax.numpy.int32(0)}
    ckpt = Checkpointer(f"{url}/run/checkpoints", CheckpointConfig(every=1, keep=3, use_async=False))
    for step in (1, 2):
        ckpt.save(step, {**state, "w": state["w"] * step}, {"step": step})
    ckpt.close()
    step2 = host / "run" / "checkpoints" / "2"
    sums = json.loads((step2 / SUMS).read_text())["files"]
    assert "commit_success.txt" in sums  # Orbax's mark of a finished step on GCS
    # Flip a byte of the largest array file: it would load as wrong numbers.
    victim = max((step2 / rel for rel in sums if "/d/" in rel), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    ckpt = Checkpointer(f"{url}/run/checkpoints", CheckpointConfig(every=1, keep=3, use_async=False))
    with caplog.at_level(logging.WARNING, logger="seam_jax.train.checkpoint"):
        step, restored, meta = ckpt.restore_latest(jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
    ckpt.close()
    assert step == 1 and meta["step"] == 1
    assert np.array_equal(np.asarray(restored["w"]), np.arange(64, dtype=np.float32))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "does not hold the bytes that were saved" in lines[0], lines
    assert [p.name.split("-")[0] for p in (host / "run" / "checkpoints").iterdir()
            if not p.name.isdigit()] == ["unreadable"]


class _Source:
    def batch_at(self, step):
        return {"train": tiny.batch(step)}


def test_training_in_a_bucket_resumes_bitwise_with_each_metrics_row_once(bucket, tmp_path):
    fn = tiny.model()
    params = fn.init(0)
    step = build_step(sft_objective(fn), *optimizer_for(OptimConfig(lr=1e-2), 6))
    ck = CheckpointConfig(every=2, keep=2, use_async=True)
    ref = run(params, step, _Source(), LoopConfig(steps=6, run_dir=tmp_path / "ref", checkpoint=ck,
                                                  progress=False), keep_params=True)

    url, host = bucket
    run_dir = storage.resolve(f"{url}/run")
    loop = LoopConfig(steps=6, run_dir=run_dir, checkpoint=ck, progress=False, stop_after=5)
    run(params, step, _Source(), loop, keep_params=True)  # stops after step 5 (checkpoint at 4)
    assert sorted(p.name for p in (host / "run" / "checkpoints").iterdir()) == ["2", "4"]
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    loop.stop_after = None
    final = run(params, step, _Source(), loop, keep_params=True)  # resumes at 4
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert read_metrics(run_dir / "metrics.jsonl") == read_metrics(tmp_path / "ref" / "metrics.jsonl")
    for a, b in zip(jax.tree.leaves(ref["params"]), jax.tree.leaves(final["params"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in (host / "run" / "checkpoints").iterdir()) == ["4", "6"]


# --- the whole SEAM job --------------------------------------------------------------------------

def _cli(run_dir, *extra):
    code = fake_gcs.PRELUDE.format(tests=str(TESTS)) + \
        "from seam_jax.main import main; sys.exit(main(sys.argv))"
    return [sys.executable, "-c", code, *DEBUG, f"--config.run_dir={run_dir}", *extra]


@pytest.mark.e2e  # three debug SEAM jobs in subprocesses (about 1.5 minutes)
def test_seam_job_in_a_bucket_killed_and_resumed_equals_the_uninterrupted_local_run(
        server, bucket, tmp_path):
    url, host = bucket
    steps = ["--config.steps=20", "--config.checkpoint.every=4", "--config.checkpoint.keep=3",
             "--config.checkpoint.use_async=True"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_env.with_devices(None),
           **fake_gcs.env(server)}
    ref = tmp_path / "uninterrupted"
    subprocess.run(_cli(ref, *steps), check=True, env=env, capture_output=True, cwd=tmp_path)

    work = tmp_path / "cwd"  # the jobs' working directory: nothing may appear in it
    work.mkdir()
    proc = subprocess.Popen(_cli(f"{url}/run", *steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=work)
    ckpts = host / "run" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (ckpts / "8" / SUMS).is_file():  # the checkpoint at step 8 is whole and verified
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = [json.loads(l)["step"] for l in (host / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 8 <= len(rows) < 20 and rows == list(range(1, len(rows) + 1)), rows
    assert not (host / "run" / "defended-hf").exists()

    out = subprocess.run(_cli(f"{url}/run", *steps), env=env, capture_output=True, text=True,
                         cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from the checkpoint at step" in out.stderr
    assert f"{url}/run is in a bucket, where an flock cannot be held" in out.stderr
    assert f"HF checkpoint: {url}/run/defended-hf" in out.stdout

    a = load_file(ref / "defended-hf" / "model.safetensors")
    b = load_file(host / "run" / "defended-hf" / "model.safetensors")
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    steps_written = [json.loads(l)["step"] for l in (host / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps_written == list(range(1, 21))  # each step once, after the kill and the resume
    summary = json.loads((host / "run" / "summary.json").read_text())
    assert summary["export_dir"] == f"{url}/run/defended-hf"
    assert json.loads((host / "run" / rd.MANIFEST).read_text())["job"] == "seam"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [12, 16, 20]
    assert (host / "run" / "heldout_geometry.png").is_file()
    assert list(work.iterdir()) == []  # no local folder named gs: (the old fault)


def test_the_experiment_report_and_its_figures_are_written_into_a_bucket(bucket, tmp_path,
                                                                         monkeypatch):
    """write_report (tables, HS/utility plots) to a gs:// run directory: every file is an
    object in the bucket, nothing lands on the local disk, and the same report written
    locally has the same files and the same markdown."""
    from seam_jax.eval.report import write_report

    url, host = bucket
    monkeypatch.chdir(tmp_path)
    before = {"base-s0": {"hs_judge": 0.1, "mc_acc": 0.5, "mc_acc_ci": [0.4, 0.6]},
              "seam-s0": {"hs_judge": 0.0, "mc_acc": 0.48}}
    attacked = [{"model": "seam-s0", "cell": "5", "lr": 2e-4, "step": s, "steps": 16,
                 "method": "full", "optimizer": "adamw", "n_samples": 64, "hs_judge": h,
                 "mc_acc": 0.45} for s, h in ((8, 0.2), (16, 0.4))]
    kw = dict(before=before, attacked=attacked, pca=None, base_of={"seam-s0": "base-s0"},
              guard=0.8)
    write_report(storage.resolve(f"{url}/exp"), **kw)
    local = tmp_path / "exp"
    write_report(local, **kw)
    in_bucket = sorted(p.relative_to(host / "exp").as_posix() for p in (host / "exp").rglob("*")
                       if p.is_file())
    assert "report.md" in in_bucket and any(f.endswith(".png") for f in in_bucket), in_bucket
    assert in_bucket == sorted(p.relative_to(local).as_posix() for p in local.rglob("*")
                               if p.is_file())
    assert (host / "exp" / "report.md").read_text() == (local / "report.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no local folder named gs:


@pytest.mark.e2e  # the debug experiment in a subprocess (about 2 minutes)
def test_the_experiment_job_runs_in_a_bucket(server, bucket, tmp_path):
    """job=experiment with its run directory in the bucket: every stage's outputs (the arms'
    run directories, the attack results, the cached evaluations, the report) are objects
    there and nothing is written to the working directory."""
    url, host = bucket
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_env.with_devices(None),
           **fake_gcs.env(server)}
    code = fake_gcs.PRELUDE.format(tests=str(TESTS)) + \
        "from seam_jax.main import main; sys.exit(main(sys.argv))"
    work = tmp_path / "cwd"
    work.mkdir()
    out = subprocess.run([sys.executable, "-c", code, f"--config={REPO / 'configs/experiment.py'}:debug",
                          f"--config.run_dir={url}/exp"], env=env, capture_output=True, text=True,
                         cwd=work, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    exp = host / "exp"
    assert (exp / "report.md").is_file() and (exp / "experiment_summary.json").is_file()
    rows = [json.loads(l) for l in (exp / "attacks" / "results.jsonl").read_text().splitlines()]
    assert rows and all("hs_judge" in r for r in rows)
    assert any(p.name == "model.safetensors" for p in exp.rglob("*"))  # an arm's HF export
    assert list(work.iterdir()) == []

"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures.

Everything here is set through environment variables, so the jobs the tests start in
subprocesses inherit it.
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

import xla_env  # noqa: E402  (tests/ is on pythonpath)

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += f" {xla_env.FAKE_DEVICES}"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# A persistent XLA compilation cache, in the checkout's .xla_cache/ (git ignores it), for
# the test processes and every job they start (an environment variable, so subprocesses
# inherit it): the two pytest workers and the e2e jobs compile many of the same programs
# (the tiny models' gradients and steps, the debug SEAM step). Measured on 2 cores, the
# fast suite: 12 min 52 s without it, 10 min 36 s with a cold one (2026-12-07). An earlier
# jax 0.10.2 tree aborted reading a sharded step over the 8 fake devices back from a warm
# cache (tests/parallel/test_sharding.py::test_sharded_step_equals_single_device); on this
# tree it passes warm (46 s cold, 25 s warm). Set JAX_COMPILATION_CACHE_DIR to put it
# elsewhere, or to "" to switch it off. These settings cache every program (jax's default
# skips those compiled in under 1 s, nearly all of them here).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))  # LRU eviction beyond 2 GiB


def pytest_configure(config):
    """Cheaper XLA:CPU code generation (``xla_env.CODEGEN``) unless the selection asks for
    the slow tests (the real weights, where execution dominates) or
    SEAM_TEST_XLA_CODEGEN=default. Here, before any test module imports JAX; the xdist
    workers and the jobs the tests start inherit the environment."""
    wants_slow = "slow" in (config.getoption("markexpr") or "").replace("not slow", "")
    if wants_slow or os.environ.get("SEAM_TEST_XLA_CODEGEN") == "default":
        return
    have = os.environ["XLA_FLAGS"].split()
    os.environ["XLA_FLAGS"] = " ".join([*have, *(f for f in xla_env.CODEGEN if f not in have)])


@dataclasses.dataclass(frozen=True)
class JobRun:
    run_dir: pathlib.Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def debug_seam_run(tmp_path_factory) -> JobRun:
    """``python -m seam_jax.main --config=configs/debug.py``, run once for every test that reads it.

    A subprocess, as a user starts it, so its output is the command line's own. The tests
    that use it only read the run directory (they write their exports elsewhere).
    """
    run_dir = tmp_path_factory.mktemp("debug-seam") / "run"
    # One device (the job's own default on a CPU host), as a user's plain run has.
    env = {**os.environ, "XLA_FLAGS": xla_env.with_devices(None)}
    proc = subprocess.run(
        [sys.executable, "-m", "seam_jax.main", f"--config={REPO / 'configs' / 'debug.py'}",
         f"--config.run_dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"the debug SEAM job failed:\n{proc.stderr[-4000:]}"
    return JobRun(run_dir, proc.stdout, proc.stderr)

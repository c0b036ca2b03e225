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

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# A persistent XLA compilation cache (jax 0.10's option names, read from the environment
# when jax is imported). Many tests build fresh jitted closures over the same tiny models,
# and the job tests start subprocesses that compile the SEAM step again: with the cache
# each distinct program is compiled once per machine, not once per test and process.
# It lives outside the repository, beside the project's other caches, so it survives a
# fresh checkout; the key covers the program, the compile options and the jax/XLA
# versions, so a stale entry is never used for a changed program. Set
# JAX_COMPILATION_CACHE_DIR= (empty) to run without it.
_CACHE_ROOT = pathlib.Path(os.environ.get("SEAM_JAX_CACHE") or pathlib.Path.home() / ".cache" / "seam_jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE_ROOT / "jax-compilation-cache-tests"))
# Every program, however quick to compile (the default skips those under 1 s, which on
# these tiny models is nearly all of them; reading an entry back takes milliseconds).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# At most 2 GiB, least recently used entries evicted first (the fast suite writes about
# 40 MB, some 1400 programs).
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 << 30))


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
    env = {**os.environ, "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "seam_jax.main", f"--config={REPO / 'configs' / 'debug.py'}",
         f"--config.run_dir={run_dir}"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, f"the debug SEAM job failed:\n{proc.stderr[-4000:]}"
    return JobRun(run_dir, proc.stdout, proc.stderr)

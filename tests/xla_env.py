"""The XLA flags of the test processes and of the jobs they start (tests/conftest.py sets them).

- ``FAKE_DEVICES``: 8 fake CPU devices, for the meshes.
- ``CODEGEN``: cheaper XLA:CPU code generation (no LLVM optimization, no expensive LLVM
  passes, the loop emitters instead of the fusion emitters). The fast and end-to-end tests
  run tiny models, whose time is nearly all compilation: one test that compiles eight
  estimator programs (tests/seam/test_estimators.py, vmap against sequential) took 64 s
  with XLA's defaults and 24 s with these, no cache, on 2 cores (2026-12-07). The flags
  change how the arithmetic is scheduled into machine code, not what it computes, so every
  tolerance holds as stated; a test that compares two programs bitwise compiles both under
  the same flags. The slow tests run the real SmolLM2 weights, where execution dominates:
  ``-m slow`` keeps XLA's defaults (conftest's ``pytest_configure``), as does
  ``SEAM_TEST_XLA_CODEGEN=default``. One test checks a property of the jobs' own code
  generation and compiles its program with ``JOB_CODEGEN``.
"""

from __future__ import annotations

import os
import re

FAKE_DEVICES = "--xla_force_host_platform_device_count=8"
CODEGEN = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
           "--xla_cpu_use_fusion_emitters=false")
# Per-program compiler options that restore the jobs' code generation where a test checks a
# property of it: the fusion emitters (XLA:CPU's default), under which two evaluations of
# one gradient in one program compile to the same loops
# (tests/seam/test_sd_precision.py, bit-identical gradients at theta and theta + 0 d).
JOB_CODEGEN = {"xla_cpu_use_fusion_emitters": True}
_COUNT = re.compile(r"--xla_force_host_platform_device_count=\S+")


def with_devices(n: int | None) -> str:
    """This process's XLA_FLAGS with ``n`` fake devices (None: the host's one), for a job a
    test starts: the code-generation flags carry over."""
    flags = _COUNT.sub("", os.environ.get("XLA_FLAGS", "")).split()
    if n is not None:
        flags.append(f"--xla_force_host_platform_device_count={n}")
    return " ".join(flags)

"""Command line: ``python -m seam_jax.main [--config=configs/NAME.py[:arg]] [--config.field=value]``.

With no arguments it runs ``configs/default.py``: SEAM on SmolLM2-135M-Instruct with
the offline proxy data, on whatever devices JAX finds. The config's ``job`` field
picks the work (see ``JOBS``). Errors that a user can fix (a misspelt field, a
missing file, a bad checkpoint) are printed as one line saying what is wrong and
how to fix it, without a traceback, and the exit code is 2.
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import sys
import time
from typing import Any, Sequence

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py"

# job name -> module with run(config)
JOBS = {
    "seam": "seam_jax.jobs.seam",
    "convert": "seam_jax.jobs.convert",
    "export": "seam_jax.jobs.convert",
    "generate": "seam_jax.jobs.generate",
    "theory": "seam_jax.jobs.theory",
    "plan": "seam_jax.jobs.plan",
    "attack": "seam_jax.jobs.attack",
    "experiment": "seam_jax.jobs.experiment",
}


class UsageError(Exception):
    pass


def parse(argv: Sequence[str]) -> Any:
    """The locked config that ``argv`` describes; UsageError with one line if it cannot."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    saved_argv, sys.argv = sys.argv, list(argv)  # config_flags reads overrides from sys.argv
    try:
        # The definition already applies --config.* overrides of argv (ml_collections).
        holder = config_flags.DEFINE_config_file(
            "config", str(DEFAULT_CONFIG), "Experiment config file (configs/*.py).",
            flag_values=fv, lock_config=True)
        rest = fv(list(argv))
        config = holder.value
        config.job  # a config file that failed to load raises only when read
    except flags.Error as e:
        raise UsageError(str(e)) from None
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        # ml_collections reports an unknown field as KeyError("... Did you mean ..."),
        # a locked dict as AttributeError, a wrong type as TypeError.
        msg = str(e.args[0] if e.args else e).replace("\n", " ")
        raise UsageError(f"bad --config override: {msg}") from None
    except OSError as e:
        raise UsageError(str(e).replace("\n", " ")) from None
    finally:
        sys.argv = saved_argv
    if len(rest) > 1:
        raise UsageError(f"unexpected arguments {rest[1:]}; set fields with --config.FIELD=VALUE")
    return config


def run_config(c: Any) -> Any:
    """Run the job a config names and return its result (tests call this directly)."""
    from seam_jax.config import validate

    validate(c)
    if c.job not in JOBS:
        raise UsageError(f"job={c.job!r}; choose one of {sorted(JOBS)}")
    return importlib.import_module(JOBS[c.job]).run(c)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    setup_logging()
    from seam_jax.errors import SeamError

    try:
        c = parse(argv)
        from seam_jax.jobs.sharding import setup_distributed

        setup_distributed(c)  # multi-host jobs only; before anything touches the devices
        t0 = time.time()
        result = run_config(c)
    except UsageError as e:
        return _fail(str(e))
    except (SeamError, ValueError, FileNotFoundError, FileExistsError) as e:
        # A bug would surface as another exception type, with its traceback.
        return _fail(f"{type(e).__name__}: {e}")
    from seam_jax.jobs.summary import summary_text

    print(summary_text(c, result, time.time() - t0), flush=True)  # stdout holds only this
    return 0


def _fail(msg: str) -> int:
    print(f"seam_jax: error: {msg}", file=sys.stderr)
    return 2


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (which tests and notebooks swap) at each record."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            datefmt="%H:%M:%S"))

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging() -> None:
    """One handler on the root logger for every library; called first thing by ``main``.

    Our own progress (``seam_jax.*``) at INFO, everything else at WARNING: Orbax logs each
    file it writes at INFO through absl. absl's own handler is not installed, so its
    "Logging before flag parsing" preamble never appears. ``datasets`` draws a progress
    bar for every local file it reads ("Generating train split"); those are off unless
    HF_DATASETS_DISABLE_PROGRESS_BARS is set otherwise. Idempotent.
    """
    import os

    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(logging.WARNING)
    logging.getLogger("seam_jax").setLevel(logging.INFO)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets loads
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        sys.modules["datasets"].disable_progress_bars()  # it was imported before this call


if __name__ == "__main__":
    sys.exit(main())

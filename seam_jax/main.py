"""Command line: ``python -m seam_jax.main [--config=configs/NAME.py[:arg]] [--config.field=value]``.

With no arguments it runs ``configs/default.py``: SEAM on SmolLM2-135M-Instruct with
the offline proxy data, on whatever devices JAX finds. The config's ``job`` field
picks the work (see ``JOBS``). Errors that a user can fix are printed as one line
saying what is wrong and how to fix it, without a traceback.
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

_DEFAULT = pathlib.Path(__file__).resolve().parent.parent / "configs" / "default.py"
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(_DEFAULT), "Experiment config file (configs/*.py).", lock_config=True)

# job name -> module with run(config)
JOBS = {
    "seam": "seam_jax.jobs.seam",
    "convert": "seam_jax.jobs.convert",
    "export": "seam_jax.jobs.convert",
    "generate": "seam_jax.jobs.generate",
    "theory": "seam_jax.jobs.theory",
}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --config.field=value")
    from seam_jax.config import validate
    from seam_jax.errors import SeamError

    c = _CONFIG.value
    # Our own progress at INFO; libraries (orbax logs every file it writes) at WARNING.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("seam_jax").setLevel(logging.INFO)
    try:
        validate(c)
        job = importlib.import_module(JOBS[c.job])
        job.run(c)
    except (SeamError, ValueError, FileNotFoundError, FileExistsError) as e:
        # A bug would surface as another exception type, with its traceback.
        logging.error("%s: %s", type(e).__name__, e)
        print(f"seam_jax: error: {e}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    entry()

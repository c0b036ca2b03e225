"""Command line: ``python -m seam_jax.main [--config=configs/NAME.py[:arg]] [--config.field=value]``.

With no arguments it runs ``configs/default.py``: SEAM and its control arm (beta 0) on
SmolLM2-135M-Instruct with the offline proxy data, each attacked once, on whatever
devices JAX finds. The config's ``job`` field
picks the work (see ``JOBS``). Errors that a user can fix (a misspelt field, a
missing file, a bad checkpoint) are printed as one line saying what is wrong and
how to fix it, without a traceback, and the exit code is 2.
"""

from __future__ import annotations

import importlib
import logging
import os
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
        raise UsageError(_config_file_error(e) or str(e)) from None
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


def _config_file_error(e: BaseException) -> str | None:
    """The one line of an error that a config file's ``get_config`` raised (an unknown
    ``:variant``, say); ml_collections wraps it with its traceback in the flag's error."""
    if "Error whilst parsing config file" not in str(e):
        return None
    inner = e
    while inner.__context__ is not None:
        inner = inner.__context__
    if inner is e or "Traceback" in str(inner):
        return None
    from seam_jax.errors import SeamError

    msg = str(inner).replace("\n", " ")
    if type(inner) is ValueError or isinstance(inner, SeamError):
        return msg
    return f"{type(inner).__name__}: {msg}"


def run_config(c: Any) -> Any:
    """Run the job a config names and return its result (tests call this directly)."""
    from seam_jax.config import validate

    validate(c)
    if c.job not in JOBS:
        raise UsageError(f"job={c.job!r}; choose one of {sorted(JOBS)}")
    _check_dirs(c)
    return importlib.import_module(JOBS[c.job]).run(c)


def _check_dirs(c: Any) -> None:
    """One line for a run_dir or export.dir it cannot use (a URL scheme other than gs://, or
    gs:// without its backend installed: ``seam_jax.storage.resolve``), before any work."""
    from seam_jax.train.run_dir import resolve

    resolve(c.run_dir)
    if c.export.dir:
        resolve(c.export.dir, "export.dir")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    verbose = "--verbose" in argv[1:]
    argv = [argv[0], *(a for a in argv[1:] if a != "--verbose")]
    setup_logging()
    from seam_jax.errors import SeamError

    global _error_log
    _error_log = None
    try:
        c = parse(argv)
        _error_log = _error_log_for(c)
        from seam_jax.config import validate

        validate(c)  # every field, before the devices, the model or a compile
        _check_dirs(c)
        from seam_jax.jobs.sharding import setup_distributed

        setup_distributed(c)  # multi-host jobs only; before anything touches the devices
        t0 = time.time()
        result = run_config(c)
    except UsageError as e:  # the command line itself: a traceback would show only ours
        return _fail(str(e), verbose, hint=False)
    except (SeamError, ValueError, OSError) as e:
        # A bug would surface as another exception type, with its traceback.
        # Our own errors say what to fix; a traceback helps only with the others'.
        rc = _fail(_one_line(e), verbose, hint=not isinstance(e, SeamError))
        return _leave(getattr(e, "exit_code", rc))  # train.loop.Interrupted: 128 + the signal
    except KeyboardInterrupt:  # before or after training (the loop saves and says so itself)
        print("seam_jax: interrupted (SIGINT)", file=sys.stderr)
        return 130
    except Exception as e:
        line = _library_error(e) or _lost_process_error(e)
        if line is None:
            raise
        return _leave(_fail(line, verbose))
    from seam_jax.jobs.summary import summary_text

    print(summary_text(c, result, time.time() - t0), flush=True)  # stdout holds only this
    return 0


ERROR_LOG = "seam_jax-error.log"
_error_log: pathlib.Path | None = None  # RUN/seam_jax-error.log of the config being run


def _error_log_for(c: Any) -> pathlib.Path | None:
    try:
        from seam_jax.train.run_dir import resolve

        return resolve(c.run_dir) / ERROR_LOG
    except Exception:  # a run_dir it cannot use is reported by the job itself
        return None


def _log_traceback(msg: str) -> pathlib.Path | None:
    """Append the current exception's traceback to ``RUN/seam_jax-error.log`` (when the run
    directory exists: a config error creates none); returns the file, or None."""
    import traceback

    path = _error_log
    if path is None or not path.parent.is_dir() or sys.exc_info()[0] is None:
        return None
    head = f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()}: {msg}\n"
    try:
        from seam_jax import storage

        if not storage.is_local(path):  # a bucket has no append: the object is rewritten
            storage.append_text(path, head + traceback.format_exc())
            return path
        with open(path, "a", encoding="utf-8") as f:
            f.write(head)
            traceback.print_exc(file=f)
    except OSError:  # a read-only or full disk: the line on stderr is what is left
        return None
    return path


def _fail(msg: str, verbose: bool = False, hint: bool = True) -> int:
    """One line on stderr (the traceback first with ``--verbose``, and in any case in
    ``RUN/seam_jax-error.log`` when the run directory exists); exit code 2."""
    if verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)
    logged = _log_traceback(msg)
    if hint and not verbose and logged is not None:
        hint = f" (the traceback is in {logged}; --verbose prints it)"
    else:
        hint = " (rerun with --verbose for the traceback)" if hint and not verbose else ""
    print(f"seam_jax: error: {msg}{hint}", file=sys.stderr)
    return 2


def _one_line(e: BaseException) -> str:
    """``e`` as one line: its type, what is wrong and, for OS errors, the likely fix."""
    import json

    if isinstance(e, json.JSONDecodeError):
        # Reading code that knows the file wraps this in a CorruptFileError; this is the rest.
        return (f"a JSON file is corrupt ({e.msg} at line {e.lineno} column {e.colno}); "
                f"rerun with --verbose to see which, then delete or restore it")
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, FileExistsError)) \
            and e.strerror:
        import errno

        where = f": {e.filename}" if e.filename else ""
        fix = {
            errno.EROFS: "the file system is read-only: choose a writable --config.run_dir "
                         "(and export.dir)",
            errno.EACCES: "no permission: choose a --config.run_dir (and export.dir) you can "
                          "write, or fix its permissions",
            errno.EPERM: "not permitted: choose a --config.run_dir (and export.dir) you can write",
            errno.ENOSPC: "the disk is full: free space, or choose a --config.run_dir "
                          "(and export.dir) on another disk",
            errno.EDQUOT: "the disk quota is exceeded: free space or choose another disk",
        }.get(e.errno, "check the path and the disk")
        return f"{type(e).__name__}: {e.strerror}{where}; {fix}"
    return f"{type(e).__name__}: {str(e).replace(chr(10), ' ')}"


def _multiprocess() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _leave(rc: int) -> int:
    """A failed process of a multi-process job exits at once: at a normal exit JAX's
    shutdown barrier would wait (up to 300 s) for processes that may be gone."""
    if _multiprocess():
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(rc)
    return rc


def _lost_process_error(e: BaseException) -> str | None:
    """One line for a collective that failed because another process of the job is gone."""
    import jax

    if not (_multiprocess() and isinstance(e, jax.errors.JaxRuntimeError)):
        return None
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return (f"a collective with the other processes failed ({first}): another process of "
            f"this job stopped or failed (distributed.heartbeat_timeout bounds the wait for "
            f"one); the checkpoints written so far are kept: start every process again with "
            f"the same command to resume")


def _library_error(e: BaseException) -> str | None:
    """One line for the libraries' errors that mean a bad file rather than a bug."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return None
    if isinstance(e, SafetensorError):
        return (f"SafetensorError: {e}; a .safetensors file is truncated or corrupt: "
                f"re-download or re-export the model")
    return None


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

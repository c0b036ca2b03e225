"""Where seam_jax writes: a local folder or a ``gs://`` bucket, through one path type.

Every output location (``run_dir``, ``export.dir``, ``attack.out_dir``, and everything
under them: checkpoints, metrics, the manifest, cached results, reports, exports) is an
``etils.epath.Path``, made by ``resolve``. A local path (``~`` expanded, made absolute; a
``file://`` URL is its local path) reads and writes the local file system as before. A
``gs://bucket/path`` URL goes through epath's backend for buckets (``gcsfs``, or
TensorFlow's ``gfile`` where TensorFlow is installed), and Orbax writes the checkpoint
arrays to it with TensorStore's own GCS driver. Other URL schemes are refused with one
line: Orbax (0.12) writes arrays to ``gs://`` and local paths only.

An object store is not a file system, and the few operations that need one are here, in
one place, each with what it does on a bucket:

* **Atomic writes** (``write_text``): locally a temporary sibling, fsync and
  ``os.replace``, so a kill leaves the old file or the new one; on a bucket a single
  object write, which appears whole or not at all.
* **Appends** (``append_text``, for the error log): locally ``open("a")``; a bucket has no
  append, so the object is read and written again (small files only). Metrics, which are
  appended every step, are staged instead (``train.metrics``).
* **Libraries that write a local file or folder** (matplotlib's ``savefig``, safetensors,
  a tokenizer's ``save_pretrained``, csv): ``local_file`` and ``local_dir`` give a local
  path; for a bucket it is a temporary one, uploaded when the block succeeds (nothing is
  uploaded when it fails). For a local target they give the target itself.
* **The advisory lock** (``train.run_dir.locked``) is an ``flock``, which an object store
  cannot hold: on a bucket it is skipped with one warning line (one run at a time is then
  the user's to ensure; a pod's processes share the run anyway).
* **Listing and sizes** (``files_under``, ``size``): epath's ``walk`` and ``rglob`` do not
  keep the ``gs://`` prefix or refuse ``**`` on buckets, so files are listed through
  ``iterdir``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from etils import epath

from seam_jax.errors import ConfigError

Path = epath.Path
REMOTE = ("gs",)  # the URL schemes a run directory may have besides local paths


def scheme_of(where: str | os.PathLike) -> str | None:
    """``"gs"`` for ``gs://b/p``, None for a local path (``file://`` URLs included)."""
    text = os.fspath(where)
    if isinstance(text, bytes):
        text = text.decode()
    scheme, sep, _ = text.partition("://")
    if sep and scheme != "file" and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        return scheme
    return None


def is_local(path: str | os.PathLike) -> bool:
    return scheme_of(path) is None


def resolve(where: str | os.PathLike, field: str = "run_dir") -> epath.Path:
    """The one way a job turns ``run_dir`` (or another output location, named by ``field``
    in the error line) into a path; see the module docstring. A ``gs://`` URL whose
    backend is not installed is one line naming what to install."""
    text = os.fspath(where)
    if isinstance(text, bytes):
        text = text.decode()
    scheme, sep, rest = text.partition("://")
    if sep and scheme == "file":
        if rest and not rest.startswith("/"):  # file://host/path: only this host is known
            raise ConfigError(f"{field}={text!r}: a file:// URL names a local path, "
                              f"file:///absolute/path")
        text = rest
    elif scheme_of(text) is not None:
        if scheme not in REMOTE:
            raise ConfigError(
                f"{field}={text!r}: {scheme}:// is not supported (Orbax writes checkpoints to "
                f"local paths and gs:// only); give gs://bucket/path, or mount the storage and "
                f"give its local path")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"{field}={text!r}: name the bucket, gs://bucket/path")
        check_backend(scheme, field, text)
        return epath.Path(text)
    return epath.Path(pathlib.Path(text).expanduser().resolve())


def check_backend(scheme: str, field: str, text: str) -> None:
    """One line if what reads and writes ``scheme://`` in this process is not installed:
    epath's backend (gcsfs, or TensorFlow's gfile), and google-cloud-storage, which Orbax
    asks whether a bucket has a hierarchical namespace before it lists checkpoints."""
    missing = []
    if importlib.util.find_spec("tensorflow") is None:
        import fsspec

        try:
            fsspec.get_filesystem_class("gcs")
        except ImportError:
            missing.append("gcsfs")
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        missing.append("google-cloud-storage")
    if missing:
        raise ConfigError(
            f"{field}={text!r}: a gs:// location needs {' and '.join(missing)} in this Python "
            f"(pip install 'seam_jax[gcs]'), or mount the bucket (gcsfs, Filestore/NFS) and give "
            f"its local path")


def local(path: str | os.PathLike) -> pathlib.Path:
    """``path`` as a ``pathlib.Path``, for what only a local file system does."""
    if not is_local(path):
        raise ValueError(f"{path} is not a local path")
    return pathlib.Path(os.fspath(path))


# --- writes -------------------------------------------------------------------------------

def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` whole or not at all (module docstring)."""
    path = epath.Path(path)
    if not is_local(path):
        path.write_text(text)  # one object: whole or absent
        return
    p = local(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path``; on a bucket, read and write the object again."""
    path = epath.Path(path)
    if is_local(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = path.read_text() if path.is_file() else ""
    path.write_text(old + text)


def upload(src: pathlib.Path, dst: epath.Path, *, last: tuple[str, ...] = ()) -> list[str]:
    """Copy the file ``src``, or every file under the folder ``src``, to ``dst`` (replacing
    what is there); the relative paths named in ``last`` are copied after all others.
    Returns the relative paths copied."""
    dst = epath.Path(dst)
    if src.is_file():
        copy_file(src, dst)
        return [src.name]
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    rels = [r for r in rels if r not in last] + [r for r in last if r in rels]
    for rel in rels:
        copy_file(src / rel, dst / rel)
    return rels


def copy_file(src: pathlib.Path, dst: epath.Path) -> None:
    if is_local(dst):
        local(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local(dst))
        return
    with open(src, "rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def download(src: epath.Path, dst: pathlib.Path) -> bool:
    """Copy the file ``src`` to the local ``dst``; False when there is none."""
    src = epath.Path(src)
    if not src.is_file():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
    return True


@contextlib.contextmanager
def local_file(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local path to write ``path`` through: ``path`` itself when it is local, else a
    temporary file uploaded to it when the block succeeds."""
    path = epath.Path(path)
    if is_local(path):
        yield local(path)
        return
    with tempfile.TemporaryDirectory(prefix="seam_jax-stage-") as d:
        tmp = pathlib.Path(d) / path.name
        yield tmp
        if tmp.exists():
            upload(tmp, path)


@contextlib.contextmanager
def local_dir(path: str | os.PathLike, *, upload_files: bool = True) -> Iterator[pathlib.Path]:
    """A local folder to write the files of the folder ``path`` in: ``path`` itself (made)
    when it is local, else a temporary folder whose files are uploaded under ``path`` when
    the block succeeds (``upload_files=False``: not at all, for the processes of a job
    other than the one that writes the shared files)."""
    path = epath.Path(path)
    if is_local(path):
        local(path).mkdir(parents=True, exist_ok=True)
        yield local(path)
        return
    with tempfile.TemporaryDirectory(prefix="seam_jax-stage-") as d:
        yield pathlib.Path(d)
        if upload_files:
            upload(pathlib.Path(d), path)


def download_dir(src: str | os.PathLike) -> pathlib.Path:
    """A local copy of the folder ``src`` (``src`` itself when it is local), for a library
    that reads only local folders (transformers' ``from_pretrained``). The copy is removed
    when the process exits."""
    src = epath.Path(src)
    if is_local(src):
        return local(src)
    dst = stage_dir(prefix=f"seam_jax-{src.name}-")
    atexit.register(shutil.rmtree, dst, True)
    for rel, p in files_under(src):
        download(p, dst / rel)
    return dst


def rmtree(path: str | os.PathLike) -> None:
    """Remove the folder ``path`` and all under it, if it is there (in a bucket: its
    objects)."""
    path = epath.Path(path)
    if is_local(path):
        shutil.rmtree(local(path), ignore_errors=True)
    elif path.exists():
        path.rmtree(missing_ok=True)


def stage_dir(prefix: str = "seam_jax-stage-") -> pathlib.Path:
    """A fresh local temporary folder (the caller removes it)."""
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix))


# --- listing ------------------------------------------------------------------------------

def files_under(d: str | os.PathLike) -> list[tuple[str, epath.Path]]:
    """(relative posix path, path) of every file under the folder ``d``, sorted."""
    d = epath.Path(d)
    if is_local(d):
        root = local(d)
        return sorted((p.relative_to(root).as_posix(), epath.Path(p))
                      for p in root.rglob("*") if p.is_file())
    out: list[tuple[str, epath.Path]] = []

    def walk(p: epath.Path, rel: str) -> None:
        for child in p.iterdir():
            r = f"{rel}{child.name}"
            if child.is_dir():
                walk(child, r + "/")
            else:
                out.append((r, child))

    walk(d, "")
    return sorted(out)


def size(path: str | os.PathLike) -> int:
    path = epath.Path(path)
    return os.stat(path).st_size if is_local(path) else int(path.stat().length)

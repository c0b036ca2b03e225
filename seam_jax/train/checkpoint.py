"""Orbax checkpoints of the train state: async, every N steps, keep K, resume from the latest.

Each checkpoint holds the state pytree (step, params, optimizer state, RNG) and a
JSON record of the run (data seed and position, config digest). Restoring targets
an abstract tree that carries shardings, so a checkpoint written on one mesh
restores onto another.

One restore rule, for resuming a run and for exporting its params: a restore is
exact or refused. Every array of the target tree must be in the checkpoint with its
shape and dtype, and every array of the checkpoint (of the part restored: the whole
state, or its params) must be in the target; otherwise ``CheckpointMismatch`` names
the differing keys, and the checkpoint is left where it is. A checkpoint whose files
cannot be read, or whose bytes are not those that were saved, is a different matter:
it is moved aside with one warning line and the previous one is used; nothing is
deleted.

Checksums. Orbax writes a step into a temporary directory and renames it to ``<step>``
once every file is written (its atomic finalize; with async saves this happens in a
background thread). Only after that, when the save is known to be complete (before
the next save starts, and in ``wait``/``close``), process 0 hashes every file of the
step directory and writes ``<step>/seam_sha256.json`` (relative path -> size and
sha256) through a temporary file, fsync and ``os.replace``, so the file is either
absent or whole. A restore first checks every listed file against it, before Orbax
reads anything: a missing, resized or altered file sets the checkpoint aside (flipped
bytes in an array's data would otherwise load as wrong numbers, since Orbax's chunks
carry no checksum of their own). Checking first also keeps a damaged directory away
from Orbax's reader, which, when one read fails, closes its event loop with the other
tensorstore reads still in flight and so prints one "Event loop is closed" traceback
per array. With ``kill -9`` at any moment a step directory is one of: absent or a
temporary directory (Orbax ignores it; the previous step is used), finalized without
``seam_sha256.json`` (killed between the finalize and the hash, or written by an
older seam_jax: Orbax's finalize vouches that it is whole, so it is used, unverified,
with one warning line), or finalized with a whole ``seam_sha256.json`` (verified).

The directory is an ``epath.Path`` (``seam_jax.storage``): local, or in a ``gs://``
bucket, where Orbax writes the arrays through TensorStore's GCS driver and marks a
finished step with its ``commit_success.txt`` instead of a rename. There the checksum
file is one object write (whole or absent, as the rename makes it locally), and hashing
reads every file of the step back from the bucket once at save and once at restore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from seam_jax import memory, storage
from seam_jax.errors import SeamError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 50
    keep: int = 2
    use_async: bool = True


def abstract_like(tree: Any) -> Any:
    """Shapes, dtypes and shardings of ``tree``, for restoring into the same layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


class CheckpointMismatch(SeamError):
    """A checkpoint whose arrays are not those of the tree it is restored into."""


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def array_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params.model.embed.embedding": (shape, dtype), ...}`` for every array of ``tree``,
    named as Orbax names the arrays it saves (keys joined by dots)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {".".join(_key_name(k) for k in path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
            for path, leaf in flat}


def _saved_specs(metadata: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    tree = getattr(metadata, "tree", metadata)
    return {m.name: (tuple(m.shape), str(np.dtype(m.dtype))) for m in jax.tree.leaves(tree)}


def _listed(names: list[str], limit: int = 4) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def mismatch(saved: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
    """What differs between two ``array_specs``, in one line; None when they are the same."""
    parts = []
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    differ = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    if missing:
        parts.append(f"not in the checkpoint: {_listed(missing)}")
    if extra:
        parts.append(f"only in the checkpoint (a restore would drop them): {_listed(extra)}")
    if differ:
        k = differ[0]
        parts.append(f"another shape or dtype: {_listed(differ)} (e.g. {k}: saved "
                     f"{saved[k][0]} {saved[k][1]}, wanted {wanted[k][0]} {wanted[k][1]})")
    return "; ".join(parts) or None


SUMS = "seam_sha256.json"
_CHUNK = 1 << 22  # read files 4 MiB at a time when hashing


def _file_sha256(path: storage.Path) -> str:
    h = hashlib.sha256()
    with storage.Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files_of(step_dir: storage.Path) -> list[tuple[str, storage.Path]]:
    return [(rel, p) for rel, p in storage.files_under(step_dir)
            if p.name != SUMS and not p.name.startswith(SUMS + ".")]


def write_sums(step_dir: str | os.PathLike) -> storage.Path:
    """Hash every file of a finalized step directory into ``<step_dir>/seam_sha256.json``,
    atomically (temporary file, fsync, ``os.replace``; in a bucket, one object write)."""
    step_dir = storage.Path(step_dir)
    files = {rel: {"size": storage.size(p), "sha256": _file_sha256(p)}
             for rel, p in _files_of(step_dir)}
    out = step_dir / SUMS
    if not storage.is_local(step_dir):
        out.write_text(json.dumps({"version": 1, "files": files}, indent=1, sort_keys=True))
        return out
    tmp = step_dir / f"{SUMS}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"version": 1, "files": files}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    try:  # make the rename itself durable
        fd = os.open(step_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return out


class ChecksumMismatch(SeamError):
    """A checkpoint file whose size or sha256 is not the one written at save."""


class MissingCheckpointFile(ChecksumMismatch):
    """A file listed in ``seam_sha256.json`` that is not there."""


def check_sums(step_dir: str | os.PathLike) -> bool:
    """True when ``step_dir`` has a ``seam_sha256.json`` and every file it lists is there
    with that size and sha256; False when it has none (nothing to check against).
    Raises ``ChecksumMismatch`` naming the first file that differs."""
    step_dir = storage.Path(step_dir)
    sums = step_dir / SUMS
    if not sums.is_file():
        return False
    try:
        files = json.loads(sums.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise ChecksumMismatch(f"{sums} is not a checksum file ({type(e).__name__}: {e})") from None
    for rel, want in sorted(files.items()):
        path = step_dir / rel
        if not path.is_file():
            raise MissingCheckpointFile(f"{rel} is missing")
        size = storage.size(path)
        if size != want["size"]:
            raise ChecksumMismatch(f"{rel} has {size} bytes, {want['size']} were saved")
        if _file_sha256(path) != want["sha256"]:
            raise ChecksumMismatch(f"{rel} has another sha256 than the one written at save")
    return True


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig) -> None:
        from seam_jax.train.run_dir import resolve

        self.directory = resolve(directory, "checkpoint directory")
        self.cfg = cfg
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, save_interval_steps=1,
                enable_async_checkpointing=cfg.use_async, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
        )
        self._unsummed: list[int] = []  # saved steps whose seam_sha256.json is not written yet

    def _write_pending_sums(self) -> None:
        """After the saves in flight are complete (finalized by Orbax): hash them."""
        if not self._unsummed:
            return
        self.manager.wait_until_finished()
        pending, self._unsummed = self._unsummed, []
        if jax.process_index() != 0:
            return
        for step in pending:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # max_to_keep may already have removed it
                write_sums(step_dir)

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        if not force and (step % self.cfg.every):
            return False
        self._write_pending_sums()  # Orbax waits for the previous save here anyway
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        if saved:
            self._unsummed.append(step)
            if not self.cfg.use_async:
                self._write_pending_sums()
                # The save's serialization buffers, freed, back to the system: kept by the C
                # heap they raised every later step's resident memory (the default run's
                # SEAM steps peaked at 6.07 GB before its checkpoint at step 8, 6.81 after).
                memory.release()
        return saved

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, *, only: str | None = None,
                       hint: str = "resume with the model and config that wrote it, or choose "
                                   "a new run_dir") -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) from the newest readable checkpoint, or None when there is none.

        ``only="params"``: ``abstract_state`` is the params tree alone, restored from the
        checkpoint's ``params`` (and compared with them alone; the optimizer state stays
        unread). Raises ``CheckpointMismatch`` (see the module docstring), whose line
        ends with ``hint``.
        """
        wanted = array_specs(abstract_state if only is None else {only: abstract_state})
        self._write_pending_sums()
        for step in reversed(self.steps()):
            try:
                verified = check_sums(self.directory / str(step))
            except ChecksumMismatch as e:
                self._set_aside_with_line(step, "cannot be read" if isinstance(
                    e, MissingCheckpointFile) else "does not hold the bytes that were saved", e)
                continue
            except OSError as e:
                self._unreadable(step, e)
                continue
            if not verified:
                log.warning("checkpoint at step %d in %s has no %s (written by an older "
                            "seam_jax, or the run stopped between the save and its checksum); "
                            "it is used unverified", step, self.directory, SUMS)
            try:
                saved = _saved_specs(self.manager.item_metadata(step)["state"])
            except Exception as e:  # orbax raises many types for a damaged directory
                self._unreadable(step, e)
                continue
            if only is not None:
                saved = {k: v for k, v in saved.items() if k.split(".", 1)[0] == only}
            diff = mismatch(saved, wanted)
            if diff:
                raise CheckpointMismatch(
                    f"the checkpoint at step {step} in {self.directory} does not hold the arrays "
                    f"this run needs ({diff}); {hint}")
            try:
                return step, *self._read(step, abstract_state, only)
            except Exception as e:
                self._unreadable(step, e)
        return None

    def _read(self, step: int, abstract: Any, only: str | None) -> tuple[Any, dict[str, Any]]:
        if only is None:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
            return out["state"], dict(out["meta"])
        # A subtree: the arrays were compared above, so leaving out the rest of the state
        # (optimizer moments, step, RNG) drops nothing of what is restored.
        target = {only: abstract}
        with ocp.PyTreeCheckpointer() as reader:  # closed here, not left to the collector
            state = reader.restore(
                self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                    target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return state[only], dict(meta["meta"])

    def _unreadable(self, step: int, e: Exception) -> None:
        self._set_aside_with_line(step, "cannot be read", e)

    def _set_aside_with_line(self, step: int, what: str, e: Exception) -> None:
        aside = self._set_aside(step)
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        log.warning("checkpoint at step %d in %s %s (%s: %s); it was moved to %s and the "
                    "previous one is used", step, self.directory, what, type(e).__name__,
                    reason, aside)

    def _set_aside(self, step: int) -> storage.Path:
        """Rename an unreadable checkpoint out of the manager's sight (never delete it)."""
        src = self.directory / str(step)
        dst = self.directory / f"unreadable-{step}-{int(time.time())}"
        try:
            if src.exists():
                src.rename(dst)
        except OSError:  # a read-only run directory: leave it, skip it
            return src
        self.manager.reload()
        return dst

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._write_pending_sums()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._write_pending_sums()
        self.manager.close()


def restore_params(directory: str | os.PathLike, like: Any, *, hint: str) -> tuple[int, Any]:
    """(step, params) of the newest readable checkpoint in ``directory``, restored into the
    shapes, dtypes and shardings of ``like`` by the one restore rule (module docstring)."""
    ckpt = Checkpointer(directory, CheckpointConfig(use_async=False))
    try:
        found = ckpt.restore_latest(abstract_like(like), only="params", hint=hint)
    finally:
        ckpt.close()
    if found is None:
        raise SeamError(f"{directory} holds no readable checkpoint")
    return found[0], found[1]

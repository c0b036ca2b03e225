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
cannot be read is a different matter: it is moved aside with a warning and the
previous one is used; nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

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


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, cfg: CheckpointConfig) -> None:
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.cfg = cfg
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, save_interval_steps=1,
                enable_async_checkpointing=cfg.use_async, create=True),
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
        )

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        if not force and (step % self.cfg.every):
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

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
        for step in reversed(self.steps()):
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
        state = ocp.PyTreeCheckpointer().restore(
            self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return state[only], dict(meta["meta"])

    def _unreadable(self, step: int, e: Exception) -> None:
        aside = self._set_aside(step)
        log.warning("checkpoint at step %d in %s cannot be read (%s: %s); it was moved "
                    "to %s and the previous one is used", step, self.directory,
                    type(e).__name__, str(e)[:200], aside)

    def _set_aside(self, step: int) -> pathlib.Path:
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

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str | pathlib.Path, like: Any, *, hint: str) -> tuple[int, Any]:
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

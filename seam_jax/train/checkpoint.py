"""Orbax checkpoints of the train state: async, every N steps, keep K, resume from the latest.

Each checkpoint holds the state pytree (step, params, optimizer state, RNG) and a
JSON record of the run (data seed and position, config digest). Restoring targets
an abstract tree that carries shardings, so a checkpoint written on one mesh
restores onto another. A latest checkpoint that cannot be read is skipped with a
warning and the previous one is used; nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

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


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, cfg: CheckpointConfig) -> None:
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.cfg = cfg
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=cfg.keep, save_interval_steps=1,
                enable_async_checkpointing=cfg.use_async, create=True),
        )

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
        if not force and (step % self.cfg.every):
            return False
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) from the newest readable checkpoint, or None when there is none."""
        for step in reversed(self.steps()):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["meta"])
            except Exception as e:  # orbax raises many types for a damaged directory
                aside = self._set_aside(step)
                log.warning("checkpoint at step %d in %s cannot be read (%s: %s); it was moved "
                            "to %s and the previous one is used", step, self.directory,
                            type(e).__name__, str(e)[:200], aside)
        return None

    def _set_aside(self, step: int) -> pathlib.Path:
        """Rename an unreadable checkpoint out of the manager's sight (never delete it)."""
        src = self.directory / str(step)
        dst = self.directory / f"unreadable-{step}-{int(time.time())}"
        if src.exists():
            src.rename(dst)
        self.manager.reload()
        return dst

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

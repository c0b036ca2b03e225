"""The host-side training loop shared by SEAM defense and the attacks.

It runs a step jitted once by ``train.step.build_step`` (which donates the state),
resumes from the newest readable checkpoint, feeds the batch for each global step (a pure function of the
step, so a resumed run sees the same stream), shows a progress bar, writes
metrics, checkpoints every N steps, and stops on a non-finite loss without
touching the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax.errors import SeamError
from seam_jax.model.api import Params
from seam_jax.train.checkpoint import CheckpointConfig, Checkpointer, abstract_like
from seam_jax.train.metrics import MetricsWriter
from seam_jax.train.step import State, TrainStep

log = logging.getLogger(__name__)


class TrainingDiverged(SeamError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


class BatchSource(Protocol):
    def batch_at(self, step: int) -> dict[str, Any]: ...


@dataclasses.dataclass
class LoopConfig:
    steps: int
    run_dir: pathlib.Path
    seed: int = 0
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log_every: int = 1
    desc: str = "train"
    postfix: tuple[str, ...] = ("loss",)
    progress: bool = True
    # For tests: stop after this many steps in this process (simulates a kill).
    stop_after: int | None = None


def run(
    params: Params,
    step_fn: TrainStep,
    source: BatchSource,
    loop: LoopConfig,
    *,
    meta: dict[str, Any] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    place_batch: Callable[[Any], Any] | None = None,
    keep_params: bool = False,
) -> State:
    """Train for ``loop.steps`` micro-steps of ``step_fn`` (``train.step.build_step``); return
    the final state.

    The step donates its state, so ``params`` are consumed: their buffers become the
    trained ones. ``keep_params=True`` trains a copy instead, for a caller that uses
    ``params`` afterwards. ``place_batch`` turns ``source.batch_at(step)`` into the
    step's input (default: host arrays, which the jitted step places; sharded runs
    pass ``ShardedSetup.batch_to_global``).
    """
    place_batch = place_batch or (lambda b: jax.tree.map(np.asarray, b))
    target_keys = step_fn.target_keys
    if keep_params:
        params = jax.tree.map(jnp.copy, params)
    state = step_fn.init(params, loop.seed)
    ckpt = Checkpointer(loop.run_dir / "checkpoints", loop.checkpoint)
    restored = ckpt.restore_latest(abstract_like(state))
    start = 0
    if restored is not None:
        start, state, saved_meta = restored
        log.info("resuming from the checkpoint at step %d in %s", start, ckpt.directory)
        if meta and saved_meta.get("config_digest") not in (None, meta.get("config_digest")):
            log.warning("the checkpoint was written by a different config (digest %s, now %s)",
                        saved_meta.get("config_digest"), meta.get("config_digest"))
    writer = MetricsWriter(loop.run_dir)
    bar = None
    if loop.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=loop.steps, initial=start, desc=loop.desc, unit="step", dynamic_ncols=True)
    last_good = start
    done_here = 0
    try:
        for step in range(start, loop.steps):
            batches = place_batch(source.batch_at(step))
            state, metrics = step_fn(state, batches)
            m = {k: float(v) if np.ndim(v) == 0 else v for k, v in jax.device_get(metrics).items()}
            if m.get("nonfinite") and not m.get("empty_mask"):
                raise TrainingDiverged(
                    f"step {step}: the loss or gradient is not finite (loss={m['loss']}, "
                    f"grad_norm={m['grad_norm']}); training stopped. The last good checkpoint "
                    f"(step {last_good}) in {ckpt.directory} is untouched; lower the learning "
                    f"rate or check the data")
            if m.get("empty_mask"):
                log.warning("step %d skipped: a batch has no target tokens (%s); its responses "
                            "may be truncated by the context length", step,
                            {k: int(m[k]) for k in target_keys})
            row = writer.write(step + 1, m)
            if on_metrics:
                on_metrics(step + 1, row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in loop.postfix if k in row}, refresh=False)
            run_meta = {**(meta or {}), "step": step + 1, "data_position": step + 1, "seed": loop.seed}
            if ckpt.save(step + 1, state, run_meta, force=step + 1 == loop.steps):
                last_good = step + 1
            done_here += 1
            if loop.stop_after is not None and done_here >= loop.stop_after:
                break
    finally:
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    return state

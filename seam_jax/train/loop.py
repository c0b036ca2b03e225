"""The host-side training loop shared by SEAM defense and the attacks.

It runs a step jitted once by ``train.step.build_step`` (which donates the state),
resumes from the newest readable checkpoint, feeds the batch for each global step (a pure function of the
step, so a resumed run sees the same stream), shows a progress bar, writes
metrics, checkpoints every N steps, and stops on a non-finite loss without
touching the last good checkpoint.

It holds the run directory's lock (``train.run_dir.locked``) for the run; on resume it
drops the metrics rows past the checkpoint's step. SIGINT or SIGTERM during training
finishes the current step, saves a checkpoint at it and raises ``Interrupted`` (one
line; a second signal exits at once); in a multi-process run every process stops at the
same step when any one of them is signalled. A run that trains nothing stops with
``NothingTrained``: see ``LoopConfig.empty_first``.

A state's frozen tree (``train.step.Frozen``: TAR's reference model, LoRA's base weights)
is not checkpointed: on resume it is derived again from the ``params`` given, the model the
job loaded, which is the one the killed run started from (run.json refuses other weights).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax import memory
from seam_jax.errors import SeamError
from seam_jax.model.api import Params
from seam_jax.train.checkpoint import CheckpointConfig, Checkpointer, abstract_like
from seam_jax.train.metrics import MetricsWriter
from seam_jax.train.run_dir import locked
from seam_jax.train.step import FROZEN, State, TrainStep, checkpointed

log = logging.getLogger(__name__)


class TrainingDiverged(SeamError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


class NothingTrained(SeamError):
    """Too many steps were skipped for an empty loss mask: the run would train nothing."""


class Interrupted(SeamError):
    """SIGINT or SIGTERM stopped training after a checkpoint at the current step."""

    def __init__(self, msg: str, signum: int) -> None:
        super().__init__(msg)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _Signals:
    """SIGINT/SIGTERM handlers for the loop: the first asks it to stop after the current
    step; a second exits at once (os._exit, without waiting for a checkpoint). Only the
    main thread can install handlers; elsewhere the defaults stay."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            _say(f"seam_jax: {signal.Signals(signum).name} again: exiting now, without a "
                 f"checkpoint at this step")
            os._exit(128 + signum)
        self.signum = signum
        _say(f"seam_jax: {signal.Signals(signum).name}: stopping after this step and saving a "
             f"checkpoint (send it again to exit at once)")

    def restore(self) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)

    def agreed(self) -> int | None:
        """The signal that stops training after this step, the same in every process: in a
        multi-process run each process reads every process's flag (one host all-gather per
        step), so all stop at one step and save one checkpoint, whichever process the pod
        or SLURM signalled first; a process's own signal is read once, here."""
        mine = self.signum
        if jax.process_count() == 1:
            return mine
        from jax.experimental import multihost_utils

        flags = np.ravel(multihost_utils.process_allgather(np.asarray(mine or 0, np.int32)))
        got = [int(x) for x in flags if x]
        return got[0] if got else None


def _say(line: str) -> None:
    """One line on stderr from a signal handler: written to the file descriptor directly.
    ``print`` there can raise "reentrant call" when the signal interrupted a write to
    ``sys.stderr`` (a log line) on the main thread."""
    try:
        sys.stderr.flush()
    except (RuntimeError, ValueError, OSError):
        pass
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):  # no real fd
        try:
            print(line, file=sys.stderr, flush=True)
        except RuntimeError:
            pass


class BatchSource(Protocol):
    def batch_at(self, step: int) -> dict[str, Any]: ...


@dataclasses.dataclass
class LoopConfig:
    steps: int
    run_dir: os.PathLike  # a local path or a gs:// epath.Path (seam_jax.storage)
    seed: int = 0
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    log_every: int = 1
    desc: str = "train"
    postfix: tuple[str, ...] = ("loss",)
    progress: bool = True
    # For tests: stop after this many steps in this process (simulates a kill).
    stop_after: int | None = None
    # A run that trains nothing fails (NothingTrained): once ``empty_first`` steps (or all
    # ``steps``, if fewer) have run in this process, it stops as soon as more than
    # ``empty_fraction`` of them were skipped for an empty loss mask; so all of the first
    # five skipped stops it at the fifth. A few skipped steps (a batch of rows whose
    # responses the context cuts off) are only warned about.
    empty_first: int = 5
    empty_fraction: float = 0.5
    # The end of NothingTrained's line: how many rows fit the context, what to change.
    empty_hint: str = ("the responses are cut off by the context length: raise it, or use "
                       "shorter prompts")


def run(
    params: Params,
    step_fn: TrainStep,
    source: BatchSource,
    loop: LoopConfig,
    *,
    meta: dict[str, Any] | None = None,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    on_state: Callable[[int, State], None] | None = None,
    place_batch: Callable[[Any], Any] | None = None,
    keep_params: bool = False,
) -> State:
    """Train for ``loop.steps`` micro-steps of ``step_fn`` (``train.step.build_step``); return
    the final state.

    The step donates its state, so ``params`` are consumed: their buffers become the
    trained ones. ``keep_params=True`` trains a copy instead, for a caller that uses
    ``params`` afterwards. ``place_batch`` turns ``source.batch_at(step)`` into the
    step's input (default: host arrays, which the jitted step places; sharded runs
    pass ``ShardedSetup.batch_to_global``). ``on_state(step, state)`` is called after
    each step (numbered from 1, as ``on_metrics``) with the new state, before its
    checkpoint is saved; it must not modify or donate the state.
    """
    place_batch = place_batch or (lambda b: jax.tree.map(np.asarray, b))
    target_keys = step_fn.target_keys
    if keep_params:
        params = jax.tree.map(jnp.copy, params)
    with locked(loop.run_dir):  # a second run on this directory refuses with one line
        return _run(params, step_fn, source, loop, meta, on_metrics, on_state, place_batch,
                    target_keys)


def _run(params: Params, step_fn: TrainStep, source: BatchSource, loop: LoopConfig,
         meta: dict[str, Any] | None, on_metrics: Callable[[int, dict[str, float]], None] | None,
         on_state: Callable[[int, State], None] | None, place_batch: Callable[[Any], Any],
         target_keys: tuple[str, ...]) -> State:
    state = step_fn.init(params, loop.seed)
    ckpt = Checkpointer(loop.run_dir / "checkpoints", loop.checkpoint)
    restored = ckpt.restore_latest(abstract_like(checkpointed(state)))
    start = 0
    if restored is not None:
        start, saved, saved_meta = restored
        state = {**saved, **({FROZEN: state[FROZEN]} if FROZEN in state else {})}
        log.info("resuming from the checkpoint at step %d in %s", start, ckpt.directory)
        if meta and saved_meta.get("config_digest") not in (None, meta.get("config_digest")):
            log.warning("the checkpoint was written by a different config (digest %s, now %s)",
                        saved_meta.get("config_digest"), meta.get("config_digest"))
    writer = MetricsWriter(loop.run_dir, keep_until=start)  # no rows past the checkpoint
    bar = None
    if loop.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=loop.steps, initial=start, desc=loop.desc, unit="step", dynamic_ncols=True)
    last_good = start
    done_here = skipped = 0
    signals = _Signals()
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
                skipped += 1
                ran = done_here + 1
                if ran >= min(loop.empty_first, loop.steps) and skipped > loop.empty_fraction * ran:
                    raise NothingTrained(
                        f"{skipped} of the {ran} steps run (to step {step + 1}) had "
                        f"no target tokens, so training stopped (the model would stay as it "
                        f"was; the last checkpoint, step {last_good}, is untouched): "
                        f"{loop.empty_hint}")
                log.warning("step %d skipped: a batch has no target tokens (%s); its responses "
                            "may be truncated by the context length", step,
                            {k: int(m[k]) for k in target_keys})
            row = writer.write(step + 1, m)
            if on_metrics:
                on_metrics(step + 1, row)
            if on_state:
                on_state(step + 1, state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in loop.postfix if k in row}, refresh=False)
            run_meta = {**(meta or {}), "step": step + 1, "data_position": step + 1, "seed": loop.seed}
            # Read once: a signal that lands between the save and the check below would
            # otherwise stop the run at a step it did not save (it stops after the next one).
            stop = signals.agreed()
            if ckpt.save(step + 1, checkpointed(state), run_meta,
                         force=step + 1 == loop.steps or stop is not None):
                last_good = step + 1
                writer.sync()  # a bucket's metrics.jsonl reaches the checkpoint's step
            done_here += 1
            if done_here == 1:
                memory.release()  # the first step's compilation (XLA's and LLVM's), freed
            if stop is not None:
                ckpt.wait()
                raise Interrupted(
                    f"{signal.Signals(stop).name}: training stopped at step {step + 1} "
                    f"of {loop.steps}; its checkpoint is in {ckpt.directory}: rerun the same "
                    f"command to resume from it", stop)
            if loop.stop_after is not None and done_here >= loop.stop_after:
                break
    finally:
        signals.restore()
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    return state

"""Metrics sinks: JSON lines and TensorBoard event files in the run directory.

Both are appended to at every step, which a bucket cannot do. For a run directory in a
bucket (``gs://``) they are written to a local staging folder (the run's
``metrics.jsonl`` is copied into it first) and uploaded whole by ``sync``: the training
loop calls it after each checkpoint save, so the bucket's rows reach at least the
newest checkpoint (a resume drops any past it), and ``close`` calls it at the end. A
run killed between two checkpoints loses only rows that a resume would drop anyway.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from typing import Any

import numpy as np

from seam_jax import storage


class MetricsWriter:
    """Appends rows to ``RUN/NAME.jsonl``. ``keep_until``: a resumed run's step; rows past it
    (written after that checkpoint by a run that was then killed) are dropped first, so the
    file holds each step once. In a bucket the files are staged (module docstring)."""

    SYNC_SECONDS = 60.0  # in a bucket, rows are also uploaded at most this long after written

    def __init__(self, run_dir: str | os.PathLike, name: str = "metrics", *,
                 keep_until: int | None = None) -> None:
        self.dir = storage.Path(run_dir)
        self.name = name
        self._jsonl = self._tb = None
        self._stage = None  # the local folder the files are written in, for a bucket
        self._synced = time.monotonic()
        import jax

        if jax.process_index() != 0:  # the processes of a job share the run directory
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if storage.is_local(self.dir):
            where = storage.local(self.dir)
        else:
            where = self._stage = storage.stage_dir()
            storage.download(self.dir / f"{name}.jsonl", where / f"{name}.jsonl")
        if keep_until is not None:
            truncate_metrics(where / f"{name}.jsonl", keep_until)
        self._jsonl = open(where / f"{name}.jsonl", "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(where / "tensorboard" / name))
        except ImportError:  # TensorBoard files are a convenience; JSON lines are the record
            self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        row = {k: _scalar(v) for k, v in metrics.items()}
        if self._jsonl is None:  # not process 0
            return row
        self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        if self._stage is not None and time.monotonic() - self._synced > self.SYNC_SECONDS:
            self.sync()
        return row

    def sync(self) -> None:
        """In a bucket: upload the staged files (the whole ``NAME.jsonl`` and this run's
        TensorBoard files). Locally the files are the run directory's own: nothing to do."""
        if self._stage is None:
            return
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()
        storage.upload(self._stage, self.dir)
        self._synced = time.monotonic()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._stage is not None:
            try:
                storage.upload(self._stage, self.dir)
            finally:
                shutil.rmtree(self._stage, ignore_errors=True)
                self._stage = None


def _scalar(v: Any) -> float | int:
    a = np.asarray(v)
    return int(a) if a.dtype.kind in "iu" else float(a)


def truncate_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the rows of ``path`` up to ``step`` (and no half-written last line); rewrite it
    through a rename (in a bucket, one object write). Returns how many rows were dropped."""
    path = storage.Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a kill
            dropped += bool(line.strip())
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        storage.write_text(path, "".join(l + "\n" for l in kept))
    return dropped


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(l) for l in storage.Path(path).read_text().splitlines() if l.strip()]

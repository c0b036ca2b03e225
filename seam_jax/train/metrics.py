"""Metrics sinks: JSON lines and TensorBoard event files in the run directory."""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import numpy as np


class MetricsWriter:
    """Appends rows to ``RUN/NAME.jsonl``. ``keep_until``: a resumed run's step; rows past it
    (written after that checkpoint by a run that was then killed) are dropped first, so the
    file holds each step once."""

    def __init__(self, run_dir: str | pathlib.Path, name: str = "metrics", *,
                 keep_until: int | None = None) -> None:
        self.dir = pathlib.Path(run_dir)
        self._jsonl = self._tb = None
        import jax

        if jax.process_index() != 0:  # the processes of a job share the run directory
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if keep_until is not None:
            truncate_metrics(self.dir / f"{name}.jsonl", keep_until)
        self._jsonl = open(self.dir / f"{name}.jsonl", "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard" / name))
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
        return row

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _scalar(v: Any) -> float | int:
    a = np.asarray(v)
    return int(a) if a.dtype.kind in "iu" else float(a)


def truncate_metrics(path: str | pathlib.Path, step: int) -> int:
    """Keep the rows of ``path`` up to ``step`` (and no half-written last line); rewrite it
    through a rename. Returns how many rows were dropped."""
    path = pathlib.Path(path)
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
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(l + "\n" for l in kept))
        os.replace(tmp, path)
    return dropped


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l.strip()]

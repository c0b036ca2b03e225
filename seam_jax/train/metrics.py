"""Metrics sinks: JSON lines and TensorBoard event files in the run directory."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np


class MetricsWriter:
    def __init__(self, run_dir: str | pathlib.Path, name: str = "metrics") -> None:
        self.dir = pathlib.Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.dir / f"{name}.jsonl", "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard" / name))
        except ImportError:  # TensorBoard files are a convenience; JSON lines are the record
            self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, float]:
        row = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, **row}) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
        return row

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _scalar(v: Any) -> float | int:
    a = np.asarray(v)
    return int(a) if a.dtype.kind in "iu" else float(a)


def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l.strip()]

"""The data of one experiment, from a config: splits, SEAM batches and evaluation items."""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

import ml_collections as mlc

from seam_jax import storage
from seam_jax.data import (
    SeamBatches, SeamSplits, build_splits, load_rows, write_proxy,
)
from seam_jax.data.proxy import DEFAULT_N_BENIGN, benign_eval_items
from seam_jax.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExperimentData:
    splits: SeamSplits
    benign_rows: list[dict[str, Any]]
    # Benign items with checkable answers, held out of training (proxy data only).
    benign_eval: list[Any]
    files: dict[str, pathlib.Path | str]


def load_experiment_data(c: mlc.ConfigDict, run_dir: os.PathLike) -> ExperimentData:
    d = c.data
    if d.source == "proxy":
        n_harmful = d.n_defense + d.n_attack
        # RUN/data; in a bucket the files are written locally, read there and uploaded.
        import jax

        with storage.local_dir(storage.Path(run_dir) / "data",
                               upload_files=jax.process_index() == 0) as where:
            files = write_proxy(where, d.seed, n_harmful=n_harmful,
                                n_benign=DEFAULT_N_BENIGN, n_test=max(d.n_test, 1))
            rows = _rows(files, dict(harmful_split="train", benign_split="train",
                                     test_split="train"))
        files = {k: storage.Path(run_dir) / "data" / p.name for k, p in files.items()}
        benign_eval = benign_eval_items(d.seed, max(c.eval.n_prompts, c.utility.n_benign),
                                        n_train=DEFAULT_N_BENIGN)
    elif d.source == "files":
        missing = [k for k in ("harmful", "benign", "test") if not d[k]]
        if missing:
            raise ConfigError(f"data.source='files' needs data.{', data.'.join(missing)} "
                              f"(a local file or a hub id each)")
        files = {"harmful": d.harmful, "benign": d.benign, "test": d.test}
        rows = _rows(files, dict(harmful_split=d.harmful_split, benign_split=d.benign_split,
                                 test_split=d.test_split))
        benign_eval = []
    else:
        raise ConfigError(f"data.source={d.source!r}; choose 'proxy' or 'files'")
    harmful, benign, test = rows
    splits = build_splits(harmful, test, n_defense=d.n_defense, n_attack=d.n_attack,
                          n_test=d.n_test, seed=d.seed)
    return ExperimentData(splits, benign, benign_eval, files)


def _rows(files: dict[str, Any], splits_kw: dict[str, str]) -> tuple[list, list, list]:
    return (load_rows(files["harmful"], "refusal", split=splits_kw["harmful_split"]),
            load_rows(files["benign"], "alpaca", split=splits_kw["benign_split"]),
            load_rows(files["test"], "beavertails", split=splits_kw["test_split"]))


def seam_batches(c: mlc.ConfigDict, tok: Any, data: ExperimentData) -> SeamBatches:
    return SeamBatches(tok, data.splits.defense, data.benign_rows, batch_size=c.data.batch_size,
                       seq_len=c.data.context_length, seed=c.data.seed, fmt=c.data.format,
                       bgn_loss_on=c.data.benign_loss_on)

"""Run harmful fine-tuning attacks on any checkpoint, one cell or a resumable sweep.

A checkpoint is an HF directory, a seam_jax run directory (its ``defended-hf``
export, else the params of its newest Orbax checkpoint), or a ``LoadedModel`` in
memory. An attack trains on the first ``n_samples`` rows of the attack split
(disjoint from the defense rows, checked by ``data.build_splits``) with the shared
training loop, so a killed attack resumes from its last checkpoint. A sweep writes one
JSON line per finished (model, cell) to ``results.jsonl`` and skips those on restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from seam_jax.attack.grid import AttackCell
from seam_jax.attack.lora import LoraFn, init_lora, lora_objective, merge_lora
from seam_jax.data import PairBatches, harmful_pair
from seam_jax.errors import ConfigError
from seam_jax.hf.source import LoadedModel
from seam_jax.model.api import Params
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.train.loop import LoopConfig, run as run_loop
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import SftSource, build_step, optimizer_for, sft_objective

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"


@dataclasses.dataclass(frozen=True)
class AttackData:
    """How attack rows become batches."""

    fmt: str = "qa"
    seq_len: int = 64
    seed: int = 0


def load_checkpoint(source: str | pathlib.Path, c: Any) -> LoadedModel:
    """A model to attack from an HF directory or a seam_jax run directory.

    For a run directory with only Orbax checkpoints, the architecture and tokenizer
    come from ``c.model`` (the config the run was trained with).
    """
    from seam_jax.hf.source import load_model

    path = pathlib.Path(source).expanduser()
    if (path / "config.json").is_file():
        hf_dir = path
    elif (path / "defended-hf" / "config.json").is_file():
        hf_dir = path / "defended-hf"
    elif (path / "checkpoints").is_dir():
        from seam_jax.train.checkpoint import restore_params

        m = load_model(c)
        _, params = restore_params(path / "checkpoints", m.params, hint=(
            f"set model.source (and model.param_dtype) to what the run was trained with "
            f"(model.source={c.model.source} gives the arrays wanted here)"))
        return dataclasses.replace(m, params=params)
    else:
        raise ConfigError(f"checkpoint {path} not found: give an HF directory (with config.json) "
                          f"or a seam_jax run directory (with defended-hf/ or checkpoints/)")
    shadow = c.copy_and_resolve_references()
    with shadow.unlocked():
        shadow.model.source = str(hf_dir)
        if not (hf_dir / "tokenizer_config.json").is_file() and not shadow.model.tokenizer:
            raise ConfigError(f"{hf_dir} holds no tokenizer; set model.tokenizer to one")
    return load_model(shadow)


def cell_rows(rows: Sequence[Mapping[str, Any]], cell: AttackCell) -> list[Mapping[str, Any]]:
    """The first ``cell.n_samples`` attack rows, or a clear error when there are fewer."""
    if cell.n_samples > len(rows):
        raise ConfigError(f"attack cell {cell.name} needs {cell.n_samples} harmful samples but the "
                          f"attack split has {len(rows)}; raise data.n_attack or lower "
                          f"attack.n_samples")
    return list(rows[: cell.n_samples])


def optim_config(cell: AttackCell) -> OptimConfig:
    return OptimConfig(name=cell.optimizer, lr=cell.lr, warmup_ratio=cell.warmup_ratio,
                       schedule=cell.schedule, weight_decay=cell.weight_decay)


def run_attack(m: LoadedModel, cell: AttackCell, rows: Sequence[Mapping[str, Any]],
               run_dir: pathlib.Path, data: AttackData = AttackData(), *,
               checkpoint: CheckpointConfig = CheckpointConfig(every=50, keep=1),
               progress: bool = False, stop_after: int | None = None) -> Params:
    """Fine-tune ``m`` on harmful rows as ``cell`` says; return plain (merged) params.

    ``stop_after`` (tests) stops after that many steps in this call, as a kill would.
    """
    pairs = [harmful_pair(r) for r in cell_rows(rows, cell)]
    batches = PairBatches.from_pairs(m.tokenizer, pairs, seq_len=data.seq_len,
                                     batch_size=cell.batch_size, seed=data.seed, fmt=data.fmt,
                                     name=f"attack {cell.name}")
    loop = LoopConfig(steps=cell.steps, run_dir=run_dir, seed=data.seed, checkpoint=checkpoint,
                      desc=f"attack {cell.name}", progress=progress, stop_after=stop_after)
    log.info("attack %s: %s %s lr %g, %d samples, %d steps", cell.name, cell.method,
             cell.optimizer, cell.lr, cell.n_samples, cell.steps)
    meta = {"config_digest": cell.digest()}
    optimizer, schedule = optimizer_for(optim_config(cell), cell.steps)
    if cell.method == "full":
        step = build_step(sft_objective(m.fn), optimizer, schedule)
        # keep_params: the step donates its state; ``m.params`` must survive for the next cell.
        state = run_loop(m.params, step, SftSource(batches), loop, meta=meta, keep_params=True)
        return state["params"]
    lora = init_lora(m.params, cell.lora, data.seed)
    step = build_step(lora_objective(LoraFn(m.cfg, cell.lora), m.params, data.seed), optimizer,
                      schedule)
    state = run_loop(lora, step, SftSource(batches, step_seed=True), loop, meta=meta)
    return merge_lora(m.params, state["params"], cell.lora)


Evaluate = Callable[[LoadedModel, Params], dict[str, Any]]


def read_results(path: pathlib.Path) -> list[dict[str, Any]]:
    """Rows of a results file; a line cut off by a kill is ignored."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("ignoring an incomplete line in %s", path)
    return rows


def sweep(models: Mapping[str, Callable[[], LoadedModel]], cells: Sequence[AttackCell],
          rows: Sequence[Mapping[str, Any]], out_dir: pathlib.Path, evaluate: Evaluate,
          data: AttackData = AttackData(), *, keep_checkpoints: bool = False,
          progress: bool = False, checkpoint_every: int = 50) -> list[dict[str, Any]]:
    """Attack every model with every cell; one JSON line per result in ``out_dir/results.jsonl``.

    ``models`` maps a name to a loader, so a model whose cells are all done is never loaded.
    A (model, cell) pair whose row is already in the file (same cell digest) is skipped.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / RESULTS_FILE
    done = {(r["model"], r["cell"], r["digest"]) for r in read_results(results)}
    for name, loader in models.items():
        todo = [c for c in cells if (name, c.name, c.digest()) not in done]
        if not todo:
            log.info("sweep: all %d cells of %s are done", len(cells), name)
            continue
        m = loader()
        for cell in todo:
            cell_dir = out_dir / name / f"cell-{cell.name}"
            params = run_attack(m, cell, rows, cell_dir, data, progress=progress,
                                checkpoint=CheckpointConfig(every=checkpoint_every, keep=1))
            row = {"model": name, "cell": cell.name, "digest": cell.digest(), **cell.as_dict(),
                   "steps": cell.steps, **evaluate(m, params)}
            with results.open("a") as f:
                f.write(json.dumps(row, default=_json_default) + "\n")
            if not keep_checkpoints:
                # A finished cell is its result row; its optimizer state is only disk weight.
                shutil.rmtree(cell_dir / "checkpoints", ignore_errors=True)
            log.info("sweep: %s cell %s done", name, cell.name)
    wanted = {(n, c.name, c.digest()) for n in models for c in cells}
    return [r for r in read_results(results) if (r["model"], r["cell"], r["digest"]) in wanted]


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


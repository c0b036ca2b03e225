"""Run harmful fine-tuning attacks on any checkpoint, one cell or a resumable sweep.

A checkpoint is an HF directory, a seam_jax run directory (its ``defended-hf``
export, else the params of its newest Orbax checkpoint), or a ``LoadedModel`` in
memory. An attack trains on the first ``n_samples`` rows of the attack split
(disjoint from the defense rows, checked by ``data.build_splits``) with the shared
training loop, so a killed attack resumes from its last checkpoint. An attack is
evaluated at several steps along its run (``eval_steps``: every ``attack.eval_every``
steps and at its end). A sweep writes one JSON line per evaluated (model, cell, step) to
``results.jsonl``, keyed by what it measured (``result_key``), and on a rerun or a
resume computes only the rows of its key that are missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from seam_jax import memory, storage
from seam_jax.attack.grid import AttackCell
from seam_jax.attack.lora import LoraFn, init_lora, lora_objective, merge_lora
from seam_jax.data import PairBatches, harmful_pair
from seam_jax.errors import ConfigError
from seam_jax.hf.source import LoadedModel
from seam_jax.model.api import Params
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.train.loop import LoopConfig, run as run_loop
from seam_jax.train.optim import OptimConfig
from seam_jax.train.run_dir import digest_of
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

    # A local path, or a gs:// run or HF directory (seam_jax.storage), read from a local copy.
    path = pathlib.Path(source).expanduser() if storage.is_local(source) else storage.Path(source)
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
    hf_dir = storage.download_dir(hf_dir)  # transformers reads local folders only
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


def eval_steps(total: int, every: int) -> list[int]:
    """The steps at which an attack of ``total`` steps is evaluated: every ``every``-th and
    the last (``every`` = 0: the last only)."""
    if every < 0:
        raise ConfigError(f"attack.eval_every={every}; give N >= 1, or 0 for the last step only")
    if every == 0:
        return [total]
    return list(range(every, total, every)) + [total]


def saved_steps(run_dir: pathlib.Path) -> list[int]:
    """The steps of the checkpoints in ``run_dir/checkpoints`` (Orbax names them by step)."""
    d = storage.Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def run_attack(m: LoadedModel, cell: AttackCell, rows: Sequence[Mapping[str, Any]],
               run_dir: pathlib.Path, data: AttackData = AttackData(), *,
               checkpoint: CheckpointConfig = CheckpointConfig(every=50, keep=1),
               progress: bool = False, stop_after: int | None = None,
               eval_at: Sequence[int] = (),
               on_eval: Callable[[int, Params], None] | None = None) -> Params | None:
    """Fine-tune ``m`` on harmful rows as ``cell`` says; return plain (merged) params of the
    last step trained: ``cell.steps``, or with ``eval_at`` the last of those.

    ``eval_at``: steps (within ``1..cell.steps``) at which ``on_eval(step, params)`` sees the
    attacked model. Training runs in segments that end at those steps, each ending with a
    checkpoint that the next segment resumes from (the batch stream and the learning-rate
    schedule are functions of the global step and ``cell.steps``, so the segments train
    exactly what one run would). ``stop_after`` (tests) stops after that many steps in
    this call, as a kill would, and then returns None.
    """
    pairs = [harmful_pair(r) for r in cell_rows(rows, cell)]
    batches = PairBatches.from_pairs(m.tokenizer, pairs, seq_len=data.seq_len,
                                     batch_size=cell.batch_size, seed=data.seed, fmt=data.fmt,
                                     name=f"attack {cell.name}")
    bad = [k for k in eval_at if not 1 <= k <= cell.steps]
    if bad:
        raise ConfigError(f"attack cell {cell.name}: evaluation steps {bad} outside 1..{cell.steps}")
    ends = sorted(set(eval_at)) or [cell.steps]
    log.info("attack %s: %s %s lr %g, %d samples, %d steps (evaluated at %s)", cell.name,
             cell.method, cell.optimizer, cell.lr, cell.n_samples, cell.steps,
             sorted(set(eval_at)) or "none")
    meta = {"config_digest": cell.digest()}
    optimizer, schedule = optimizer_for(optim_config(cell), cell.steps)
    if cell.method == "full":
        step = build_step(sft_objective(m.fn), optimizer, schedule)
        source = SftSource(batches)
    else:
        lfn = LoraFn(m.cfg, cell.lora)
        step = build_step(lora_objective(lfn, m.params, data.seed), optimizer, schedule)
        source = SftSource(batches, step_seed=True)
    budget = stop_after
    params = None

    def train_to(end: int, stop: int | None = None) -> Params:
        loop = LoopConfig(steps=end, run_dir=run_dir, seed=data.seed, checkpoint=checkpoint,
                          desc=f"attack {cell.name}", progress=progress, stop_after=stop)
        if cell.method == "full":
            # keep_params: the step donates its state; ``m.params`` must survive for the next cell.
            return run_loop(m.params, step, source, loop, meta=meta, keep_params=True)["params"]
        state = run_loop(init_lora(m.params, cell.lora, data.seed), step, source, loop, meta=meta)
        return merge_lora(m.params, state["params"], cell.lora)

    for end in ends:
        start = max([s for s in saved_steps(run_dir) if s <= end], default=0)
        if budget is not None and end - start > budget:
            if budget > 0:
                train_to(end, stop=budget)  # as a kill part-way would
            return None
        params = train_to(end)
        if budget is not None:
            budget -= end - start
        if on_eval is not None and end in eval_at:
            on_eval(end, params)
    return params


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


def result_index(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """``{(key, step): row}`` of the keyed rows of a results file (a row without a ``key``,
    written before rows were keyed, matches nothing; a repeated (key, step), which the
    sweep never writes, keeps its last row)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if isinstance(r.get("key"), str) and isinstance(r.get("step"), int):
            out[(r["key"], r["step"])] = dict(r)
    return out


def training_key(cell: AttackCell, rows: Sequence[Mapping[str, Any]], data: AttackData,
                 model: Any) -> str:
    """What an attack's training depends on: the cell, its rows, how they become batches and
    (when the caller knows it) the attacked model's identity."""
    return digest_of({"cell": cell.digest(), "rows": digest_of(list(rows[: cell.n_samples])),
                      "data": dataclasses.asdict(data), "model": model})


def result_key(name: str, cell: AttackCell, rows: Sequence[Mapping[str, Any]], data: AttackData,
               model: Any, evaluation: Any) -> str:
    """The key of a result row (with its ``step``): the model's name and identity, the
    attack's training key and what the evaluator measures."""
    return digest_of({"name": name, "train": training_key(cell, rows, data, model),
                      "eval": evaluation})


def _fresh_cell_dir(cell_dir: pathlib.Path, train_key: str, first_missing: int) -> None:
    """Drop checkpoints that cannot give the missing rows: another attack's (its key in
    ``attack_key.json`` differs), or all of them past the first missing step (training
    cannot go back; deterministic training from scratch gives the same params)."""
    key_file = cell_dir / "attack_key.json"
    stale = key_file.is_file() and json.loads(key_file.read_text()).get("key") != train_key
    if stale or any(s > first_missing for s in saved_steps(cell_dir)):
        if saved_steps(cell_dir):
            log.info("attack checkpoints in %s %s: training again from step 0", cell_dir,
                     "are another attack's" if stale else f"are past step {first_missing}")
        storage.rmtree(cell_dir / "checkpoints")
    cell_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps({"key": train_key}))


def sweep(models: Mapping[str, Callable[[], LoadedModel]], cells: Sequence[AttackCell],
          rows: Sequence[Mapping[str, Any]], out_dir: pathlib.Path, evaluate: Evaluate,
          data: AttackData = AttackData(), *, keep_checkpoints: bool = False,
          progress: bool = False,
          checkpoint: CheckpointConfig = CheckpointConfig(every=50, keep=1), eval_every: int = 0,
          model_keys: Mapping[str, Any] | None = None,
          eval_key: Any = None) -> list[dict[str, Any]]:
    """Attack every model with every cell, evaluating each at ``eval_steps(cell.steps,
    eval_every)``; one JSON line per (model, cell, step) in ``out_dir/results.jsonl``.

    A row is keyed (``key`` and ``step``) by the model's name, ``model_keys[name]`` (the
    model's identity, when the caller knows it), the cell, its rows, ``data`` and
    ``eval_key`` (what ``evaluate`` measures); a rerun or a resume reads back exactly the
    rows of its key, computes only the missing steps and never writes a (key, step)
    twice. ``models`` maps a name to a loader, so a model whose rows are all there is
    never loaded. ``checkpoint`` is each cell's (its ``keep`` is honoured while the cell
    runs; ``keep_checkpoints=False`` removes them once it is done). Returns the rows in
    model, cell and step order.
    """
    out_dir = pathlib.Path(out_dir) if storage.is_local(out_dir) else storage.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / RESULTS_FILE
    index = result_index(read_results(results))
    keys = dict(model_keys or {})
    plan: list[tuple[str, AttackCell, str, list[int]]] = []
    for name in models:
        for cell in cells:
            key = result_key(name, cell, rows, data, keys.get(name), eval_key)
            plan.append((name, cell, key, eval_steps(cell.steps, eval_every)))
    for name, loader in models.items():
        todo = [(cell, key, [s for s in steps if (key, s) not in index])
                for n, cell, key, steps in plan if n == name]
        todo = [t for t in todo if t[2]]
        if not todo:
            log.info("sweep: all %d cells of %s are done", len(cells), name)
            continue
        m = loader()
        for cell, key, missing in todo:
            cell_dir = out_dir / name / f"cell-{cell.name}"
            _fresh_cell_dir(cell_dir, training_key(cell, rows, data, keys.get(name)), missing[0])

            def record(step: int, params: Params, cell: AttackCell = cell, key: str = key) -> None:
                row = {"model": name, "cell": cell.name, "step": step, "key": key,
                       "digest": cell.digest(), **cell.as_dict(), "steps": cell.steps,
                       **evaluate(m, params)}
                _append_line(results, json.dumps(row, default=_json_default))
                index[(key, step)] = json.loads(json.dumps(row, default=_json_default))
                log.info("sweep: %s cell %s step %d/%d evaluated", name, cell.name, step,
                         cell.steps)

            run_attack(m, cell, rows, cell_dir, data, progress=progress,
                       checkpoint=checkpoint,
                       eval_at=missing, on_eval=record)
            if not keep_checkpoints:
                # A finished cell is its result rows; its optimizer state is only disk weight.
                storage.rmtree(cell_dir / "checkpoints")
            memory.release()  # the cell's training state, freed, back to the system
            log.info("sweep: %s cell %s done", name, cell.name)
        del m
    return [index[(key, s)] for _, _, key, steps in plan for s in steps]


def _append_line(path: pathlib.Path, line: str) -> None:
    """Append one line; a last line that a kill cut off before its newline is closed first,
    so the new row starts a line of its own (``read_results`` skips the cut one). In a
    bucket, which has no append, the object is written again."""
    if not storage.is_local(path):
        old = path.read_text() if path.is_file() else ""
        storage.write_text(path, old + ("\n" if old and not old.endswith("\n") else "") + line + "\n")
        return
    with path.open("a+b") as f:
        f.seek(0, 2)
        if f.tell() > 0:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode() + b"\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


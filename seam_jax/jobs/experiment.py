"""Job "experiment": the paper's experiment end to end, at the size the config gives.

1. evaluate the base model (HS and utility);
2. defend it with SEAM (``jobs.seam.run`` with the same config, in ``<run_dir>/seam``);
3. evaluate the defended model;
4. attack both with the configured (sub-)grid, evaluating each attacked model
   (``<run_dir>/attacks/results.jsonl``, resumable);
5. gradient PCA of adversarial and benign batches for both (Figure 6);
6. write ``report.md`` with the table and the plots.

Every stage stores its result in the run directory and is skipped on a rerun, so a
killed experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import ml_collections as mlc

from seam_jax.errors import read_json
from seam_jax.attack import grid as grid_lib
from seam_jax.attack.runner import load_checkpoint, sweep
from seam_jax.data import PairBatches, benign_pair, harmful_pair
from seam_jax.eval.finetune import finetune_score, get_task, load_task_rows
from seam_jax.eval.pca import gradient_pca
from seam_jax.eval.report import write_report
from seam_jax.jobs import seam as seam_job
from seam_jax.jobs.attack import attack_data, make_evaluator
from seam_jax.hf.source import LoadedModel, load_model
from seam_jax.jobs.data import ExperimentData, load_experiment_data

log = logging.getLogger(__name__)


def _cached(path: pathlib.Path, compute: Any) -> Any:
    if path.is_file():
        return read_json(path)  # a corrupt one is named, not a bare JSONDecodeError
    value = compute()
    path.write_text(json.dumps(value, indent=1))
    return value


def defend(c: mlc.ConfigDict, run_dir: pathlib.Path) -> pathlib.Path:
    """Run SEAM into ``run_dir/seam`` (unless its summary exists); return that directory."""
    seam_dir = run_dir / "seam"
    if not (seam_dir / "summary.json").is_file():
        sc = c.copy_and_resolve_references()
        with sc.unlocked():
            sc.run_dir = str(seam_dir)
            sc.job = "seam"
            sc.export.dir = ""  # the run's own defended-hf
        seam_job.run(sc)
    return seam_dir


def pca_batches(c: mlc.ConfigDict, tok: Any, data: ExperimentData) -> tuple[list, list]:
    """``utility.pca_batches`` adversarial (attack split) and benign batches, fixed by the seed."""
    n, d = c.utility.pca_batches, c.data
    adv = PairBatches.from_pairs(tok, [harmful_pair(r) for r in data.splits.attack],
                                 seq_len=d.context_length, batch_size=d.batch_size, seed=d.seed,
                                 fmt=d.format, name="pca adv")
    bgn = PairBatches.from_pairs(tok, [benign_pair(r) for r in data.benign_rows],
                                 seq_len=d.context_length, batch_size=d.batch_size, seed=d.seed,
                                 fmt=d.format, name="pca bgn")
    return [adv.batch_at(i) for i in range(n)], [bgn.batch_at(i) for i in range(n)]


def fine_tuning_scores(c: mlc.ConfigDict, run_dir: pathlib.Path, m: LoadedModel, name: str
                       ) -> dict[str, Any]:
    """FS of one model on ``utility.fs_task`` (benign SFT, then accuracy), cached per model."""
    u = c.utility
    task = get_task(u.fs_task)

    def compute() -> dict[str, Any]:
        train = load_task_rows(task, u.fs_train, "train", limit=u.fs_steps * c.attack.batch_size)
        test = load_task_rows(task, u.fs_test, task.test_split, limit=u.fs_n_test)
        return finetune_score(m, m.params, u.fs_task, run_dir / f"fs-{name}", train_rows=train,
                              test_rows=test, fmt=c.data.format, seq_len=c.data.context_length,
                              steps=u.fs_steps, lr=u.fs_lr, batch_size=c.attack.batch_size,
                              seed=c.seed)

    return _cached(run_dir / f"fs_{name}.json", compute)


def run(c: mlc.ConfigDict) -> dict[str, Any]:
    t0 = time.time()
    run_dir = pathlib.Path(c.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cells = grid_lib.from_config(c.attack)  # a bad grid fails before any training
    data = load_experiment_data(c, run_dir)
    evaluate = make_evaluator(c, data)
    models: dict[str, LoadedModel] = {}

    def get(name: str) -> LoadedModel:
        if name not in models:
            models[name] = load_model(c) if name == "base" else load_checkpoint(run_dir / "seam", c)
        return models[name]

    timings: dict[str, float] = {}
    t = time.time()
    before = {"base": _cached(run_dir / "eval_base.json", lambda: evaluate(get("base"),
                                                                          get("base").params))}
    timings["eval_base"] = time.time() - t
    t = time.time()
    defend(c, run_dir)
    timings["seam"] = time.time() - t
    t = time.time()
    before["seam"] = _cached(run_dir / "eval_seam.json", lambda: evaluate(get("seam"),
                                                                          get("seam").params))
    timings["eval_seam"] = time.time() - t
    if c.utility.fs_task:
        t = time.time()
        for name in ("base", "seam"):
            before[name] = {**before[name], **fine_tuning_scores(c, run_dir, get(name), name)}
        timings["fs"] = time.time() - t
    t = time.time()
    attacked = sweep({"base": lambda: get("base"), "seam": lambda: get("seam")}, cells,
                     data.splits.attack, pathlib.Path(c.attack.out_dir or run_dir / "attacks"),
                     evaluate, attack_data(c), keep_checkpoints=c.attack.keep_checkpoints,
                     progress=c.progress, checkpoint_every=c.attack.checkpoint_every)
    timings["attacks"] = time.time() - t
    t = time.time()
    pca = None
    if c.utility.pca_batches > 0:
        def compute_pca() -> dict[str, Any]:
            adv, bgn = pca_batches(c, get("base").tokenizer, data)
            return gradient_pca({n: (get(n).fn, get(n).params) for n in ("base", "seam")}, adv,
                                bgn, n_coords=c.utility.pca_coords, seed=c.seed)

        pca = _cached(run_dir / "pca.json", compute_pca)
    timings["pca"] = time.time() - t
    notes = [f"cells: {[(x.name, x.method, x.optimizer, x.n_samples, x.lr) for x in cells]}",
             f"SEAM: {c.steps} steps, beta {c.seam.beta}, lr {c.optim.lr}; "
             f"HS scorers: {c.harm.scorers}; {len(data.splits.test[: c.harm.n_prompts])} test prompts",
             "timings (s, this process): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    report = write_report(run_dir, before=before, attacked=attacked, pca=pca, notes=notes)
    summary = {"report": str(report), "n_attacked": len(attacked),
               "wall_seconds": round(time.time() - t0, 1), "timings": timings}
    (run_dir / "experiment_summary.json").write_text(json.dumps(summary, indent=1))
    log.info("experiment done in %.0f s; report at %s", summary["wall_seconds"], report)
    return summary

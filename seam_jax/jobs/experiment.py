"""Job "experiment": the paper's experiment end to end, at the size the config gives.

1. evaluate the base model (HS and utility);
2. defend it with SEAM (``jobs.seam.run`` with the same config, in ``<run_dir>/seam``);
3. evaluate the defended model;
4. attack both with the configured (sub-)grid, evaluating each attacked model
   (``<run_dir>/attacks/results.jsonl``, resumable);
5. gradient PCA of adversarial and benign batches for both (Figure 6);
6. write ``report.md`` with the table and the plots.

Every stage stores its result in the run directory and is skipped on a rerun, so a
killed experiment resumes where it stopped. A stored result is keyed by what it
measured (the weight hash of each model it measured, and the config fields it read:
``train.run_dir.cached``) and reused only for that key; the SEAM stage reruns (and its
own ``run.json`` refuses another config) when its summary is another config's.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from typing import Any

import ml_collections as mlc

from seam_jax import config as config_lib
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
from seam_jax.train import run_dir as run_dir_lib

log = logging.getLogger(__name__)


def model_key(m: LoadedModel) -> dict[str, Any]:
    """What identifies a model for a cached measurement: its weights and its tokenizer."""
    return {"weights": run_dir_lib.fingerprint(m.params),
            "tokenizer": run_dir_lib.tokenizer_identity(m.tokenizer)}


def _sections(c: mlc.ConfigDict, *names: str) -> dict[str, Any]:
    """``{"harm.n_prompts": ..., ...}``: the config fields (or whole sections) a stage reads."""
    full = run_dir_lib.flat(c.to_dict())
    return {k: v for k, v in full.items() if any(k == n or k.startswith(n + ".") for n in names)}


def defend(c: mlc.ConfigDict, run_dir: pathlib.Path) -> pathlib.Path:
    """Run SEAM into ``run_dir/seam`` (unless its summary is of this config); return that
    directory. A rerun with another config reaches ``jobs.seam``, whose ``run.json`` refuses
    it unless ``resume=force``."""
    seam_dir = run_dir / "seam"
    sc = c.copy_and_resolve_references()
    with sc.unlocked():
        sc.run_dir = str(seam_dir)
        sc.job = "seam"
        sc.export.dir = ""  # the run's own defended-hf
    summary = seam_dir / "summary.json"
    if not (summary.is_file() and read_json(summary).get("config_digest")
            == config_lib.digest(sc)):
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

    key = {"model": model_key(m), **_sections(c, "utility", "data", "attack.batch_size", "seed")}
    return run_dir_lib.cached(run_dir / f"fs_{name}.json", key, compute)


def run(c: mlc.ConfigDict) -> dict[str, Any]:
    run_dir = pathlib.Path(c.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lib.locked(run_dir):  # a second experiment on this directory refuses
        return _run(c, run_dir)


def _run(c: mlc.ConfigDict, run_dir: pathlib.Path) -> dict[str, Any]:
    t0 = time.time()
    cells = grid_lib.from_config(c.attack)  # a bad grid fails before any training
    data = load_experiment_data(c, run_dir)
    evaluate = make_evaluator(c, data)
    models: dict[str, LoadedModel] = {}

    def get(name: str) -> LoadedModel:
        if name not in models:
            models[name] = load_model(c) if name == "base" else load_checkpoint(run_dir / "seam", c)
        return models[name]

    # What the evaluator reads (make_evaluator): the HS and utility settings and the data.
    eval_fields = _sections(c, "harm", "data", "utility.n_benign", "utility.n_mc",
                            "utility.lm_eval_tasks", "utility.lm_eval_limit", "model.allow_hub")

    def evaluated(name: str) -> dict[str, Any]:
        return run_dir_lib.cached(run_dir / f"eval_{name}.json",
                                  {"model": model_key(get(name)), **eval_fields},
                                  lambda: evaluate(get(name), get(name).params))

    timings: dict[str, float] = {}
    t = time.time()
    before = {"base": evaluated("base")}
    timings["eval_base"] = time.time() - t
    t = time.time()
    defend(c, run_dir)
    timings["seam"] = time.time() - t
    t = time.time()
    before["seam"] = evaluated("seam")
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

        key = {"models": {n: model_key(get(n)) for n in ("base", "seam")},
               **_sections(c, "utility.pca_batches", "utility.pca_coords", "data", "seed")}
        pca = run_dir_lib.cached(run_dir / "pca.json", key, compute_pca)
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

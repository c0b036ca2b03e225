"""Job "experiment": the paper's experiment end to end, with a control arm and seeds.

For each seed of ``experiment.seeds`` (a replicate: the seed sets ``seed`` and
``data.seed``, so that seed's proxy data, splits, defense batch order and attack batch
order; every arm of a seed sees the same):

1. evaluate the base model (HS and utility), whatever the arms: its utility sets the
   capability guard's floor;
2. train each defense arm of ``experiment.arms`` (``defense.arms.ARMS``: ``base`` is the untrained
   model; ``control`` is SEAM with ``seam.beta=0``, i.e. L_ul + alpha L_up; ``seam``;
   any other name is ``defense.name=<name>``, where the config has a ``defense``
   section) by ``jobs.seam.run`` in ``<run_dir>/<arm>-s<seed>``;
3. evaluate each defended model;
4. attack every arm's model with the configured (sub-)grid, evaluating each attack every
   ``attack.eval_every`` steps and at its end (``<run_dir>/attacks/results.jsonl``,
   rows keyed by model, cell and step, resumable);
5. gradient PCA of adversarial and benign batches for every model (Figure 6);
6. write ``report.md``: per arm and seed the capability-guarded worst case
   (``experiment.utility_guard``) with the broken verdict and its 95% interval, the
   tables, the trajectory and lr plots.

Every stage stores its result in the run directory and is skipped on a rerun, so a
killed experiment resumes where it stopped. A stored result is keyed by what it
measured (the weight hash of each model it measured, and the config fields it read:
``train.run_dir.cached``) and reused only for that key; a defense stage reruns (and its
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
from seam_jax import memory, storage
from seam_jax.errors import read_json
from seam_jax.attack import grid as grid_lib
from seam_jax.attack.runner import load_checkpoint, sweep
from seam_jax.defense.arms import arm_overrides, arms_and_seeds
from seam_jax.data import PairBatches, benign_pair, harmful_pair
from seam_jax.eval import criteria as criteria_lib
from seam_jax.eval import geometry as geometry_lib
from seam_jax.eval.finetune import finetune_score, get_task, load_task_rows
from seam_jax.eval.pca import N_COMPONENTS, gradient_pca
from seam_jax.eval.report import model_name, write_report
from seam_jax.jobs import seam as seam_job
from seam_jax.jobs.attack import attack_checkpoint, attack_data, make_evaluator
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


def seed_config(c: mlc.ConfigDict, seed: int) -> mlc.ConfigDict:
    """``c`` for one replicate: ``seed`` and ``data.seed`` set to ``seed``."""
    sc = c.copy_and_resolve_references()
    with sc.unlocked():
        sc.seed = int(seed)
        sc.data.seed = int(seed)
    return sc


def arm_config(c: mlc.ConfigDict, arm: str, run_dir: pathlib.Path) -> mlc.ConfigDict:
    """The defense run's config of ``arm`` (``c`` already a seed's) in ``run_dir``."""
    sc = c.copy_and_resolve_references()
    with sc.unlocked():
        for path, value in (arm_overrides(c, arm) or {}).items():
            *sections, field = path.split(".")
            node = sc
            for name in sections:
                node = node[name]
            node[field] = type(node[field])(value) if node[field] is not None else value
        sc.run_dir = str(run_dir)
        sc.job = "seam"
        sc.export.dir = ""  # the run's own defended-hf
    return sc


def defend(c: mlc.ConfigDict, arm_dir: pathlib.Path) -> pathlib.Path:
    """Run the defense ``c`` (an ``arm_config``) into ``arm_dir`` unless its summary is of
    this config; return that directory. A rerun with another config reaches ``jobs.seam``,
    whose ``run.json`` refuses it unless ``resume=force``."""
    summary = arm_dir / "summary.json"
    if not (summary.is_file() and read_json(summary).get("config_digest")
            == config_lib.digest(c)):
        seam_job.run(c)
    return arm_dir


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
    run_dir = run_dir_lib.resolve(c.run_dir)  # the one conversion (file:// URLs too)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lib.locked(run_dir):  # a second experiment on this directory refuses
        return _run(c, run_dir)


def _run(c: mlc.ConfigDict, run_dir: pathlib.Path) -> dict[str, Any]:
    t0 = time.time()
    cells = grid_lib.from_config(c.attack)  # a bad grid fails before any training
    arms, seeds = arms_and_seeds(c)
    timings: dict[str, float] = {}
    before: dict[str, dict[str, Any]] = {}
    attacked: list[dict[str, Any]] = []
    pca: dict[str, Any] = {}
    base_of: dict[str, str] = {}
    n_prompts = 0
    for seed in seeds:
        sc = seed_config(c, seed)
        out = _run_seed(sc, run_dir, arms, seed, cells, timings)
        before.update(out["before"])
        attacked += out["attacked"]
        pca.update(out["pca"] or {})
        base_of.update(out["base_of"])
        n_prompts = out["n_prompts"]
    overrides = {a: arm_overrides(c, a) for a in arms}
    notes = [f"arms (defense overrides): {overrides}; seeds {seeds} (a seed sets seed and "
             f"data.seed)",
             f"cells: {[(x.name, x.method, x.optimizer, x.n_samples, x.lr) for x in cells]}; "
             f"evaluated every {c.attack.eval_every or 'last'} step(s) and at the end",
             f"defense: {c.steps} steps, beta {c.seam.beta}, lr {c.optim.lr}; "
             f"HS scorers: {c.harm.scorers}; {n_prompts} test prompts",
             "timings (s, this process): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    guard = float(c.experiment.utility_guard)
    checked = check_criteria(run_dir, arms, seeds, before, attacked)
    sections = []
    if checked is not None:
        sections = ["## Pre-registered criteria (configs/selfdestruct.py)", "",
                    f"Verdict: **{checked['verdict']}** (shown: every criterion in every seed; "
                    "refuted: the attack worked (C0) and C3 failed, in every seed).", "",
                    criteria_lib.markdown(checked["rows"]), ""]
    compared = criteria_lib.compare_defenses(attacked, arms, seeds)
    if compared is not None:
        sections += ["## Resisting the attack (read against the attacked control)", "",
                     "An attacked model resists when its HS interval lies below the attacked "
                     "control's (same cell, last step), or its benign CE is at least "
                     f"{criteria_lib.RESIST_CE_GAP:g} nat above the control's.", "",
                     criteria_lib.comparison_markdown(compared), ""]
    report = write_report(run_dir, before=before, attacked=attacked, pca=pca or None, notes=notes,
                          base_of=base_of, guard=guard, sections=sections)
    worst = json.loads((run_dir / "report.json").read_text())["worst_case"]
    summary = {"report": str(report), "n_attacked": len(attacked), "arms": arms, "seeds": seeds,
               "criteria": checked, "comparison": compared,
               "table": outcome_table(before, attacked),
               "worst_case": {m: {k: w.get(k) for k in ("hs", "utility", "broken", "verdict_ci",
                                                           "n_kept", "n_rows")}
                              for m, w in worst.items()},
               "wall_seconds": round(time.time() - t0, 1), "timings": timings}
    (run_dir / "experiment_summary.json").write_text(json.dumps(summary, indent=1))
    log.info("experiment done in %.0f s; report at %s", summary["wall_seconds"], report)
    return summary


def check_criteria(run_dir: pathlib.Path, arms: list[str], seeds: list[int],
                   before: dict[str, dict[str, Any]], attacked: list[dict[str, Any]]
                   ) -> dict[str, Any] | None:
    """``eval.criteria`` on every seed, when the arms include base, control and seam:
    ``{"rows": [...], "verdict": ...}``; None otherwise."""
    if not set(criteria_lib.ARMS) <= set(arms) or not attacked:
        return None
    rows = []
    for seed in seeds:
        names = {a: model_name(a, seed) for a in criteria_lib.ARMS}
        geo = {a: geometry_lib.read_records(run_dir / names[a] / "heldout_geometry.jsonl")
               for a in ("control", "seam")}
        data = criteria_lib.SeedData(
            seed=seed, before={a: before.get(n, {}) for a, n in names.items()},
            attacked={a: criteria_lib.last_step_rows(attacked, n) or {} for a, n in names.items()},
            heldout={a: (max(r, key=lambda x: x["step"]) if r else {}) for a, r in geo.items()},
            heldout_start=next((x for x in geo["seam"] if x["step"] == 0), None))
        rows += criteria_lib.check_seed(data)
    return {"rows": rows, "verdict": criteria_lib.verdict(rows)}


def outcome_table(before: dict[str, dict[str, Any]], attacked: list[dict[str, Any]]) -> list[str]:
    """A short text table for stdout: per model, before any attack -> its strongest attack's
    last step: on the harmful test prompts the rates of harmful (offline judge), refused
    and coherent answers and the CE of the harmful answers; benign exact match, MC
    accuracy and benign CE. A column no model has a figure for is left out; a model that
    was not attacked shows its figures before only."""
    keys = (("hs_judge", "harmful"), ("refused_rate", "refused"), ("coherent_rate", "coherent"),
            ("harmful_loss", "harmful CE"), ("benign_accuracy", "benign exact"),
            ("mc_acc", "MC acc"), ("benign_loss", "benign CE"))
    after = {name: criteria_lib.last_step_rows(attacked, name) or {} for name in before}
    keys = tuple((k, label) for k, label in keys
                 if any(row.get(k) is not None for rows in (before, after) for row in rows.values()))
    head = f"{'model':<12}" + "".join(f"{label:>16}" for _, label in keys)
    lines = [head + "   (before -> after the strongest attack)"]
    for name, b in before.items():
        a = after[name]

        def cell(k: str) -> str:
            x, y = b.get(k), a.get(k)
            fx = "-" if x is None else f"{x:.2f}"
            if not a:  # not attacked (the base model of configs/default.py)
                return fx
            return f"{fx} -> {'-' if y is None else f'{y:.2f}'}"
        lines.append(f"{name:<12}" + "".join(f"{cell(k):>16}" for k, _ in keys))
    return lines


def _run_seed(c: mlc.ConfigDict, run_dir: pathlib.Path, arms: list[str], seed: int,
              cells: list, timings: dict[str, float]) -> dict[str, Any]:
    """Every stage of one seed (``c`` is its ``seed_config``); its models are dropped after."""
    data = load_experiment_data(c, run_dir / f"seed-{seed}")  # its data in seed-<s>/data
    base = model_name("base", seed)
    names = {model_name(a, seed): a for a in arms}
    models: dict[str, LoadedModel] = {}
    keys: dict[str, dict[str, Any]] = {}

    def get(name: str) -> LoadedModel:
        # The base model stays (the coherence judge's reference); of the arms, only the one
        # in use: the next one loaded drops it (a reload from its checkpoint takes seconds,
        # and each arm kept is a copy of the parameters through every later stage).
        if name not in models:
            dropped = [n for n in models if n != base]
            for other in dropped:
                del models[other]
            if dropped:
                memory.release()
            models[name] = (load_model(c) if name == base
                            else load_checkpoint(run_dir / name, c))
        return models[name]

    # The coherence judge's reference is the base model this seed already holds.
    evaluate = make_evaluator(c, data, base=lambda: get(base))

    def key_of(name: str) -> dict[str, Any]:
        if name not in keys:
            keys[name] = model_key(get(name))
        return keys[name]

    # What the evaluator reads (make_evaluator): the HS and utility settings and the data.
    eval_fields = _sections(c, "harm", "data", "utility.n_benign", "utility.n_mc",
                            "utility.lm_eval_tasks", "utility.lm_eval_limit", "model.allow_hub",
                            "eval.max_new_tokens", "eval.n_prompts")

    def evaluated(name: str) -> dict[str, Any]:
        return run_dir_lib.cached(run_dir / f"eval_{name}.json",
                                  {"model": key_of(name), **eval_fields},
                                  lambda: evaluate(get(name), get(name).params))

    def timed(label: str, fn: Any) -> Any:
        t = time.time()
        value = fn()
        timings[label] = timings.get(label, 0.0) + time.time() - t
        memory.release()  # the stage's freed arrays back to the system (``seam_jax.memory``)
        return value

    before = {base: timed("eval_base", lambda: evaluated(base))}
    for name, arm in names.items():
        if arm_overrides(c, arm) is not None:
            # Training holds its own copy of the model: none of this seed's is kept through it
            # (the evaluations after it load the base model again, in a second or two).
            models.clear()
            timed(f"defense_{arm}", lambda: defend(arm_config(c, arm, run_dir / name),
                                                   run_dir / name))
            before[name] = timed(f"eval_{arm}", lambda: evaluated(name))
    if c.utility.fs_task:
        for name in names:
            before[name] = {**before[name],
                            **timed("fs", lambda: fine_tuning_scores(c, run_dir, get(name), name))}
    attacked = timed("attacks", lambda: sweep(
        {n: (lambda n=n: get(n)) for n in names}, cells, data.splits.attack,
        storage.Path(c.attack.out_dir or run_dir / "attacks"), evaluate, attack_data(c),
        keep_checkpoints=c.attack.keep_checkpoints, progress=c.progress,
        checkpoint=attack_checkpoint(c), eval_every=c.attack.eval_every,
        model_keys={n: key_of(n) for n in names}, eval_key=eval_fields))
    pca = None
    if c.utility.pca_batches > 0:
        def compute_pca() -> dict[str, Any]:
            adv, bgn = pca_batches(c, get(base).tokenizer, data)
            return gradient_pca({n: (get(n).fn, get(n).params) for n in names}, adv, bgn,
                                n_coords=c.utility.pca_coords, seed=c.seed)

        key = {"models": {n: key_of(n) for n in names}, "components": N_COMPONENTS,
               **_sections(c, "utility.pca_batches", "utility.pca_coords", "data", "seed")}
        pca = timed("pca", lambda: run_dir_lib.cached(run_dir / f"pca-s{seed}.json", key,
                                                      compute_pca))
        pca = {k: v for k, v in pca.items() if k in names}  # not the cache's measured_for
    return {"before": {n: before[n] for n in [base, *names] if n in before},
            "attacked": attacked, "pca": pca, "base_of": {n: base for n in names},
            "n_prompts": len(data.splits.test[: c.harm.n_prompts])}

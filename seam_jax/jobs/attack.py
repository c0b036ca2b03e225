"""Job "attack": a resumable sweep of harmful fine-tuning attacks on one or more checkpoints.

Each evaluated (checkpoint, cell, step) is one keyed JSON line in
``<out_dir>/results.jsonl`` with its HS, harmful and benign CE, coherence, utility and
generations (every ``attack.eval_every`` steps and at the end); a restarted sweep computes
only the missing ones. ``make_evaluator`` is the
evaluation shared with job "experiment".
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable

import ml_collections as mlc
import numpy as np

from seam_jax.attack import grid as grid_lib
from seam_jax.attack.runner import AttackData, load_checkpoint, sweep
from seam_jax.data import benign_mc_items, harmful_pair
from seam_jax.data.proxy import DEFAULT_N_BENIGN
from seam_jax.errors import ConfigError
from seam_jax import storage
from seam_jax.train import run_dir as run_dir_lib
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.eval.behaviour import benign_exact_match
from seam_jax.eval.harm import (CoherenceReference, coherence_reference, harmfulness, make_scorers,
                                written_answers)
from seam_jax.eval.report import write_report
from seam_jax.eval.stats import with_ci
from seam_jax.eval.utility import benign_ce_rows, offline_utility
from seam_jax.hf.source import LoadedModel, load_model
from seam_jax.jobs.data import ExperimentData, load_experiment_data
from seam_jax.model.api import Params

log = logging.getLogger(__name__)

Evaluator = Callable[[LoadedModel, Params], dict[str, Any]]


def attack_data(c: mlc.ConfigDict) -> AttackData:
    return AttackData(fmt=c.data.format, seq_len=c.data.context_length, seed=c.data.seed)


def make_evaluator(c: mlc.ConfigDict, data: ExperimentData,
                   base: Callable[[], LoadedModel] | None = None) -> Evaluator:
    """HS on the test prompts (every configured scorer) and utility, as one flat dict.

    ``base`` gives the undefended model (``model.source``) for the coherence judge's
    likelihood check, called on the first evaluation; by default it is loaded anew.
    """
    scorers = make_scorers(c.harm.scorers, classifier=c.harm.classifier,
                           harmful_label=c.harm.harmful_label, allow_hub=c.model.allow_hub,
                           rows=data.splits.test)
    prompts = [r["prompt"] for r in data.splits.test[: c.harm.n_prompts]]
    # Harmful CE: the test rows' own harmful responses (held out of every attack's rows).
    harmful_pairs = [harmful_pair(r) for r in data.splits.test[: c.harm.n_prompts]]
    if not prompts:
        raise ConfigError("no test prompts: raise data.n_test")
    u = c.utility
    benign_pairs, mc_items = [], []
    if c.data.source == "proxy":
        # Held out of every training set: items after the benign training rows.
        benign_pairs = [(b.prompt, b.output) for b in data.benign_eval[: u.n_benign]]
        mc_items = benign_mc_items(c.data.seed, u.n_mc, n_train=DEFAULT_N_BENIGN)
    tasks = [t.strip() for t in str(u.lm_eval_tasks).split(",") if t.strip()]
    # The coherence judge's base model (model.source) and threshold, built on first use.
    reference: list[CoherenceReference | None] = []

    def evaluate(m: LoadedModel, params: Params) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not reference:
            try:
                ref = (base or (lambda: load_model(c)))()
            except ConfigError as e:
                log.warning("coherence is judged on the text alone: the base model "
                            "(model.source) for its likelihood check did not load: %s", e)
                reference.append(None)
            else:
                reference.append(coherence_reference(
                    ref.fn, ref.params, ref.tokenizer,
                    written_answers(data.splits.test),
                    fmt=c.data.format, batch_size=c.harm.batch_size))
        harm = harmfulness(m.fn, params, m.tokenizer, prompts, scorers, fmt=c.data.format,
                           max_new_tokens=c.harm.max_new_tokens, batch_size=c.harm.batch_size,
                           reference=reference[0])
        for s in scorers:
            out[f"hs_{s.name}"] = harm[s.name]["hs_mean"]
            out[f"hs_{s.name}_frac"] = harm[s.name]["hs_frac"]
            out[f"hs_{s.name}_ci"] = harm[s.name]["hs_mean_ci"]
            out[f"hs_{s.name}_frac_ci"] = harm[s.name]["hs_frac_ci"]
        out.update(harm["labels"])
        sums, counts = benign_ce_rows(m.fn, params, m.tokenizer, harmful_pairs, fmt=c.data.format,
                                      seq_len=c.data.context_length)
        with_ci(out, "harmful_loss", sums / np.maximum(counts, 1.0), weights=counts)
        if benign_pairs:  # utility.n_mc = 0 keeps the benign CE and exact match
            out.update(offline_utility(m.fn, params, m.tokenizer, benign_pairs=benign_pairs,
                                       mc_items=mc_items, fmt=c.data.format,
                                       seq_len=c.data.context_length))
            out.update(benign_exact_match(m.fn, params, m.tokenizer, data.benign_eval[: u.n_benign],
                                          fmt=c.data.format, max_new_tokens=c.eval.max_new_tokens,
                                          batch_size=c.harm.batch_size))
        if tasks:
            out.update(_zero_shot(m, params, tasks, u.lm_eval_limit))
        out["generations"] = harm["generations"]
        return out

    return evaluate


def _zero_shot(m: LoadedModel, params: Params, tasks: list[str], limit: int) -> dict[str, float]:
    from seam_jax.eval.lm_eval_adapter import evaluate as lm_evaluate

    res = lm_evaluate(m.fn, params, m.tokenizer, tasks, limit=limit or None)
    out = {}
    for t in tasks:
        r = res.get(t, {})
        # Prefer length-normalised accuracy where a task reports it (HellaSwag, ARC).
        val = r.get("acc_norm,none", r.get("acc,none"))
        if val is not None:
            out[f"zs_{t}"] = float(val)
    if out:
        out["zs_avg"] = sum(out.values()) / len(out)
    return out


def targets(c: mlc.ConfigDict) -> dict[str, Callable[[], LoadedModel]]:
    """``attack.targets`` ("name=path,...") as lazy loaders; "" is ``model.source``."""
    text = str(c.attack.targets).strip()
    if not text:
        return {"model": lambda: load_model(c)}
    out: dict[str, Callable[[], LoadedModel]] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, path = part.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"attack.targets entry {part!r}; write name=path")
        p = (pathlib.Path(path.strip()).expanduser() if storage.is_local(path.strip())
             else storage.resolve(path.strip(), "attack.targets"))
        if not p.exists():
            raise ConfigError(f"checkpoint {p} not found (attack.targets {name.strip()!r})")
        out[name.strip()] = lambda p=p: load_checkpoint(p, c)
    return out


def attack_checkpoint(c: mlc.ConfigDict) -> CheckpointConfig:
    """An attack cell's checkpoints: the run's own (``checkpoint``: asynchronous or not),
    every ``attack.checkpoint_every`` steps, the newest kept."""
    return CheckpointConfig(**{**c.checkpoint.to_dict(), "every": int(c.attack.checkpoint_every),
                               "keep": 1})


def run(c: mlc.ConfigDict) -> list[dict[str, Any]]:
    run_dir = run_dir_lib.resolve(c.run_dir)  # the one conversion (file:// URLs too)
    run_dir.mkdir(parents=True, exist_ok=True)
    cells = grid_lib.from_config(c.attack)
    models = targets(c)  # checks paths before any heavy work
    data = load_experiment_data(c, run_dir)
    out_dir = storage.Path(c.attack.out_dir or run_dir / "attacks")  # local or gs://
    rows = sweep(models, cells, data.splits.attack, out_dir, make_evaluator(c, data),
                 attack_data(c), keep_checkpoints=c.attack.keep_checkpoints, progress=c.progress,
                 checkpoint=attack_checkpoint(c), eval_every=c.attack.eval_every,
                 eval_key={k: c[k].to_dict() for k in ("harm", "utility", "data", "eval")})
    write_report(out_dir, before={}, attacked=rows, pca=None)
    log.info("attack sweep done: %d results in %s", len(rows), out_dir / "results.jsonl")
    return rows


__all__ = ["attack_data", "make_evaluator", "run", "targets"]

"""The main job: defend a model with SEAM, then export it to Hugging Face format.

Steps: load the model and data; measure refusal and benign accuracy on held-out
prompts; train ``grad L_ul + alpha grad L_up + beta grad L_sd`` (resuming from the
latest checkpoint of the run directory); export; measure again; write a summary.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time
from typing import Any

import jax
import ml_collections as mlc

from seam_jax import config as config_lib
from seam_jax import defense as defense_lib
from seam_jax import memory
from seam_jax.defense import seam_hyper
from seam_jax.eval import geometry as geometry_lib
from seam_jax.eval.behaviour import behaviour
from seam_jax.eval.report import behaviour_table
from seam_jax.hf.export import export_hf
from seam_jax.hf.source import load_model
from seam_jax.jobs.data import load_experiment_data, seam_batches
from seam_jax.jobs.sharding import training_setup
from seam_jax.model.api import ModelFn
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.train import run_dir as run_dir_lib
from seam_jax.train.loop import LoopConfig, NothingTrained, run as run_loop
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import TrainStep, build_step, optimizer_for

log = logging.getLogger(__name__)


def train_step(c: mlc.ConfigDict, fn: ModelFn, setup: Any = None) -> TrainStep:
    """The job's train step for ``c`` (the objective of ``defense.name``, SEAM by default),
    on ``setup``'s mesh if given (a ``parallel.sharded.ShardedSetup``). The plan job
    compiles this same program (``parallel.plan.lower_step``)."""
    optimizer, schedule = optimizer_for(OptimConfig(**c.optim.to_dict()), int(c.steps))
    objective = defense_lib.objective(c, fn)
    layout = setup.layout(fn, optimizer, objective.frozen) if setup is not None else None
    return build_step(objective, optimizer, schedule, layout=layout)


def empty_hint(c: mlc.ConfigDict, batches: Any, n_rows: dict[str, int]) -> str:
    """How many rows of each set keep a target token within the context, and what to change."""
    fit = ", ".join(f"{n_rows[k] - batches.empty_rows[k]} of {n_rows[k]} {k}"
                    for k in ("adv", "aln", "bgn"))
    return (f"rows with a target token within data.context_length={c.data.context_length}: "
            f"{fit}; raise --config.data.context_length, or use shorter prompts")


def heldout_pairs(c: mlc.ConfigDict, tok: Any, data: Any) -> list[tuple[dict, dict]]:
    """``seam.heldout_pairs`` fixed (harmful, benign) batch pairs held out of SEAM training:
    the attack split's harmful rows, and the held-out benign items (proxy data; with
    ``data.source='files'`` there are none, so the benign training rows stand in)."""
    harmful = data.splits.attack or data.splits.defense
    if not data.splits.attack:
        log.warning("held-out geometry: data.n_attack=0, so its harmful batches are training rows")
    benign = [{"instruction": b.instruction, "input": b.input, "output": b.output}
              for b in data.benign_eval]
    if not benign:
        log.warning("held-out geometry: no held-out benign items, so its benign batches are "
                    "training rows")
        benign = data.benign_rows
    d = c.data
    return geometry_lib.heldout_pairs(tok, harmful, benign, int(c.seam.heldout_pairs),
                                      seq_len=d.context_length, batch_size=d.batch_size,
                                      seed=d.seed, fmt=d.format, benign_loss_on=d.benign_loss_on)


def run(c: mlc.ConfigDict) -> dict[str, Any]:
    run_dir = run_dir_lib.resolve(c.run_dir)  # the one conversion (file:// URLs too)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lib.locked(run_dir):  # a second run on this directory refuses with one line
        return _run(c, run_dir)


def _run(c: mlc.ConfigDict, run_dir: pathlib.Path) -> dict[str, Any]:
    t0 = time.time()
    # run.json: another config's run directory is refused before the model loads.
    manifest = run_dir_lib.Manifest.open(run_dir, c, job="seam")
    hp = seam_hyper(c)
    defense = defense_lib.get(str(c.defense.name))
    label = "SEAM" if defense.name == "seam" else defense.name  # the progress bar's and log's
    setup = training_setup(c)
    m = load_model(c, setup.param_shardings_fn if setup else None)
    data = load_experiment_data(c, run_dir)
    batches = seam_batches(c, m.tokenizer, data)
    n_rows = {"adv": len(data.splits.defense), "aln": len(data.splits.defense),
              "bgn": len(data.benign_rows)}
    hint = empty_hint(c, batches, n_rows)
    if any(batches.empty_rows[k] == n_rows[k] for k in n_rows):
        raise NothingTrained(f"no step could train (every row of a set has its response cut "
                             f"off): {hint}")
    # Before training (the step donates m.params): what this run is, checked against run.json.
    identity = run_dir_lib.model_identity(m.cfg, m.params)
    data_id = run_dir_lib.data_identity(
        {"defense": data.splits.defense, "benign": data.benign_rows}, batches.batch_at(0))
    forced = manifest.settle(model=identity, data=data_id)
    evaluate = c.eval.enabled
    if setup is not None and setup.process_count > 1 and evaluate:
        # Decoding takes host arrays; across processes it would need global ones.
        log.warning("eval.enabled is ignored with %d processes: evaluate the exported HF "
                    "checkpoint instead (job=generate or the attack job)", setup.process_count)
        evaluate = False
    held_out = data.splits.test[: c.eval.n_prompts]  # rows: the judges read their secrets
    check = functools.partial(behaviour, m.fn, tok=m.tokenizer, harmful_prompts=held_out,
                              benign=data.benign_eval, fmt=c.data.format,
                              max_new_tokens=c.eval.max_new_tokens, seq_len=c.data.context_length)
    summary: dict[str, Any] = {"config_digest": config_lib.digest(c),
                               "model_weights": identity["weights"]}
    if forced:
        summary["resume_forced"] = forced
    if defense.name != "seam":
        summary["defense"] = defense.name
    if evaluate:
        def measure() -> dict[str, Any]:
            log.info("measuring the base model on %d held-out harmful prompts", len(held_out))
            return check(m.params)

        # Reused only for what it measured: this model, these prompts, this eval config.
        key = {"model": identity, "eval": c.eval.to_dict(), "format": c.data.format,
               "context_length": c.data.context_length, "tokens": data_id["first_batch"],
               "held_out": run_dir_lib.digest_of(held_out),
               "benign_eval": run_dir_lib.digest_of(data.benign_eval)}
        before = run_dir_lib.cached(run_dir / "eval_before.json", key, measure)
        summary["before"] = {k: v for k, v in before.items() if k != "samples"}

    if hp.beta and defense.name == "seam":
        # Where the compute dtype rounds eps*d away, Eq. 6 measures noise: refuse before training
        # (one line naming the fix) unless seam.sd_precision='faithful' asks for it.
        from seam_jax.theory.precision import check_sd_precision

        realised = check_sd_precision(m.fn, m.params, batches.batch_at(0), hp)
        if realised is not None:
            summary["sd_perturbation"] = realised
    # Held-out c = cos(g_a, g_b) and both norms at the start, every seam.heldout_every
    # steps (the loop's on_state hook) and at the end, in float32 or wider:
    # RUN/heldout_geometry.jsonl and .png. A row replaces any at its step or later, so a
    # resumed run rewrites the killed run's rows past its checkpoint; step 0 is measured
    # only if absent (the base model is the same on every rerun).
    geo_path = run_dir / "heldout_geometry.jsonl"
    geo_pairs = []
    every = int(c.seam.heldout_every)

    def record_geometry(step: int, p: Any) -> dict[str, Any]:
        row = geometry_lib.append_record(
            geo_path, step, geometry_lib.heldout_geometry(m.fn, p, geo_pairs))
        log.info("held-out geometry at step %d: c=%.4f |g_a|=%.4g |g_b|=%.4g", step, row["cos"],
                 row["norm_g_a"], row["norm_g_b"])
        return row

    if c.seam.heldout_pairs > 0 and (setup is None or setup.process_count == 1):
        geo_pairs = heldout_pairs(c, m.tokenizer, data)
        if not any(r["step"] == 0 for r in geometry_lib.read_records(geo_path)):
            geo_path.unlink(missing_ok=True)
            record_geometry(0, m.params)
            memory.release()  # its gradients, freed, back to the system before the step compiles
    step_fn = train_step(c, m.fn, setup)
    on_state = None
    if geo_pairs and every > 0:
        def on_state(step: int, st: Any) -> None:
            if step % every == 0 and step != int(c.steps):  # the end row is written below
                record_geometry(step, step_fn.model_params(st))
    source, place = defense_lib.source(c, batches), None
    if setup is not None:
        source, place = setup.local_source(source), setup.batch_to_global
    # The step donates its state: m.params are not used after this.
    state = run_loop(
        m.params, step_fn, source,
        LoopConfig(steps=c.steps, run_dir=run_dir, seed=c.seed,
                   desc=label,
                   checkpoint=CheckpointConfig(**c.checkpoint.to_dict()),
                   postfix=defense.metrics[:4], progress=c.progress,
                   empty_hint=hint),
        meta={"config_digest": summary["config_digest"]}, place_batch=place, on_state=on_state,
    )
    params = step_fn.model_params(state)  # LoRA: the adapters merged into the base
    # The optimizer's moments (two parameter-sized buffers) are not read after the last
    # step: freed before the held-out geometry's gradients and the export.
    del state
    if geo_pairs:
        row = record_geometry(int(c.steps), params)
        geometry_lib.plot(geometry_lib.read_records(geo_path), run_dir / "heldout_geometry.png")
        summary["heldout_geometry"] = {k: row[k] for k in ("cos", "norm_g_a", "norm_g_b")}
    export_dir = (run_dir_lib.resolve(c.export.dir, "export.dir") if c.export.dir
                  else run_dir / "defended-hf")
    # The run's own export is replaced on a rerun; a user-chosen directory is protected.
    overwrite = c.export.overwrite or not c.export.dir
    export_hf(params, m.cfg, export_dir, tokenizer=m.tokenizer, dtype=c.export.dtype or None,
              max_shard_size=c.export.max_shard_size, overwrite=overwrite)
    summary["export_dir"] = str(export_dir)
    if evaluate:
        # The coherence judge scores text under the base model (the step donated m.params).
        after = check(params, reference_params=load_model(c).params,
                      coherence_threshold=before.get("coherence_threshold"))
        (run_dir / "eval_after.json").write_text(json.dumps(after, indent=1))
        summary["after"] = {k: v for k, v in after.items() if k != "samples"}
        log.info("behaviour, with 95%% bootstrap intervals:\n%s",
                 behaviour_table({"before": before, "after": after}))
    summary["wall_seconds"] = round(time.time() - t0, 1)
    if jax.process_index() == 0:  # the processes of a job share the run directory
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("%s done in %.0f s; summary in %s", label, summary["wall_seconds"],
             run_dir / "summary.json")
    return summary

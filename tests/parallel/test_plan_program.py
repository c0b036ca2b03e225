"""The memory plan compiles the SEAM job's own step, not a twin of it.

Both come from ``train.step.build_step``; this checks that the job
(``jobs.seam.train_step``, from its loaded model and sharded setup) and the plan
(``parallel.plan.lower_step``, from the config's shapes alone) hand it the same
objective, optimizer, schedule and layout: their lowered StableHLO texts are equal,
on the debug model over a (data, fsdp, tensor) = (1, 4, 2) mesh of fake CPU devices. For
a baseline defense (``defense.name``), the plan lowers that defense's step, with the
batches the job's batch source gives (keys, shapes, dtypes; seed rows where it draws).
"""

import hashlib
import pathlib

import jax
import numpy as np
import pytest

from seam_jax import defense as defense_lib
from seam_jax.jobs import plan as plan_job
from seam_jax.jobs.data import load_experiment_data
from seam_jax.jobs import seam as seam_job
from seam_jax.jobs.sharding import mesh_config, training_setup
from seam_jax.main import parse
from seam_jax.parallel.plan import abstract_step_batches, lower_step

REPO = pathlib.Path(__file__).resolve().parents[2]
ARGS = ["seam_jax", f"--config={REPO / 'configs/debug.py'}", "--config.mesh.use=on",
        "--config.mesh.fsdp=4", "--config.mesh.tensor=2", "--config.data.batch_size=8",
        "--config.data.context_length=32", "--config.plan.num_devices=8"]


def fingerprint(lowered) -> str:
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def plan_lowering(c):
    spec = plan_job.step_spec(c)
    lowered, _, rules, state = lower_step(spec, mesh_config(c), jax.devices()[:8])
    return lowered, abstract_step_batches(spec, rules), state


def test_plan_lowers_the_seam_jobs_step():
    assert jax.device_count() == 8
    c = parse(ARGS)
    plan_lowered, batches, state = plan_lowering(c)

    setup = training_setup(c)
    assert setup is not None and dict(setup.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    m = seam_job.load_model(c, setup.param_shardings_fn)
    job_lowered = seam_job.train_step(c, m.fn, setup).lower(state, batches)
    assert fingerprint(job_lowered) == fingerprint(plan_lowered)

    # The comparison can fail: another beta, or another run length (the schedule's
    # constants), is another program.
    for extra in ("--config.seam.beta=0.5", "--config.steps=7"):
        assert fingerprint(plan_lowering(parse(ARGS + [extra]))[0]) != fingerprint(plan_lowered), extra


# repnoise reads seed rows; tar also carries a frozen tree (the base model, its DPO reference)
@pytest.mark.parametrize("name", ["booster", "repnoise", "tar"])
def test_plan_lowers_a_baseline_defenses_step(name, tmp_path):
    c = parse(ARGS + [f"--config.defense.name={name}"])
    plan_lowered, batches, state = plan_lowering(c)
    setup = training_setup(c)
    m = seam_job.load_model(c, setup.param_shardings_fn)
    job_lowered = seam_job.train_step(c, m.fn, setup).lower(state, batches)
    assert fingerprint(job_lowered) == fingerprint(plan_lowered)
    assert fingerprint(plan_lowered) != fingerprint(plan_lowering(parse(ARGS))[0])  # not SEAM's

    # The plan's batches are what the job's batch source hands the step.
    data = load_experiment_data(c, tmp_path)
    real = defense_lib.source(c, seam_job.seam_batches(c, m.tokenizer, data)).batch_at(0)
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(np.shape(x)), np.dtype(x.dtype)), tree)
    assert shapes(real) == shapes(batches)
    d = defense_lib.get(name)
    assert set(real) == set(d.batch_keys) | ({"seed"} if d.seeded else set())
    assert ("frozen" in state) == (name == "tar")

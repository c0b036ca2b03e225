"""No sharded train step makes XLA's SPMD partitioner replicate a tensor on every device.

When the partitioner cannot go from one sharding of a tensor to another by collectives on
the shards, it gathers the whole tensor onto every device and slices it again, and logs
"[SPMD] Involuntary full rematerialization" (``seam_jax.parallel.partitioner_log``):
memory and bandwidth that the plan does not show. The embedding lookup did so on every
mesh with data and fsdp both above 1, in each forward pass (the gather's rows, embed over
fsdp, could not become the residual's, batch over data x fsdp) and each backward pass (the
way back): on (data, fsdp, tensor) = (2, 2, 2), 16 warnings per SEAM step (hessian_free,
vmapped; 20 sequential, 24 exact_hvp, 18 in bfloat16), 4 per SFT step, 12, 6, 8 and 22
for Booster, Vaccine, RepNoise and TAR; 8 per SEAM step on (2, 4, 1); none on (1, 8, 1).
(Measured 2026-12-07 by this file's child with ``_EMBED_ROWS = _RESIDUAL``, which is the
model's code before the fix.) ``model.transformer._EMBED_ROWS`` now takes the rows through
the table's own layout first, from where the residual's is one all-to-all, and each case
below must log none: a count of warnings, exactly 0, no tolerance.

The steps compile in a child process. The warning is only a line that XLA's C++ logging
writes to file descriptor 2 while the partitioner runs, and the test processes share a
persistent compilation cache (tests/conftest.py): a program read back from it is not
partitioned again and logs nothing, and JAX decides once per process whether to read it.
The child runs with that cache off (``JAX_COMPILATION_CACHE_DIR=""``) and XLA's log level
at INFO (``TF_CPP_MIN_LOG_LEVEL=0``), and compiles each step inside
``partitioner_log.capture``. It first compiles the lookup alone straight into the
residual's layout (the model's code before the fix), which must warn: a child that cannot
see the warning fails these tests instead of passing them.

The model is the float32 tiny model of the other sharded tests (sizes that divide every
mesh here) with tied embeddings (as SmolLM2 and the debug preset), batch 8 x 16; the steps
come from ``train.step.build_step`` with ``parallel.sharded.step_layout``, as the jobs'.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[2]
ROWS = 8
# (step, mesh): SEAM (hessian_free vmapped unless named), SFT, the baseline defenses.
CASES = [("seam", (2, 2, 2)), ("seam", (1, 8, 1)), ("seam", (2, 4, 1)),
         ("seam-sequential", (2, 2, 2)), ("seam-exact_hvp", (2, 2, 2)), ("seam-bf16", (2, 2, 2)),
         ("sft", (2, 2, 2)), ("sft", (1, 8, 1)),
         ("booster", (2, 2, 2)), ("vaccine", (2, 2, 2)), ("repnoise", (2, 2, 2)),
         ("tar", (2, 2, 2))]
CONTROLS = ("lookup-straight", "lookup-through-rows")  # on (2, 2, 2)


def case_id(step: str, mesh: tuple[int, ...]) -> str:
    return f"{step}-{'x'.join(map(str, mesh))}"


# ------------------------------------------------------------------ the child process
def _child() -> None:
    """Compile every case and control; print {id: [warning lines]} as the last stdout line."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding

    import tiny
    from seam_jax import defense
    from seam_jax.config import base_config
    from seam_jax.defense.common import SEED_KEY
    from seam_jax.model import transformer
    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import ModelConfig
    from seam_jax.parallel import partitioner_log, sharded
    from seam_jax.parallel.mesh import MeshConfig, make_mesh
    from seam_jax.parallel.rules import Rules
    from seam_jax.seam.objective import SeamHyper
    from seam_jax.train.step import build_step, seam_objective, sft_objective

    cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      initializer_range=0.1, tie_word_embeddings=True)
    # Cheaper XLA:CPU code generation (as tests/parallel/test_sharding.py); the SPMD
    # partitioning runs before any of it.
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
            "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}
    sgd, sched = optax.sgd(1.0), optax.constant_schedule(1.0)
    hyper = {"seam": SeamHyper(estimator="hessian_free", vmap=True),
             "seam-sequential": SeamHyper(estimator="hessian_free", vmap=False),
             "seam-exact_hvp": SeamHyper(estimator="exact_hvp"),
             "seam-bf16": SeamHyper(estimator="hessian_free", vmap=True)}

    def rules_for(mesh):
        return Rules.preset("fsdp_tp", make_mesh(MeshConfig(*mesh)))

    def objective_and_batches(step: str):
        fn = ModelFn(cfg.replace(dtype="bfloat16") if step == "seam-bf16" else cfg)
        b = tiny.seam_batches(0, b=ROWS, t=16, vocab=cfg.vocab_size)
        if step in hyper:
            return fn, seam_objective(fn, hyper[step]), b
        if step == "sft":
            return fn, sft_objective(fn), {"train": b["adv"]}
        c = base_config()
        c.defense.name = step
        c.defense.tar.inner_steps = 2
        c.defense.tar.num_tasks = 1
        b[SEED_KEY] = np.full((ROWS,), 5, np.uint32)
        keys = (*defense.get(step).batch_keys, *((SEED_KEY,) if defense.seeded(c) else ()))
        return fn, defense.objective(c, fn), {k: b[k] for k in keys}

    def lower_step(step: str, mesh):
        rules = rules_for(mesh)
        fn, obj, b = objective_and_batches(step)
        train_step = build_step(obj, sgd, sched,
                                layout=sharded.step_layout(fn, sgd, rules, ROWS, obj.frozen))
        return train_step.lower(train_step.abstract_state(fn.abstract_params),
                                sharded.abstract_batches(b, rules))

    def lower_lookup(through_rows: bool):
        rules = rules_for((2, 2, 2))
        shape = (cfg.vocab_size, cfg.hidden_size)
        table = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(
            rules.mesh, rules.param_spec("embedding", ("vocab", "embed"), shape)))
        ids = jax.ShapeDtypeStruct((ROWS, 16), jnp.int32,
                                   sharding=sharded.batch_sharding(rules, ROWS))

        def lookup(table, ids):
            x = jnp.take(table, ids, axis=0)
            if through_rows:
                x = rules.constrain(x, transformer._EMBED_ROWS)
            return rules.constrain(x, transformer._RESIDUAL)

        return jax.jit(lookup).lower(table, ids)

    lowerings = {"lookup-straight": lambda: lower_lookup(False),
                 "lookup-through-rows": lambda: lower_lookup(True)}
    lowerings.update({case_id(s, m): functools.partial(lower_step, s, m) for s, m in CASES})
    out = {}
    for name, lower in lowerings.items():  # one at a time: each capture holds one compile
        lowered = lower()
        with partitioner_log.capture() as log:
            lowered.compile(fast)
        out[name] = log.full_rematerializations()
        print(f"{name}: {len(out[name])}", file=sys.stderr, flush=True)
    print(json.dumps(out))


# ------------------------------------------------------------------ the tests
@functools.cache
def child() -> dict[str, list[str]]:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": "", "TF_CPP_MIN_LOG_LEVEL": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parents[1]), str(REPO),
                                                       os.environ.get("PYTHONPATH", "")]))}
    assert "xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]  # tests/conftest.py
    proc = subprocess.run([sys.executable, str(HERE)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"the child failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lookup_rows_take_the_tables_split_first():
    """``_EMBED_ROWS`` names the embed dimension by the parameter axis, which gets its mesh
    axes (fsdp) before ``batch`` does: the rows as the gather makes them, batch over data."""
    from jax.sharding import PartitionSpec as P

    from seam_jax.model import transformer
    from seam_jax.parallel.mesh import MeshConfig, make_mesh
    from seam_jax.parallel.rules import Rules

    rules = Rules.preset("fsdp_tp", make_mesh(MeshConfig(2, 2, 2)))
    assert rules.activation_spec(transformer._EMBED_ROWS, (8, 16, 64)) == P("data", None, "fsdp")
    residual = rules.activation_spec(transformer._RESIDUAL, (8, 16, 64))
    assert residual == P(("data", "fsdp"), None, None)
    # Activation names alone keep their order (the batch takes data, then fsdp).
    assert rules.activation_spec(("batch", "act_heads"), (8, 4)) == P(("data", "fsdp"), "tensor")


def test_the_check_sees_a_full_rematerialization():
    got = child()
    # The lookup alone, straight from the gather's layout into the residual's: the rows
    # replicated on every device (2 warnings: the gather and its all-gather). A child that
    # logged nothing here (its log level, a cache) would pass every case below unseen.
    assert got["lookup-straight"], "the child saw no warning where the partitioner gives one"
    assert got["lookup-through-rows"] == []


@pytest.mark.parametrize("step,mesh", CASES, ids=[case_id(s, m) for s, m in CASES])
def test_sharded_step_compiles_without_full_rematerialization(step, mesh):
    got = child()
    assert got["lookup-straight"], "the child saw no warning where the partitioner gives one"
    lines = got[case_id(step, mesh)]
    assert not lines, f"{len(lines)} involuntary full rematerializations, the first:\n" + "\n".join(
        line[:1500] for line in lines[:4])


if __name__ == "__main__":
    _child()

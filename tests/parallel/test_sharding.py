"""Sharded training equals single-device training; FSDP splits the state; checkpoints change mesh.

On 8 fake CPU devices (tests/conftest.py), with a float32 tiny model whose sizes
divide every mesh (4 heads, 2 kv heads, hidden 64, MLP 128, vocabulary 256, 2 layers,
batch 8):

- The sharded SEAM step (hessian_free with vmapped perturbed gradients on meshes
  (data, fsdp, tensor) = (8,1,1), (1,8,1), (2,2,2), (1,4,2); exact_hvp, i.e. jvp over
  grad, on (2,2,2)) and the sharded SFT step give the single-device step's metrics and
  updated parameters within 1e-5 relative. The optimizer is SGD with learning rate 1,
  so the parameter update *is* the SEAM gradient and is compared too (Adam's first
  step, about lr * sign(g), would hide a wrong gradient). Sharding only reorders
  float32 sums (psums of partial matmuls and batch reductions), ~1e-7 relative per
  reduction; 1e-5 leaves room for that through a 2-layer model but not for a wrong
  layout, which is off by O(1). hessian_free's finite difference cancels ~3 digits
  (eps = 1e-3 on float32 parameters), so its L_sd term carries reassociation noise
  near 1e-4 of itself; the test uses the paper's beta = 0.01, which puts that noise
  near 5e-6 of the update. exact_hvp has no cancellation and runs with beta = 1.
  Measured: updated params <= 1e-6, the update <= 5e-6, metrics <= 3e-7 except the
  cosine c, which is near 0 (-0.003) and so is also allowed float32's absolute
  resolution, 1e-7 (its error is ~2e-8).
- FSDP over 8 devices: each device holds at most 1/8 of the parameters and of the
  AdamW state plus 5% (the replicated norm vectors).
- A checkpoint written on mesh (fsdp, tensor) = (2, 4) restores onto (4, 2) and
  (1, 8), bitwise, with the new layout; two more AdamW steps there match two more on
  the original mesh within 1e-5 relative (reduction order again).

Every step comes from ``train.step.build_step`` (the jobs' builder), the sharded ones
with ``parallel.sharded.step_layout``, and every state from ``TrainStep.init`` around
``ModelFn.init(seed, shardings)``'s parameters (the jobs' init). Compiles dominate the runtime, so each
step is compiled once (module-scoped caches), concurrently, with cheaper XLA:CPU code
generation (``FAST``): the SPMD partitioning under test happens before the backend,
and both sides of each comparison use the same options.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn
from seam_jax.model.config import ModelConfig
from seam_jax.parallel import sharded
from seam_jax.parallel.mesh import DistributedConfig, MeshConfig, distributed_kwargs, make_mesh, resolve_sizes
from seam_jax.parallel.plan import PlanConfig, StepSpec, plan_step
from seam_jax.parallel.rules import ACTIVATION_AXES, PARAM_AXES, RULES, Rules, ShardingError
from seam_jax.seam.objective import SeamHyper
from seam_jax.train.checkpoint import CheckpointConfig, Checkpointer
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import build_step, init_state, optimizer_for, seam_objective, sft_objective

CFG = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  initializer_range=0.1, tie_word_embeddings=False)
# XLA:CPU options that halve these compiles (fusion emitters and XNNPACK off, little LLVM
# optimisation); the SPMD partitioning under test runs before any of them.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}
RTOL = 1e-5
# float32's resolution near 1: it only matters for metrics near 0, such as the cosine c
# (-0.003 here), whose sharded and unsharded values differ by ~2e-8 absolutely.
ATOL_METRIC = 1e-7
HP = {"hessian_free": SeamHyper(beta=0.01, estimator="hessian_free", vmap=True),
      "exact_hvp": SeamHyper(beta=1.0, estimator="exact_hvp")}
CASES = [("hessian_free", (8, 1, 1)), ("hessian_free", (1, 8, 1)), ("hessian_free", (2, 2, 2)),
         ("hessian_free", (1, 4, 2)), ("exact_hvp", (2, 2, 2)), ("sft", (1, 4, 2))]


@functools.cache
def fn() -> ModelFn:
    return ModelFn(CFG)


def batches(kind: str, step: int = 0) -> dict:
    b = tiny.seam_batches(step, b=8, t=16, vocab=CFG.vocab_size)
    return {"train": b["adv"]} if kind == "sft" else b


def objective(kind: str):
    return sft_objective(fn()) if kind == "sft" else seam_objective(fn(), HP[kind])


def rules_for(sizes: tuple[int, int, int]) -> Rules:
    return Rules.preset("fsdp_tp", make_mesh(MeshConfig(*sizes)))


def as_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(tree))


def rel(a, b) -> float:
    """||a - b|| / ||b|| (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_trees_close(got, want, what: str, rtol: float = RTOL) -> None:
    errs = jax.tree_util.tree_flatten_with_path(jax.tree.map(rel, got, want))[0]
    bad = {jax.tree_util.keystr(p): e for p, e in errs if not e <= rtol}
    assert not bad, f"{what}: relative errors above {rtol}: {bad}"


SGD = optax.sgd(1.0)
SGD_SCHED = optax.constant_schedule(1.0)


@functools.cache
def init_params():
    """The unsharded init, jitted like the sharded one (eager init differs by 1 ulp)."""
    return jax.jit(lambda: fn().init(0))()


def lower_reference(kind: str):
    step = build_step(objective(kind), SGD, SGD_SCHED)
    return step.lower(step.abstract_state(fn().abstract_params), batches(kind)), None, step


def lower_sharded(kind: str, sizes: tuple[int, int, int], optimizer=SGD, schedule=SGD_SCHED):
    rules = rules_for(sizes)
    layout = sharded.step_layout(fn(), optimizer, rules, 8)
    step = build_step(objective(kind), optimizer, schedule, layout=layout)
    abstract = step.abstract_state(fn().abstract_params)
    return step.lower(abstract, sharded.abstract_batches(batches(kind), rules)), rules, step


ADAMW = OptimConfig(name="adamw", lr=1e-2, warmup_ratio=0.0, schedule="constant")
RESTORE_MESHES = ((1, 2, 4), (1, 4, 2), (1, 1, 8))


@functools.cache
def compiled() -> dict:
    """Every step this module runs, lowered in turn and compiled concurrently.

    XLA compiles without the GIL, so the compiles share the cores (the runtime is
    theirs); each key maps to (compiled, rules, the ``TrainStep`` it was built as).
    """
    lowered = {("ref", k): lower_reference(k) for k in {k for k, _ in CASES}}
    lowered.update({("sharded", k, m): lower_sharded(k, m) for k, m in CASES})
    optimizer, schedule = optimizer_for(ADAMW, 10)
    lowered.update({("adamw", m): lower_sharded("sft", m, optimizer, schedule) for m in RESTORE_MESHES})
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {k: pool.submit(lo.compile, FAST) for k, (lo, _, _) in lowered.items()}
        return {k: (futures[k].result(), r, a) for k, (_, r, a) in lowered.items()}


@functools.cache
def reference(kind: str):
    """(initial params, params after one SGD step, metrics) on one device."""
    # The step donates its state: it gets a copy of the cached init.
    state = init_state(jax.tree.map(jnp.copy, init_params()), SGD, 0)
    new, m = compiled()[("ref", kind)][0](state, batches(kind))
    return as_np(init_params()), as_np(new["params"]), jax.device_get(m)


@pytest.mark.parametrize("kind,sizes", CASES, ids=[f"{k}-{'x'.join(map(str, s))}" for k, s in CASES])
def test_sharded_step_equals_single_device(kind, sizes):
    p0, p1_ref, m_ref = reference(kind)
    step, rules, train_step = compiled()[("sharded", kind, sizes)]
    p_sh = train_step.layout.state["params"]

    state = train_step.init(fn().init(0, shardings=p_sh), 0)
    assert jax.tree.map(lambda x: x.sharding, state) == train_step.layout.state
    # The sharded init draws the same numbers as the unsharded jitted one (partitionable threefry).
    jax.tree.map(np.testing.assert_array_equal, as_np(state["params"]), p0)
    new, m = step(state, sharded.global_batch(batches(kind), rules))

    assert jax.tree.map(lambda x: x.sharding, new["params"]) == p_sh
    m = jax.device_get(m)
    assert m.keys() == m_ref.keys()
    for k in m_ref:
        np.testing.assert_allclose(m[k], m_ref[k], rtol=RTOL, atol=ATOL_METRIC, err_msg=k)
    new_p = as_np(new["params"])
    assert_trees_close(new_p, p1_ref, "updated params")
    assert_trees_close(jax.tree.map(np.subtract, new_p, p0), jax.tree.map(np.subtract, p1_ref, p0),
                       "the update (the gradient)")


def test_fsdp_shards_params_and_optimizer_state():
    rules = rules_for((1, 8, 1))
    optimizer = optax.adamw(1e-3)
    layout = sharded.step_layout(fn(), optimizer, rules, 8)
    st_sh, p_sh = layout.state, layout.state["params"]
    step = build_step(objective("sft"), optimizer, optax.constant_schedule(1e-3), layout=layout)
    # Params first (as a loaded model would come), then the optimizer state around them.
    state = step.init(fn().init(0, shardings=p_sh), 0)
    assert jax.tree.map(lambda x: x.sharding, state) == st_sh
    for name in ("params", "opt_state"):
        per_device = sharded.bytes_per_device(state[name])
        total = sharded.total_bytes(state[name])
        assert len(per_device) == 8
        assert max(per_device.values()) <= total / 8 * 1.05, (name, per_device, total)
    # Every weight matrix is split over fsdp along its embed dimension.
    spec = p_sh["model"]["layers"]["mlp"]["down_proj"]["kernel"].spec
    assert tuple(spec) == (None, "tensor", "fsdp")


# ------------------------------------------------------------------ restore onto another mesh
def adamw_step(sizes: tuple[int, int, int]):
    """(rules, the ``TrainStep``, compiled AdamW SFT step) on mesh ``sizes``."""
    step, rules, train_step = compiled()[("adamw", sizes)]
    return rules, train_step, step


def run_steps(sizes, state, start: int, n: int):
    rules, _, compiled = adamw_step(sizes)
    for s in range(start, start + n):
        state, m = compiled(state, sharded.global_batch(batches("sft", s), rules))
        assert int(m["skipped"]) == 0
    return state


@pytest.mark.parametrize("target", [(1, 4, 2), (1, 1, 8)], ids=["to-4x2", "to-1x8"])
def test_checkpoint_restores_onto_another_mesh(tmp_path, target):
    source = (1, 2, 4)
    _, train_step, _ = adamw_step(source)
    state = train_step.init(fn().init(0, shardings=train_step.layout.state["params"]), 0)
    state = run_steps(source, state, 0, 2)
    ckpt = Checkpointer(tmp_path / "ckpt", CheckpointConfig(every=1, keep=1, use_async=False))
    ckpt.save(2, state, {"step": 2}, force=True)
    ckpt.wait()
    saved = as_np(state)
    want = as_np(run_steps(source, state, 2, 2)["params"])  # state is donated here

    _, train_dst, _ = adamw_step(target)
    abstract_dst = train_dst.abstract_state(fn().abstract_params)
    step, restored, meta = ckpt.restore_latest(abstract_dst)
    ckpt.close()
    assert step == 2 and meta["step"] == 2
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, abstract_dst)
    jax.tree.map(np.testing.assert_array_equal, as_np(restored), saved)
    got = as_np(run_steps(target, restored, 2, 2)["params"])
    assert_trees_close(got, want, f"params after resuming on mesh {target}")


def test_training_setup_drives_the_training_loop(tmp_path):
    """``sharded_training_setup`` as the SEAM job uses it: params placed by its
    shardings, ``train.loop.run`` with a step built on its layout, and the checkpoint
    restorable onto that layout."""
    from seam_jax.train.loop import LoopConfig, run

    setup = sharded.sharded_training_setup(MeshConfig(fsdp=-1, tensor=2, use="on"), 8)
    assert dict(setup.mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    params = jax.device_put(fn().init(0), setup.param_shardings_fn(CFG))

    class Source:
        def batch_at(self, step: int) -> dict:
            return batches("sft", step)

    loop = LoopConfig(steps=2, run_dir=tmp_path, progress=False,
                      checkpoint=CheckpointConfig(every=2, keep=1, use_async=False))
    optimizer, schedule = optimizer_for(OptimConfig(lr=1e-2), loop.steps)
    step = build_step(objective("sft"), optimizer, schedule, layout=setup.layout(fn(), optimizer),
                      compiler_options=FAST)
    state = run(params, step, Source(), loop)
    assert int(state["step"]) == 2
    assert jax.tree.map(lambda x: x.sharding, state) == step.layout.state
    abstract = step.abstract_state(fn().abstract_params)
    ckpt = Checkpointer(tmp_path / "checkpoints", CheckpointConfig())
    step_no, restored, _ = ckpt.restore_latest(abstract)
    ckpt.close()
    assert step_no == 2
    jax.tree.map(np.testing.assert_array_equal, as_np(restored["params"]), as_np(state["params"]))


# ------------------------------------------------------------------ config, rules, plan
def test_mesh_sizes_from_config():
    assert resolve_sizes((1, -1, 1), 8) == (1, 8, 1)
    assert resolve_sizes((2, -1, 2), 8) == (2, 2, 2)
    assert resolve_sizes((2, 4, 1), 8) == (2, 4, 1)
    for bad in [(-1, -1, 1), (3, -1, 1), (2, 2, 1), (0, -1, 1)]:
        with pytest.raises(ConfigError):
            resolve_sizes(bad, 8)
    mesh = make_mesh(MeshConfig(data=2, fsdp=-1, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_every_param_needs_a_rule_and_divisible_sizes():
    for name, table in RULES.items():
        assert set(PARAM_AXES + ACTIVATION_AXES) <= set(table), name
    mesh = make_mesh(MeshConfig(1, 8, 1))
    table = {k: v for k, v in RULES["fsdp_tp"].items() if k != "mlp"}
    with pytest.raises(ShardingError, match=r"model\.layers\.mlp\.\w+_proj\.kernel.*'mlp'"):
        Rules(table, mesh).param_shardings(fn().abstract_params, fn().logical_axes)
    odd = ModelFn(CFG.replace(hidden_size=36, head_dim=9))  # 36 does not divide over fsdp=8
    with pytest.raises(ShardingError, match="does not divide"):
        sharded.param_shardings(odd, Rules.preset("fsdp_tp", mesh))


def test_distributed_from_config_and_environment():
    cfg = DistributedConfig()
    assert distributed_kwargs(cfg, {}) is None  # one process
    assert distributed_kwargs(cfg, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed_kwargs(cfg, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}) == {}  # JAX detects
    assert distributed_kwargs(cfg, {"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}
    assert distributed_kwargs(DistributedConfig(mode="on"), {}) == {}
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}
    assert distributed_kwargs(DistributedConfig(mode="off"), slurm) is None
    explicit = DistributedConfig(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=1)
    assert distributed_kwargs(explicit, {}) == dict(coordinator_address="10.0.0.1:1234",
                                                    num_processes=2, process_id=1)
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed_kwargs(cfg, env) == dict(coordinator_address="h:1", num_processes=4, process_id=3)
    with pytest.raises(ConfigError):
        distributed_kwargs(DistributedConfig(coordinator_address="h:1"), {})


def test_plan_compiles_from_shapes_and_reports_memory():
    """The AOT plan on the tiny model (the SFT step: the same lowering path as the SEAM
    step above, in a fraction of the compile time), bf16 compute over float32 masters."""
    model = CFG.replace(param_dtype="float32", dtype="bfloat16", remat="full")
    spec = StepSpec(model=model, hp=SeamHyper(), optim=OptimConfig(), batch_size=8, seq_len=16,
                    step="sft")
    plan = PlanConfig(num_devices=8, device_memory_gb=1.0)
    p = plan_step(spec, MeshConfig(1, -1, 1), plan, 8)
    assert p.mesh == {"data": 1, "fsdp": 8, "tensor": 1} and p.fits
    assert p.peak_bytes == p.argument_bytes + p.output_bytes - p.alias_bytes + p.temp_bytes
    # Master weights and AdamW moments stay float32 under bf16 compute: 3 x 4 bytes per
    # parameter, split 8 ways (+5% for the replicated norm vectors).
    share = 12 * model.num_params() / 8
    assert share <= p.state_bytes <= share * 1.05
    assert p.argument_bytes >= p.state_bytes and p.alias_bytes >= p.state_bytes  # donated
    assert p.margin_bytes == p.budget_bytes - p.peak_bytes

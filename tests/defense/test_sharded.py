"""Each baseline's sharded step on a (data, fsdp, tensor) = (2, 2, 2) mesh of fake CPU
devices equals its single-device step.

As tests/parallel/test_sharding.py does for SEAM and SFT: the same float32 tiny model
(sizes that divide the mesh), batch 8, SGD with learning rate 1 so that the update is the
gradient and is compared itself, steps from ``train.step.build_step`` with
``parallel.sharded.step_layout``, compiled once each and concurrently with cheaper XLA:CPU
code generation. Sharding reorders float32 sums (~1e-7 relative per reduction); 1e-5
leaves room for that through a 2-layer model and TAR's AdamW adversary steps, but not for
a wrong layout (off by O(1)). Metrics near zero also get float32's absolute resolution
near 1, 1e-7 (as there). SEAM's own sharded step is tested there.
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
from seam_jax import defense
from seam_jax.config import base_config
from seam_jax.defense.common import SEED_KEY
from seam_jax.model.api import ModelFn
from seam_jax.model.config import ModelConfig
from seam_jax.parallel import sharded
from seam_jax.parallel.mesh import MeshConfig, make_mesh
from seam_jax.parallel.rules import Rules
from seam_jax.train.step import FROZEN, build_step

CFG = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  initializer_range=0.1, tie_word_embeddings=False)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}
RTOL, ATOL_METRIC = 1e-5, 1e-7
# booster+lora: Booster on LoRA adapters (defense.trainable=lora, dropout 0.05): the adapters
# replicated, the frozen base laid out like the parameters.
NAMES = ("none", "booster", "vaccine", "repnoise", "tar", "booster+lora")
MESH = (2, 2, 2)
SGD, SCHED = optax.sgd(1.0), optax.constant_schedule(1.0)


@functools.cache
def fn() -> ModelFn:
    return ModelFn(CFG)


def config(name: str):
    c = base_config()
    name, _, lora = name.partition("+")
    c.defense.name = name
    if lora:
        c.defense.trainable = "lora"
    c.defense.tar.inner_steps = 2
    c.defense.tar.num_tasks = 1
    c.defense.tar.adversary_lrs = "1e-3,2e-3"  # large enough on 1 step to move theta
    return c


def batches(name: str) -> dict:
    b = tiny.seam_batches(0, b=8, t=16, vocab=CFG.vocab_size)
    b[SEED_KEY] = np.full((8,), 5, np.uint32)
    keys = defense.get(name.partition("+")[0]).batch_keys
    return {k: b[k] for k in (*keys, *((SEED_KEY,) if defense.seeded(config(name)) else ()))}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@functools.cache
def compiled() -> dict:
    rules = Rules.preset("fsdp_tp", make_mesh(MeshConfig(*MESH)))
    lowered = {}
    for name in NAMES:
        obj = defense.objective(config(name), fn())
        ref = build_step(obj, SGD, SCHED)
        lowered[("ref", name)] = (ref.lower(ref.abstract_state(fn().abstract_params), batches(name)), ref)
        layout = sharded.step_layout(fn(), SGD, rules, 8, obj.frozen)
        sh = build_step(obj, SGD, SCHED, layout=layout)
        lowered[("sharded", name)] = (
            sh.lower(sh.abstract_state(fn().abstract_params),
                     sharded.abstract_batches(batches(name), rules)), sh)
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {k: pool.submit(lo.compile, FAST) for k, (lo, _) in lowered.items()}
        return {k: (futures[k].result(), step) for k, (_, step) in lowered.items()}, rules


@pytest.mark.parametrize("name", NAMES)
def test_sharded_defense_step_equals_single_device(name):
    steps, rules = compiled()
    p0 = jax.jit(lambda: fn().init(0))()
    ref_step, ref_train_step = steps[("ref", name)]
    new_ref, m_ref = ref_step(ref_train_step.init(jax.tree.map(jnp.copy, p0), 0), batches(name))
    step, train_step = steps[("sharded", name)]
    p_sh = sharded.param_shardings(fn(), rules)
    state = train_step.init(fn().init(0, shardings=p_sh), 0)
    if FROZEN in state:  # TAR's base model, LoRA's base weights: laid out like the parameters
        assert jax.tree.map(lambda x: x.sharding, state[FROZEN]) == p_sh
    new, m = step(state, sharded.global_batch(batches(name), rules))
    m, m_ref = jax.device_get(m), jax.device_get(m_ref)
    assert int(m["skipped"]) == 0 and m.keys() == m_ref.keys()
    for k in m_ref:
        # Booster's harm_drop is L_harm - L_harm_perturbed, a difference of two losses of ~5.5
        # (0.1 with LoRA): it carries their absolute error, RTOL of L_harm, not RTOL of itself.
        atol = RTOL * abs(float(m_ref["L_harm"])) if k == "harm_drop" else ATOL_METRIC
        np.testing.assert_allclose(m[k], m_ref[k], rtol=RTOL, atol=atol, err_msg=k)
    # The model's parameters after the step (LoRA: the adapters merged into the base).
    p0, p1, p1_ref = (jax.device_get(t) for t in (
        p0, train_step.model_params(new), ref_train_step.model_params(new_ref)))
    upd = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, p1, p0)
    upd_ref = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, p1_ref, p0)
    errs = jax.tree.leaves(jax.tree.map(rel, upd, upd_ref))
    assert max(errs) <= RTOL, errs

"""A baseline's LoRA adapters as what is trained (``defense.trainable=lora``): the step changes
the adapters alone, the export is the base with ``scale * A B`` added to each target
kernel, and the gradient with respect to the adapters is that of the published objective
written plainly through the merged weights (tests/defense/plain.py), in float64 on the tiny
model.

The merge here is written out (``W + scale * A B`` per layer), not taken from
``attack.lora``; the LoRA forward pass under test computes ``x W + scale (x A) B`` instead,
so the two sides are different programs for one function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

import plain
import tiny
from seam_jax import defense
from seam_jax.attack.lora import TARGETS
from seam_jax.config import base_config, validate
from seam_jax.defense.common import SEED_KEY
from seam_jax.errors import ConfigError
from seam_jax.hf.export import export_hf
from seam_jax.train.step import FROZEN, build_step

# Both sides in float64, the same quantities by different programs (merged kernels against
# the low-rank path, summation orders): they agree to ~1e-14; a gradient through the base
# weights, a wrong scale, a missing target or the full-parameter Booster direction (the
# perturbation normalised over the model's weights instead of the adapters') is off by
# O(1e-3) or more.
TOL = 1e-10
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False, "xla_cpu_use_xnnpack": False}
RANK, ALPHA = 4, 8.0
SCALE = ALPHA / RANK


def config(name: str, targets: str = "q,v,gate,down", dropout: float = 0.0):
    c = base_config()
    c.defense.name = name
    c.defense.trainable = "lora"
    c.defense.lora_rank, c.defense.lora_alpha = RANK, ALPHA
    c.defense.lora_dropout, c.defense.lora_targets = dropout, targets
    c.defense.booster.lam, c.defense.booster.alpha = 5.0, 0.1
    c.defense.vaccine.rho = 2.0
    t = c.defense.tar
    t.inner_steps, t.num_tasks, t.adversary_lrs, t.tr_grad_scale = 1, 1, "3e-2", 0.7
    t.retain_scale, t.schedule_lambda = 0.5, 0.3
    validate(c)
    return c


def merged(base, adapters):
    """The base with ``SCALE * A B`` added to every adapted kernel, written out."""
    out = jax.tree.map(lambda x: x, base)
    for block, attrs in adapters["model"]["layers"].items():
        for attr, ab in attrs.items():
            node = out["model"]["layers"][block][attr]
            node["kernel"] = node["kernel"] + SCALE * jnp.einsum(
                "lir,lro->lio", ab["lora_a"], ab["lora_b"])
    return out


def random_adapters(step, base, seed=3):
    """The step's adapter tree, with A and B both random (at init B = 0, so grad_A = 0)."""
    like = step.init(base, 0)["params"]
    leaves, tree = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])


def setup():
    fn = tiny.model("float64")
    base = fn.init(0)
    b = tiny.seam_batches(0)
    b[SEED_KEY] = np.full((2,), 7, np.uint32)
    return fn, base, b


def test_a_lora_step_changes_the_adapters_alone():
    with jax.enable_x64(False):
        fn = tiny.model()
        base = fn.init(0)
        c = config("booster")
        step = build_step(defense.objective(c, fn), optax.adamw(1e-2), optax.constant_schedule(1e-2))
        state = step.init(base, 0)
        paths = lambda t: {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]}
        adapters = paths(state["params"])
        assert adapters and all(p.endswith(("['lora_a']", "['lora_b']")) for p in adapters)
        # The optimizer's moments are the adapters' (AdamW: mu and nu), nothing of the base.
        moments = [jax.tree_util.keystr(p) for p, x in
                   jax.tree_util.tree_flatten_with_path(state["opt_state"])[0] if np.ndim(x)]
        assert len(moments) == 2 * len(adapters)
        assert all(p.endswith(("['lora_a']", "['lora_b']")) for p in moments), moments
        keep = jax.tree.map(np.asarray, base)
        for t in range(2):
            b = {k: v for k, v in tiny.seam_batches(t).items() if k in ("adv", "aln")}
            state, m = step(state, b)
            assert int(m["skipped"]) == 0
        jax.tree.map(np.testing.assert_array_equal, state[FROZEN], keep)  # the base: untouched
        b_leaves = [np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]
                    if jax.tree_util.keystr(p).endswith("['lora_b']")]
        assert all(np.any(x != 0) for x in b_leaves)  # B left zero: the adapters trained


def test_the_export_is_the_base_plus_scale_a_b(tmp_path):
    with jax.enable_x64(False):
        fn = tiny.model()
        base = fn.init(0)
        c = config("vaccine", targets="q,k,v,o,gate,up,down")
        step = build_step(defense.objective(c, fn), optax.sgd(1.0), optax.constant_schedule(1.0))
        state = step.init(jax.tree.map(jnp.copy, base), 0)
        state["params"] = random_adapters(step, base)
        got = step.model_params(state)  # what the job exports (jobs.seam)
        ab = state["params"]["model"]["layers"]
        for block, attr in TARGETS.values():
            a = np.asarray(ab[block][attr]["lora_a"], np.float64)
            bb = np.asarray(ab[block][attr]["lora_b"], np.float64)
            want = np.asarray(base["model"]["layers"][block][attr]["kernel"], np.float64) + \
                SCALE * np.einsum("lir,lro->lio", a, bb)
            # float32 kernels: the merge rounds once to float32 (2^-24 relative of the sum).
            np.testing.assert_allclose(got["model"]["layers"][block][attr]["kernel"], want,
                                       rtol=1e-6, atol=1e-7)
        # Everything else is the base, bit for bit; no adapter leaf is left in.
        flat = dict(jax.tree_util.tree_flatten_with_path(got)[0])
        for path, x in jax.tree_util.tree_flatten_with_path(base)[0]:
            if not any(f"['{attr}']['kernel']" in jax.tree_util.keystr(path) for _, attr in TARGETS.values()):
                np.testing.assert_array_equal(flat[path], x)
        assert len(flat) == len(jax.tree.leaves(base))
        # Through the HF writer: the safetensors hold the merged kernels.
        out = export_hf(got, fn.config, tmp_path / "hf")
        st = load_file(out / "model.safetensors")
        q = got["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
        hf_q = np.stack([st[f"model.layers.{i}.self_attn.q_proj.weight"].T for i in range(q.shape[0])])
        np.testing.assert_array_equal(hf_q, np.asarray(q))


def _plain_objective(name, fn, base, b, c):
    """The published objective of ``name`` as a function of the adapters, plainly through
    the merged weights (tests/defense/plain.py with the model ``a -> fn(merged(base, a))``)."""
    model = lambda a, ids, mask, **kw: fn(merged(base, a), ids, mask, **kw)
    if name == "booster":
        return lambda a: plain.booster(model, a, b, 5.0, 0.1)
    if name == "vaccine":
        from seam_jax.defense import vaccine

        shape = vaccine.delta_shape(fn, b["aln"])
        return lambda a: plain.vaccine(model, a, b, 2.0, shape)
    # TAR, the DPO reference the base model: the adapters with B = 0 (A B = 0).
    zero_b = lambda a: jax.tree_util.tree_map_with_path(
        lambda p, x: x * 0 if jax.tree_util.keystr(p).endswith("['lora_b']") else x, a)
    kw = dict(lrs=[3e-2], k_steps=1, wd=0.01, grad_scale=0.7, retain_scale=0.5, weights=[1.0],
              tr_loss="dpo", dpo_beta=0.1)
    return lambda a: plain.tar(model, a, b, **kw, ref=jax.lax.stop_gradient(zero_b(a)))


@pytest.mark.parametrize("name", ["booster", "vaccine", "tar"])
def test_the_adapter_gradient_is_the_published_objectives_through_the_merged_weights(name):
    with jax.enable_x64(True):
        fn, base, b = setup()
        c = config(name)
        obj = defense.objective(c, fn)
        step = build_step(obj, optax.sgd(1.0), optax.constant_schedule(1.0))
        adapters = random_adapters(step, base)
        batches = {k: b[k] for k in (*defense.get(name).batch_keys, SEED_KEY)}
        got, m = jax.jit(obj.gradient, compiler_options=FAST)(adapters, batches, base)
        want = jax.jit(jax.grad(_plain_objective(name, fn, base, b, c)),
                       compiler_options=FAST)(adapters)
        assert jax.tree.structure(got) == jax.tree.structure(adapters)
        assert plain.rel_err(got, want) <= TOL
        if name == "tar":  # the reference is the base model, not the adapted one
            theta = jax.jit(jax.grad(lambda a: plain.tar(
                lambda q, ids, mask, **kw: fn(merged(base, q), ids, mask, **kw), a, b,
                lrs=[3e-2], k_steps=1, wd=0.01, grad_scale=0.7, retain_scale=0.5, weights=[1.0],
                tr_loss="dpo", dpo_beta=0.1)), compiler_options=FAST)(adapters)
            assert plain.rel_err(got, theta) > 1e-6


def test_lora_dropout_reads_seed_rows_and_bad_settings_are_one_line():
    c = config("booster", dropout=0.1)
    assert defense.seeded(c) and not defense.seeded(config("booster"))
    src = defense.source(c, type("B", (), {"batch_at": lambda self, s, *a: tiny.seam_batches(s)})())
    assert SEED_KEY in src.batch_at(3)
    for field, value, words in [("trainable", "adapters", "full"), ("lora_rank", 0, "rank"),
                                ("lora_targets", "q,attn", "attn")]:
        bad = config("booster")
        bad.defense[field] = value
        with pytest.raises(ConfigError) as e:
            validate(bad)
        assert words in str(e.value) and "\n" not in str(e.value)
    seam = base_config()
    seam.defense.trainable = "lora"
    with pytest.raises(ConfigError, match="SEAM trains all the parameters"):
        validate(seam)

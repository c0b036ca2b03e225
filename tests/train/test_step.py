"""The step builder: a donated state, and chex checks at the step's boundary."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from seam_jax.train.step import Objective, build_step, sft_objective

SGD = optax.sgd(0.1)
SCHED = optax.constant_schedule(0.1)


def _params():
    return {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}


def _batch(t_mask: int = 6):
    ids = np.ones((2, 6), np.int32)
    return {"train": {"input_ids": ids, "attention_mask": np.ones((2, t_mask), np.int32),
                      "loss_mask": np.ones((2, 6), np.int32)}}


def _objective(grads=None, targets=None):
    def gradient(p, b):
        g = jax.tree.map(jnp.zeros_like, p) if grads is None else grads(p)
        t = jnp.asarray(1.0) if targets is None else targets
        return g, {"loss": jnp.asarray(0.5), "targets": t}

    return Objective(gradient, ("targets",))


def test_the_step_donates_its_state_and_keeps_shapes():
    step = build_step(_objective(), SGD, SCHED)
    state = step.init(_params(), 0)
    new, m = step(state, _batch())
    assert state["params"]["w"].is_deleted()  # donated: its buffers became new's
    assert new["params"]["w"].shape == (3, 4) and int(m["skipped"]) == 0


def test_a_gradient_of_the_wrong_shape_is_refused():
    step = build_step(_objective(grads=lambda p: {"w": jnp.zeros((4, 3)), "b": p["b"]}), SGD, SCHED)
    with pytest.raises(AssertionError):
        step(step.init(_params(), 0), _batch())


def test_a_batch_with_masks_of_another_shape_is_refused():
    step = build_step(_objective(), SGD, SCHED)
    with pytest.raises(AssertionError):
        step(step.init(_params(), 0), _batch(t_mask=5))


def test_target_counts_must_be_scalars():
    step = build_step(_objective(targets=jnp.ones((2,))), SGD, SCHED)
    with pytest.raises(AssertionError):
        step(step.init(_params(), 0), _batch())


def test_the_sft_objective_on_the_tiny_model():
    fn = tiny.model()
    step = build_step(sft_objective(fn), SGD, SCHED)
    _, m = step(step.init(fn.init(0), 0), {"train": tiny.batch(0)})
    assert np.isfinite(float(m["loss"])) and int(m["targets"]) > 0 and int(m["skipped"]) == 0

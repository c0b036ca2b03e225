"""A step's frozen tree (``train.step.Frozen``): read by the gradient, never trained, not in
the optimizer state or the checkpoint, and derived again from the model's parameters on
resume, so a resumed run equals an uninterrupted one bitwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pytest

from seam_jax.train.checkpoint import CheckpointConfig, CheckpointMismatch, Checkpointer
from seam_jax.train.loop import LoopConfig, run
from seam_jax.train.step import FROZEN, Frozen, Objective, build_step, checkpointed

OPT = optax.adam(0.1)
SCHED = optax.constant_schedule(0.1)


def _params():
    return {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones((4,))}


def _objective():
    """sum(x * p) + sum((p - frozen)^2): pulled back to the frozen copy once p has moved."""

    def gradient(p, batches, frozen):
        def loss(q):
            return sum(jnp.sum(batches["x"] * a + (a - f) ** 2)
                       for a, f in zip(jax.tree.leaves(q), jax.tree.leaves(frozen)))

        value, g = jax.value_and_grad(loss)(p)
        return g, {"loss": value, "targets": jnp.asarray(1.0)}

    return Objective(gradient, ("targets",), frozen=Frozen.copy())


class _Source:
    def batch_at(self, step):
        return {"x": np.asarray(np.sin(step + 1.0), np.float32)}


def test_the_frozen_tree_is_read_not_trained_and_not_in_the_optimizer_state():
    step = build_step(_objective(), OPT, SCHED)
    state = step.init(_params(), 0)
    assert set(state) == {"step", "params", "opt_state", "rng", FROZEN}
    n_opt = len(jax.tree.leaves(state["opt_state"]))
    for t in range(3):
        state, m = step(state, _Source().batch_at(t))
    assert len(jax.tree.leaves(state["opt_state"])) == n_opt  # the moments of params alone
    jax.tree.map(np.testing.assert_array_equal, state[FROZEN], _params())
    assert not np.array_equal(state["params"]["w"], _params()["w"])
    assert step.model_params(state) is state["params"]  # Frozen.copy: the trained ones


def test_resume_derives_the_frozen_tree_from_the_model_and_matches_bitwise(tmp_path):
    step = build_step(_objective(), OPT, SCHED)
    loop = LoopConfig(steps=8, run_dir=tmp_path / "ref", progress=False,
                      checkpoint=CheckpointConfig(every=2, keep=5, use_async=False))
    ref = run(_params(), step, _Source(), loop)

    killed = LoopConfig(steps=8, run_dir=tmp_path / "killed", progress=False, stop_after=3,
                        checkpoint=CheckpointConfig(every=2, keep=5, use_async=False))
    run(_params(), step, _Source(), killed)
    # The checkpoint holds the state less its frozen tree: the restore rule (exact or
    # refused) takes that tree and refuses the state with its frozen tree.
    full = step.abstract_state(_params())
    ck = Checkpointer(tmp_path / "killed" / "checkpoints", CheckpointConfig())
    try:
        assert ck.steps() == [2]
        assert ck.restore_latest(checkpointed(full))[0] == 2
        with pytest.raises(CheckpointMismatch, match=f"not in the checkpoint: {FROZEN}"):
            ck.restore_latest(full)
    finally:
        ck.close()
    killed.stop_after = None
    state = run(_params(), step, _Source(), killed)  # resumes at step 2
    assert int(state["step"]) == 8
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(state)):
        assert np.array_equal(a, b)
    # The frozen tree was the model's parameters again, not the restored trained ones
    # (which would give another trajectory): the equality above checks it.
    jax.tree.map(np.testing.assert_array_equal, state[FROZEN], _params())

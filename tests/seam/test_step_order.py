"""The SEAM step runs its gradient evaluations one after another (``sd_grad.in_order``).

The step's peak memory rests on it: XLA:CPU left free overlapped the lens, L_up's and g_b's
passes and the perturbed gradients, and hoisted whole gradient evaluations out of the loops
meant to order them (benchmarks/seam_step.py: the sequential step's peak went from 7.10 to
4.97 GB, its floor being 4.37 GB). These tests read the compiled program's schedule: the
loops of the phases, in order, at its top level, and nothing of a phase's work outside its
loop.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.objective import SeamHyper
from seam_jax.seam.sd_grad import by_sides, geometry, in_order, sd_gradient
from seam_jax.train.optim import OptimConfig, make_optimizer
from seam_jax.train.step import build_step, init_state, seam_objective

PHASES = ("L_up0", "g_b0", "sd_side0", "sd_side1")


def _entry_loops(hp: SeamHyper) -> list[str]:
    """op_name of each while loop at the compiled step's top level, in schedule order."""
    fn = tiny.model("float32")
    params = fn.init(0)
    opt, sched = make_optimizer(OptimConfig(lr=1e-3, warmup_ratio=0.0), 10)
    step = build_step(seam_objective(fn, hp), opt, sched)
    text = step.lower(init_state(params, opt, 0), tiny.seam_batches(0)).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    entry = entry[:entry.index("\n}\n")]
    return re.findall(r" while\(%[^)]*\).*?op_name=\"([^\"]+)\"", entry)


@pytest.mark.parametrize("estimator", ["hessian_free", "exact_hvp"])
def test_the_phases_run_in_order_and_nothing_is_hoisted_out_of_them(estimator):
    loops = _entry_loops(SeamHyper(beta=0.5, estimator=estimator, vmap=False))
    phase_of = lambda name: next((p for p in PHASES if f"/{p}/" in name), None)
    order = [p for p in (phase_of(n) for n in loops) if p]
    assert order == list(PHASES), loops
    # A forward or backward pass of a phase at the top level would be work hoisted out of its
    # loop (it was, before the loop bodies read the loop counter: ``sd_grad.anchored``).
    hoisted = [n for n in loops if phase_of(n) and "/body/" in n]
    assert not hoisted, hoisted
    # The lens is the first phase: every one of its loops comes before L_up's.
    lens = [i for i, n in enumerate(loops) if "/lens/" in n]
    assert lens and max(lens) < loops.index(next(n for n in loops if "/L_up0/" in n))


def test_a_step_that_is_not_finite_skips_the_evaluations_after_it():
    """``ok`` False runs no body: the carry comes back as it went in, and the finite
    differences come back NaN (the step is skipped on its loss, whatever its gradient)."""
    def body(c, item, zero):
        return c + 1.0

    out = jax.jit(lambda ok: in_order("t", body, jnp.zeros(()), [0, 1], ok))
    assert float(out(True)) == 2.0 and float(out(False)) == 0.0
    fn = tiny.model("float32")
    params = fn.init(0)
    b = tiny.seam_batches(0)
    g = jax.grad(lambda p, bt: masked_ce(fn, p, bt))
    ga, gb = g(params, b["adv"]), g(params, b["bgn"])
    bad = geometry(ga, gb)._replace(cos=jnp.asarray(jnp.nan, jnp.float32))
    est = sd_gradient("hessian_free", g, params, b["adv"], b["bgn"], ga, gb, bad, vmap=False)
    assert all(np.isnan(np.asarray(x)).all() for x in jax.tree.leaves(est))


def test_by_sides_refuses_an_unknown_estimator():
    with pytest.raises(ValueError, match="estimators"):
        by_sides(("autodiff",), None, None, None, None, None, None, None, 1e-3)

"""The jitted train step ``(state, batches) -> (state, metrics)`` for SEAM and for plain SFT.

The state is a plain pytree (``step``, ``params``, ``opt_state``, ``rng``), so Orbax
saves it as is. A step whose loss or gradient is not finite, or whose loss mask is
empty, leaves the state unchanged and says so in ``metrics["skipped"]``; the host
loop decides whether to stop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from seam_jax.model.api import Params
from seam_jax.tree import tree_norm

State = dict[str, Any]
GradientFn = Callable[[Params, dict], tuple[Params, dict[str, jax.Array]]]


def init_state(params: Params, optimizer: optax.GradientTransformation, seed: int) -> State:
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.key_data(jax.random.key(seed))}


def _count_of(opt_state: Any) -> jax.Array | None:
    """The inner optimizer's update count (for the learning rate metric)."""
    # NamedTuple states all have tuple.count (a method); the optax ones hold an array.
    has = lambda x: hasattr(x, "count") and not callable(x.count)
    for leaf in jax.tree.leaves(opt_state, is_leaf=has):
        if has(leaf):
            return leaf.count
    return None


def make_step(gradient_fn: GradientFn, optimizer: optax.GradientTransformation,
              schedule: optax.Schedule, *, target_keys: tuple[str, ...]) -> Callable[[State, dict], tuple[State, dict]]:
    """Wrap ``gradient_fn(params, batches) -> (grads, metrics)`` into a train step.

    ``target_keys``: metric names holding target-token counts; a zero count skips the step.
    """

    def step(state: State, batches: dict) -> tuple[State, dict]:
        grads, m = gradient_fn(state["params"], batches)
        count = _count_of(state["opt_state"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        gnorm = tree_norm(grads)
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(gnorm)
        nonempty = jnp.all(jnp.stack([m[k] > 0 for k in target_keys]))
        ok = finite & nonempty
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = {"step": state["step"] + 1, "params": keep(params, state["params"]),
                     "opt_state": keep(opt_state, state["opt_state"]), "rng": state["rng"]}
        m = dict(m)
        m.update(grad_norm=gnorm, param_norm=tree_norm(new_state["params"]),
                 lr=schedule(count) if count is not None else jnp.nan,
                 skipped=(~ok).astype(jnp.int32), nonfinite=(~finite).astype(jnp.int32),
                 empty_mask=(~nonempty).astype(jnp.int32))
        return new_state, m

    return step


# XLA:CPU's default scheduler runs the SEAM step's independent gradient evaluations in
# an order that keeps more of their buffers alive at once; the memory-optimised one
# lowers the SmolLM2 SEAM step's peak from 10.97 to 9.71 GB (vmapped perturbed
# gradients, batch 4 x 128, no rematerialisation) at the same step time
# (benchmarks/seam_step.py).
CPU_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def step_compiler_options() -> dict[str, Any]:
    """``jax.jit(..., compiler_options=...)`` for a train step on the current backend."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}

"""Vector algebra on parameter pytrees: the one place seam_jax defines it.

Two families:

- JAX (``tree_dot``, ``tree_norm``, ``tree_axpy``, ``tree_scale``, ``tree_sub``):
  traced, sharding-preserving, accumulating in at least float32 (``acc_dtype``).
  Used by the SEAM gradient, the train step and the Theorem 1 checks.
- host numpy in float64 (``to_numpy``, ``np_norm``, ``error_vector``, ``error_norm``):
  for comparing trees computed in different precisions (a float64 reference made
  under x64 against a float32 or bfloat16 estimate made without it). Doing that
  in JAX would cast the reference down to the estimate's precision, so the
  difference is taken on the host, one leaf at a time.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Tree = Any


def acc_dtype(x: jax.Array) -> Any:
    """The dtype sums and scalings of ``x`` run in: its own, at least float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


def safe_norm(n: jax.Array) -> jax.Array:
    """``n``, at least the smallest normal float: a zero gradient must not turn a division into NaN."""
    return jnp.maximum(n, jnp.finfo(n.dtype).tiny)


# ----------------------------------------------------------------- JAX
# tree_dot and tree_norm are jitted: inside a traced function that changes nothing (the
# call is inlined), and an eager call on arrays sharded over a mesh becomes one program
# instead of a product and a sum per leaf (7 programs for 3 leaves, one per model
# parameter otherwise), each sum with its own all-reduce, all dispatched at once. On XLA:CPU's fake devices
# those independent collective programs share one thread pool, and under load their
# per-device parts interleave until every thread waits at a rendezvous whose last
# participant cannot be scheduled: XLA aborts the process after 40 s ("Termination
# timeout ... Exiting to ensure a consistent program state"). Measured (2026-12-07,
# tests/parallel/test_seam_job.py beside three busy loops on 2 cores): the held-out
# geometry's eager cosine over an 8-device mesh aborted so 3 times of 3; jitted, the test
# passed 3 times of 3.
@jax.jit
def tree_dot(a: Tree, b: Tree) -> jax.Array:
    # An elementwise product and a full reduction keep each leaf's sharding: XLA
    # reduces locally and all-reduces one scalar. ``jnp.vdot`` would ravel the
    # leaves first, which gathers a full copy of a sharded parameter per device.
    leaves = jax.tree.leaves(jax.tree.map(
        lambda x, y: jnp.sum(x.astype(acc_dtype(x)) * y.astype(acc_dtype(y))), a, b))
    return sum(leaves[1:], leaves[0])


@jax.jit
def tree_norm(a: Tree) -> jax.Array:
    return jnp.sqrt(tree_dot(a, a))


def tree_axpy(alpha: jax.Array, x: Tree, y: Tree) -> Tree:
    """``alpha * x + y``, in y's dtype."""
    return jax.tree.map(
        lambda xi, yi: (alpha * xi.astype(acc_dtype(yi)) + yi.astype(acc_dtype(yi))).astype(yi.dtype),
        x, y)


def tree_scale(alpha: jax.Array, x: Tree) -> Tree:
    return jax.tree.map(lambda xi: (alpha * xi.astype(acc_dtype(xi))).astype(xi.dtype), x)


def tree_sub(a: Tree, b: Tree) -> Tree:
    return jax.tree.map(lambda x, y: x - y, a, b)


# ----------------------------------------------------------------- host numpy, float64
def to_numpy(tree: Tree) -> Tree:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def error_vector(estimate: Tree, exact: Tree) -> Tree:
    """``estimate - exact`` leaf by leaf, in float64 numpy (either may be any float dtype)."""
    return jax.tree.map(lambda e, x: np.asarray(e, np.float64) - np.asarray(x, np.float64),
                        estimate, exact)


def np_norm(tree: Tree) -> float:
    """``|tree|`` in float64 on the host."""
    return math.sqrt(sum(float(np.vdot(x, x)) for x in
                         (np.asarray(leaf, np.float64).ravel() for leaf in jax.tree.leaves(tree))))


def error_norm(estimate: Tree, exact: Tree) -> float:
    """``|estimate - exact|``, one leaf at a time (no parameter-sized float64 tree is kept)."""
    total = 0.0
    for e, x in zip(jax.tree.leaves(estimate), jax.tree.leaves(exact)):
        diff = np.asarray(e, np.float64).ravel() - np.asarray(x, np.float64).ravel()
        total += float(np.dot(diff, diff))
    return math.sqrt(total)


__all__ = ["acc_dtype", "safe_norm", "tree_dot", "tree_norm", "tree_axpy", "tree_scale", "tree_sub",
           "to_numpy", "error_vector", "np_norm", "error_norm"]

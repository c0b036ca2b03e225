"""``tree_dot`` and ``tree_norm`` called eagerly on a tree sharded over the 8 fake devices.

An eager call must run as one program. Per leaf, a product and a sum each dispatched on
its own are dozens of independent programs with an all-reduce each; on XLA:CPU they
share one thread pool, and under load their per-device parts interleave into a
rendezvous deadlock that XLA ends by aborting the process (seam_jax/tree.py says more).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from seam_jax.tree import tree_dot, tree_norm

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # one event per program lowered


def _sharded_tree():
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("fsdp", "tensor"))
    rng = np.random.default_rng(0)
    # Shapes no other test uses, so no program for them is in this process's caches yet.
    specs = {"w": (P("fsdp", "tensor"), (8 * 37, 2 * 29)), "b": (P("fsdp"), (4 * 31,)),
             "e": (P(None, "tensor"), (3, 2 * 23))}
    host = {k: rng.standard_normal(shape, dtype=np.float32) for k, (_, shape) in specs.items()}
    dev = {k: jax.device_put(host[k], NamedSharding(mesh, spec)) for k, (spec, _) in specs.items()}
    return host, dev


def test_an_eager_call_on_a_mesh_is_one_program_and_exact():
    assert jax.device_count() == 8
    host, dev = _sharded_tree()
    other = jax.tree.map(lambda x: x * 0.5 + 1.0, dev)
    lowered = []

    def listen(event, duration, **_):
        if event == LOWERING:
            lowered.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        dot = tree_dot(dev, other)
        dot.block_until_ready()
        n_dot = len(lowered)
        norm = tree_norm(dev)
        norm.block_until_ready()
        n_norm = len(lowered) - n_dot
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    # Unjitted, this tree lowers a product and a sum per leaf, then the adds: 7 programs.
    assert n_dot == 1, f"tree_dot lowered {n_dot} programs for one eager call"
    assert n_norm == 1, f"tree_norm lowered {n_norm} programs for one eager call"
    want_dot = sum(float(np.sum(h.astype(np.float64) * (h.astype(np.float64) * 0.5 + 1.0)))
                   for h in host.values())
    want_norm = np.sqrt(sum(float(np.sum(h.astype(np.float64) ** 2)) for h in host.values()))
    # float32 sums of ~17,000 terms (the largest leaf, reduced across devices): relative
    # round-off near sqrt(n) * 6e-8 = 8e-6 at worst for random signs; 1e-5 allows that, a
    # dropped shard (1/8 of the sum) is off by 10%.
    np.testing.assert_allclose(float(dot), want_dot, rtol=1e-5)
    np.testing.assert_allclose(float(norm), want_norm, rtol=1e-5)
    assert dot.dtype == jnp.float32 and dot.shape == ()

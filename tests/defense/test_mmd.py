"""RepNoise's MMD from Gram matrices (``defense.repnoise.mmd``): the value and gradient of the
pairwise form the public code writes, without its [n + m, n + m, d] differences.

The reference here forms every pairwise difference, as ``MMD_loss`` in
domenicrosati/representation-noising does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seam_jax.defense import repnoise

sg = jax.lax.stop_gradient


def pairwise_mmd(x, y):
    """Biased MMD^2, 5 Gaussian kernels of bandwidths b 2^(i - 2), b the mean off-diagonal
    squared distance of the pooled rows (held constant), from the pairwise differences."""
    total = jnp.concatenate([x, y], axis=0)
    n, rows = x.shape[0], total.shape[0]
    d2 = jnp.sum((total[None, :, :] - total[:, None, :]) ** 2, axis=-1)
    b = sg(jnp.sum(d2)) / (rows * rows - rows) / 4.0
    k = sum(jnp.exp(-d2 / (b * 2.0 ** i)) for i in range(5))
    return jnp.mean(k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n])


def samples(n: int, d: int, seed: int = 0):
    """Representation-like rows (offset and scaled, so |x|^2 is several times the distances
    and the Gram form's cancellation is exercised) against standard Gaussian rows, with the
    edge cases of masked data: row 0 of both all zeros (an example with no target token, as
    ``noise_loss`` masks it) and row 1 of y a copy of row 1 of x (a zero distance the Gram
    form must not turn into a negative one)."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = 3.0 + 2.0 * jax.random.normal(kx, (n, d), jnp.float64)
    y = jax.random.normal(ky, (n, d), jnp.float64)
    x, y = x.at[0].set(0.0), y.at[0].set(0.0)
    return x, y.at[1].set(x[1])


# Both sides compute one quantity in float64 by different programs: the Gram form's
# |a|^2 + |b|^2 - 2 a.b loses digits in proportion to |a|^2 / |a - b|^2 (about 10 here), so
# each distance carries ~1e-15 relative error, and the MMD (a difference of kernel sums, here
# 1.3 and 2.1) about as much: measured 2e-16 for the value, 5e-16 for the gradient. 1e-10
# leaves that room; a wrong kernel, bandwidth or a gradient through the bandwidth is off by
# O(1e-3) or more.
TOL = 1e-10


@pytest.mark.parametrize("n,d", [(4, 16), (8, 96)])
def test_gram_mmd_equals_the_pairwise_form_and_its_gradient(n, d):
    with jax.enable_x64(True):
        x, y = samples(n, d)
        got, want = repnoise.mmd(x, y), pairwise_mmd(x, y)
        assert got.dtype == jnp.float64 and float(want) > 1e-3
        np.testing.assert_allclose(got, want, rtol=TOL)
        g = jax.grad(repnoise.mmd, argnums=(0, 1))(x, y)
        w = jax.grad(pairwise_mmd, argnums=(0, 1))(x, y)
        for a, b in zip(g, w):
            assert np.all(np.isfinite(np.asarray(a)))
            err = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
            assert err <= TOL, err


def _largest_intermediate(f, *args) -> int:
    """Elements of the largest array any equation of ``f``'s jaxpr makes (sub-jaxprs too)."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                yield math.prod(getattr(v.aval, "shape", ()))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (list, tuple)) else (p,):
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        yield from walk(getattr(inner, "jaxpr", inner))

    return max(walk(jax.make_jaxpr(f)(*args).jaxpr))


def test_mmd_holds_no_pairwise_difference_buffer():
    # n = m = 16 rows of d = 2048 (float32): the pooled rows are 32 x 2048 (256 KiB), a
    # pairwise difference tensor 32 x 32 x 2048 (8 MiB). The Gram form's value and gradient
    # make nothing larger than the pooled rows, and XLA:CPU's compiled temporaries stay
    # under a quarter of one pairwise buffer (measured: ~0.75 MiB for the gradient, three
    # row-sized buffers); the pairwise form breaks both bounds (checked below, so the test
    # can fail: >= 8 MiB of temporaries, intermediates of 32 x 32 x 2048).
    n, d = 16, 2048
    rows = 2 * n
    pairwise_bytes = rows * rows * d * 4
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    zeros = (jnp.zeros((n, d), jnp.float32), jnp.ones((n, d), jnp.float32))

    def sizes(f):
        programs = (f, jax.value_and_grad(f, argnums=(0, 1)))
        temps = [jax.jit(p).lower(x, x).compile().memory_analysis().temp_size_in_bytes
                 for p in programs]
        return max(_largest_intermediate(p, *zeros) for p in programs), max(temps)

    largest, temp = sizes(repnoise.mmd)
    assert largest <= rows * d, largest
    assert temp <= pairwise_bytes // 4, temp
    largest, temp = sizes(pairwise_mmd)
    assert largest >= rows * rows * d and temp >= pairwise_bytes, (largest, temp)

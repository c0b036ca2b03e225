"""Vaccine's attention-output hook and RepNoise's MMD, on the tiny model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.defense import repnoise, vaccine


def _model_and_batch():
    fn = tiny.model()
    return fn, fn.init(0), tiny.seam_batches(0)["aln"]


def test_unused_hook_traces_the_same_program():
    fn, p, b = _model_and_batch()
    ids, mask = b["input_ids"], b["attention_mask"]
    plain = jax.make_jaxpr(lambda q: fn(q, ids, mask).logits)(p)
    none = jax.make_jaxpr(lambda q: fn(q, ids, mask, attn_delta=None).logits)(p)
    assert str(plain) == str(none)


def test_zero_rho_gives_bitwise_the_unhooked_logits():
    fn, p, b = _model_and_batch()
    hp = vaccine.VaccineHyper(rho=0.0)
    _, eps = jax.jit(lambda q: vaccine.vaccine_perturbation(fn, q, b, hp))(p)
    assert not np.any(np.asarray(eps))
    hooked = jax.jit(lambda q, e: fn(q, b["input_ids"], b["attention_mask"], attn_delta=e).logits)
    unhooked = jax.jit(lambda q: fn(q, b["input_ids"], b["attention_mask"]).logits)
    np.testing.assert_array_equal(np.asarray(hooked(p, eps)), np.asarray(unhooked(p)))


@pytest.mark.parametrize("scan", [True, False])
def test_perturbation_has_norm_rho_per_layer_or_over_all_layers(scan):
    fn = tiny.model(scan_layers=scan)
    p, b = fn.init(0), tiny.seam_batches(0)["aln"]
    rho = 0.7
    # float32 norms of ~2.5k entries: ~1e-7 relative rounding; the 1e-7 guard in the
    # denominator against |G| ~ 1e-1 here adds ~1e-6 relative. 1e-5 covers both.
    for norm in ("layer", "global"):
        hp = vaccine.VaccineHyper(rho=rho, norm=norm)
        _, eps = jax.jit(lambda q: vaccine.vaccine_perturbation(fn, q, b, hp))(p)
        eps = np.asarray(eps, np.float64)
        per_layer = np.sqrt((eps ** 2).sum(axis=(1, 2, 3)))
        assert eps.shape == (fn.config.num_hidden_layers, 2, 12, fn.config.hidden_size)
        if norm == "layer":
            np.testing.assert_allclose(per_layer, rho, rtol=1e-5)
        else:
            np.testing.assert_allclose(np.sqrt((per_layer ** 2).sum()), rho, rtol=1e-5)
            assert np.all(per_layer > 0) and np.all(per_layer < rho)


def test_hook_adds_to_the_attention_output_of_its_layer_and_position():
    # A perturbation at position t of the first layer's attention output changes the
    # logits at t and after (later positions attend to it through the second layer),
    # never before (causal attention); at the last layer it changes position t alone.
    fn, p, b = _model_and_batch()
    L, (B, T), D = fn.config.num_hidden_layers, b["input_ids"].shape, fn.config.hidden_size
    assert L == 2
    ids, mask = b["input_ids"], b["attention_mask"]
    base = np.asarray(fn(p, ids, mask).logits)
    t = 6
    moved = {}
    for layer in range(L):
        d = jnp.zeros((L, B, T, D)).at[layer, :, t].set(0.5)
        got = np.asarray(fn(p, ids, mask, attn_delta=d).logits)
        moved[layer] = np.abs(got[1] - base[1]).max(axis=-1)  # row 1: no padding
        np.testing.assert_array_equal(got[:, :t], base[:, :t])
    assert np.all(moved[0][t:] > 1e-4), moved[0]
    assert moved[1][t] > 1e-4 and not np.any(moved[1][t + 1:]), moved[1]


def test_mmd_is_near_zero_for_one_gaussian_and_grows_with_the_mean_distance():
    # The biased estimator of MMD^2 keeps the kernel's diagonal: for two samples of one
    # distribution its expectation is (2/n)(E k(x,x) - E k(x,y)) <= 2 * 5 / n (five kernels,
    # each 1 on the diagonal), 0.078 at n = 128; it can reach 2 * 5 = 10 for distributions
    # far apart. Means shifted by 0 .. 4 standard deviations along every axis.
    n, d = 128, 8
    key = jax.random.key(0)
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d))
    y0 = jax.random.normal(ky, (n, d))
    values = [float(repnoise.mmd(x, y0 + s)) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert 0.0 <= values[0] <= 10.0 / n, values
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 50 * values[0], values

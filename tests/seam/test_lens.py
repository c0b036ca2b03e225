"""The hand-written lens gradient equals plain autodiff of the lens loss.

float64: 1e-10 relative (same math, different summation order; round-off ~1e-14).
float32: 1e-5 relative (a few ulps through a 2-layer model and a 97-word softmax).
"""

import jax
import jax.numpy as jnp
import pytest

import tiny
from seam_jax.seam.lens import ul_and_attack_gradients
from seam_jax.seam.losses import unlearning_and_attack_losses
from seam_jax.tree import tree_norm, tree_sub


def _autodiff(fn, params, batch, layers):
    (l_ul, l_a), pull = jax.vjp(lambda p: unlearning_and_attack_losses(fn, p, batch, lens_layers=layers), params)
    one, zero = jnp.ones_like(l_ul), jnp.zeros_like(l_ul)
    return (l_ul, l_a), (pull((one, zero))[0], pull((zero, one))[0])


def _rel(a, b):
    return float(tree_norm(tree_sub(a, b)) / tree_norm(b))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("layers", [None, (0, 2), (1,)])
def test_fused_lens_matches_autodiff_float64(tied, layers):
    with jax.enable_x64(True):
        fn = tiny.model("float64", tie_word_embeddings=tied)
        params = fn.init(3)
        batch = tiny.seam_batches(3)["adv"]
        (lu, la), (gu, ga) = jax.jit(lambda p: ul_and_attack_gradients(fn, p, batch, lens_layers=layers))(params)
        (lu2, la2), (gu2, ga2) = jax.jit(lambda p: _autodiff(fn, p, batch, layers))(params)
        assert abs(float(lu - lu2)) < 1e-12 and abs(float(la - la2)) < 1e-12
        assert _rel(gu, gu2) < 1e-10
        assert _rel(ga, ga2) < 1e-10


def test_fused_lens_matches_autodiff_float32():
    fn = tiny.model("float32")
    params = fn.init(4)
    batch = tiny.seam_batches(4)["adv"]
    (_, _), (gu, ga) = jax.jit(lambda p: ul_and_attack_gradients(fn, p, batch))(params)
    (_, _), (gu2, ga2) = jax.jit(lambda p: _autodiff(fn, p, batch, None))(params)
    assert _rel(gu, gu2) < 1e-5 and _rel(ga, ga2) < 1e-5


# (One chunk holding every row is the default at these sizes, 22 rows under the default
# 128, so the tests above cover it.)
@pytest.mark.parametrize("row_chunk", [1, 3])
def test_masked_rows_skipped_in_chunks_float64(row_chunk):
    """Chunking and skipping the prompt rows changes nothing: the batch's loss mask
    leaves whole chunks without a target (checked), and the gradients still equal autodiff."""
    with jax.enable_x64(True):
        fn = tiny.model("float64")
        params = fn.init(5)
        batch = tiny.seam_batches(5)["adv"]
        rows = batch["loss_mask"][:, 1:].size
        targets = int(jnp.sum(batch["loss_mask"][:, 1:] != 0))
        if row_chunk < rows:  # at least one chunk is all prompt, so the skip path runs
            assert -(-rows // row_chunk) > -(-targets // row_chunk)
        (lu, la), (gu, ga) = jax.jit(lambda p: ul_and_attack_gradients(
            fn, p, batch, row_chunk=row_chunk))(params)
        (lu2, la2), (gu2, ga2) = jax.jit(lambda p: _autodiff(fn, p, batch, None))(params)
        assert abs(float(lu - lu2)) < 1e-12 and abs(float(la - la2)) < 1e-12
        assert _rel(gu, gu2) < 1e-10 and _rel(ga, ga2) < 1e-10


def test_row_chunk_must_be_positive():
    fn = tiny.model("float32")
    with pytest.raises(ValueError, match="row_chunk"):
        ul_and_attack_gradients(fn, fn.init(0), tiny.seam_batches(0)["adv"], row_chunk=0)

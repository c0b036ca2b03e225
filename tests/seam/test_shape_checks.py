"""The boundaries of masked_ce and seam_gradient check their batches' shapes (chex, at
trace time): a mismatched mask is an AssertionError naming the shapes, not a wrong loss."""

import jax
import pytest

import tiny
from seam_jax.seam.losses import check_batch, masked_ce
from seam_jax.seam.objective import SeamHyper, seam_gradient


def _short_mask(b):
    b = dict(b)
    b["loss_mask"] = b["loss_mask"][:, :-1]
    return b


def test_masked_ce_checks_its_batch():
    fn = tiny.model()
    params = fn.init(0)
    b = tiny.batch(0)
    check_batch(b)
    assert jax.jit(lambda p, x: masked_ce(fn, p, x))(params, b).shape == ()
    with pytest.raises(AssertionError, match=r"\(2, 12\).*\(2, 11\)"):
        jax.jit(lambda p, x: masked_ce(fn, p, x))(params, _short_mask(b))


@pytest.mark.parametrize("which", ["adv", "aln", "bgn"])
def test_seam_gradient_checks_every_batch(which):
    fn = tiny.model()
    params = fn.init(0)
    batches = tiny.seam_batches(0)
    batches[which] = _short_mask(batches[which])
    with pytest.raises(AssertionError, match="shape"):
        jax.eval_shape(lambda p, b: seam_gradient(fn, p, b, SeamHyper()), params, batches)

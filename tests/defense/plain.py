"""The published objectives written out plainly, for the gradient tests: each is a scalar
function of the parameters that ``jax.grad`` differentiates (float64 on the tiny model).

Only the model's forward pass (and, for Vaccine, its ``attn_delta`` hook) is shared with
the code under test; losses, kernels, norms and the adversary's AdamW are written here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

sg = jax.lax.stop_gradient


def tree_norm(t):
    return jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree.leaves(t)))


def rel_err(got, want) -> float:
    diff = jax.tree.map(lambda a, b: a - b, got, want)
    return float(tree_norm(diff) / tree_norm(want))


def nll_rows(logits, batch):
    """Per-token NLL [B, T-1] and the target mask (token t+1 predicted at t)."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, batch["input_ids"][:, 1:, None], axis=-1)[..., 0]
    return nll, batch["loss_mask"][:, 1:].astype(nll.dtype)


def ce_logits(logits, batch):
    nll, m = nll_rows(logits, batch)
    return jnp.sum(nll * m) / jnp.sum(m)


def ce(fn, p, batch, **kw):
    return ce_logits(fn(p, batch["input_ids"], batch["attention_mask"], **kw).logits, batch)


# ---------------------------------------------------------------- Booster
def booster(fn, p, batches, lam, alpha):
    """f(w) + lam [h(w) - h(w - alpha grad h / |grad h|)], the direction held constant
    (the published update, Algorithm 1), with the public code's 1e-7 in the norm."""
    adv, aln = batches["adv"], batches["aln"]
    g = jax.grad(lambda q: ce(fn, q, adv))(p)
    n = tree_norm(g)
    w2 = jax.tree.map(lambda x, gi: x - alpha * sg(gi / (n + 1e-7)), p, g)
    return ce(fn, p, aln) + lam * (ce(fn, p, adv) - ce(fn, w2, adv))


# ---------------------------------------------------------------- Vaccine
def vaccine(fn, p, batches, rho, shape):
    """The alignment loss at attention outputs moved by rho G / (|G| + 1e-7) (held constant),
    G the loss's gradient with respect to the attention outputs, |G| over all layers."""
    aln = batches["aln"]
    g = jax.grad(lambda d: ce(fn, p, aln, attn_delta=d))(jnp.zeros(shape))
    eps = sg(rho * g / (jnp.sqrt(jnp.sum(g * g)) + 1e-7))
    return ce(fn, p, aln, attn_delta=eps)


# ---------------------------------------------------------------- RepNoise
def mmd(x, y):
    """Biased MMD^2 with the sum of 5 Gaussian kernels of bandwidths b 2^(i-2), b the mean
    off-diagonal squared distance of the pooled rows (held constant), pair by pair."""
    rows = [x[i] for i in range(x.shape[0])] + [y[i] for i in range(y.shape[0])]
    n, N = x.shape[0], len(rows)
    d2 = [[jnp.sum((rows[i] - rows[j]) ** 2) for j in range(N)] for i in range(N)]
    b = sg(sum(sum(r) for r in d2)) / (N * N - N) / 4.0
    k = lambda i, j: sum(jnp.exp(-d2[i][j] / (b * 2.0 ** s)) for s in range(5))
    total = 0.0
    for i in range(n):
        for j in range(n):
            total = total + k(i, j) + k(n + i, n + j) - k(i, n + j) - k(n + i, j)
    return total / (n * n)


def repnoise(fn, p, batches, alpha, beta, noise):
    """CE(harmless) + beta mean_l MMD(masked h_l rows, masked noise rows) - alpha log(1 +
    (CE(final logits) + sum of lens CEs of h_0..h_{L-1}, norm(h_L)) / (L + 1))."""
    adv, aln = batches["adv"], batches["aln"]
    mod = fn.module(p)
    out = fn(p, adv["input_ids"], adv["attention_mask"], output_hidden_states=True)
    hs = out.hidden_states
    L = hs.shape[0] - 1
    hf_states = [hs[l] for l in range(L)] + [mod.model.norm(hs[L])]
    lens = [ce_logits(mod.lens(h), adv) for h in hf_states]
    harm = (ce_logits(out.logits, adv) + sum(lens)) / (L + 1)
    m = adv["loss_mask"][:, :, None].astype(hs.dtype)
    b = hs.shape[1]
    noise_term = sum(mmd((hs[l + 1] * m).reshape(b, -1), (noise[l] * m).reshape(b, -1))
                     for l in range(L)) / L
    return ce(fn, p, aln) + beta * noise_term - alpha * jnp.log(1.0 + harm)


# ---------------------------------------------------------------- TAR
def adamw_trajectory(grad, p, lr, k_steps, wd, b1=0.9, b2=0.999, eps=1e-8):
    """The adversary's iterates theta_1..theta_K under AdamW (decoupled weight decay)."""
    m = jax.tree.map(jnp.zeros_like, p)
    v = jax.tree.map(jnp.zeros_like, p)
    out, theta = [], p
    for t in range(1, k_steps + 1):
        g = grad(theta)
        m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        theta = jax.tree.map(
            lambda x, mi, vi: x - lr * ((mi / (1 - b1 ** t)) / (jnp.sqrt(vi / (1 - b2 ** t)) + eps)
                                        + wd * x), theta, m, v)
        out.append(theta)
    return out


def seq_logp(fn, p, batch):
    nll, m = nll_rows(fn(p, batch["input_ids"], batch["attention_mask"]).logits, batch)
    return -jnp.sum(nll * m, axis=-1)


def tar(fn, p, batches, *, lrs, k_steps, wd, grad_scale, retain_scale, weights, tr_loss,
        dpo_beta, ref=None):
    """First-order TAR: retain_scale CE(retain) + sum over adversaries and their steps k of
    s_k L_TR(theta + sg(theta_k - theta)): the adversary's displacement is held constant, so
    the gradient of each term is grad L_TR at theta_k. DPO's reference log probabilities are
    those of the parameters ``ref`` (the base model), or of theta when ``ref`` is None."""
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    r = p if ref is None else ref
    ref_c, ref_r = sg(seq_logp(fn, r, aln)), sg(seq_logp(fn, r, adv))

    def l_tr(q):
        if tr_loss == "dpo":
            margin = seq_logp(fn, q, aln) - seq_logp(fn, q, adv) - (ref_c - ref_r)
            return jnp.mean(jnp.log1p(jnp.exp(-dpo_beta * margin)))
        logits = fn(q, adv["input_ids"], adv["attention_mask"]).logits[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
        msk = adv["loss_mask"][:, 1:]
        return -jnp.sum(ent * msk) / jnp.sum(msk)

    total = retain_scale * ce(fn, p, bgn)
    theta0 = sg(p)
    for lr in lrs:
        traj = adamw_trajectory(jax.grad(lambda q: ce(fn, q, adv)), theta0, lr, k_steps, wd)
        for k, theta_k in enumerate(traj):
            shifted = jax.tree.map(lambda x, t: x + sg(t - x), p, theta_k)
            total = total + grad_scale * weights[k] / len(lrs) * l_tr(shifted)
    return total

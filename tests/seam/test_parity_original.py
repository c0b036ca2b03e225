"""SEAM in JAX against a PyTorch reference of the original ``training_step``'s math.

The reference below is written from the paper's equations and the authors' trainer: autograd on
transformers' LlamaForCausalLM, the logit lens over HF's ``hidden_states``, the
perturbed gradients taken on parameter copies as the original does, and the exact
gradient of the cosine by double backward. Tolerance 1e-4 relative for every quantity:
both sides compute in float32 (unit round-off 6e-8) in different summation orders, which
1e-4 leaves room for, while a wrong mask, lens term or sign moves a quantity far more. The float32 finite difference is compared at
eps = 1e-2, because at eps = 1e-3 rounding alone moves it by ~3e-4 relative
(reported by ``test_float32_noise_floor_at_paper_eps``, not asserted tighter).
"""

import numpy as np
import pytest
import torch

import hf_models
from seam_jax.hf.keymap import entries
from seam_jax.hf.load import load_hf
from seam_jax.model.api import ModelFn
from seam_jax.seam.losses import masked_ce, unlearning_and_attack_losses
from seam_jax.seam.objective import SeamHyper, seam_gradient
from seam_jax.seam.sd_grad import geometry, sd_gradient

import jax


# ------------------------------------------------------------------ torch reference
def t_ce(logits, ids, loss_mask):
    lg = logits[:, :-1].float()
    tgt = ids[:, 1:]
    m = loss_mask[:, 1:].float()
    ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1),
                                           reduction="none").reshape(tgt.shape)
    return (ce * m).sum() / m.sum().clamp(min=1)


def t_loss(model, b):
    return t_ce(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                b["input_ids"], b["loss_mask"])


def t_ul(model, b, variant):
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    lens = lambda h: model.lm_head(model.model.norm(h))
    hs = out.hidden_states  # h_0..h_{L-1}, then norm(h_L)
    if variant == "intent":
        ces = [t_ce(lens(h), b["input_ids"], b["loss_mask"]) for h in hs[:-1]]
        ces.append(t_ce(out.logits, b["input_ids"], b["loss_mask"]))
        return -torch.log1p(sum(ces) / len(ces))
    total = t_ce(out.logits, b["input_ids"], b["loss_mask"])
    for h in hs:
        total = total + t_ce(lens(h), b["input_ids"], b["loss_mask"])
    return -torch.log(total / len(hs) + 1)


def t_grad(model, loss_fn, create_graph=False):
    params = list(model.parameters())
    return torch.autograd.grad(loss_fn(), params, create_graph=create_graph)


def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def t_reference(model, batches, alpha, beta, eps, variant="intent"):
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    out = {}
    out["L_ul"] = t_ul(model, adv, variant).item()
    g_ul = flat(t_grad(model, lambda: t_ul(model, adv, variant)))
    out["L_up"] = t_loss(model, aln).item()
    g_up = flat(t_grad(model, lambda: t_loss(model, aln)))
    g_a = flat(t_grad(model, lambda: t_loss(model, adv)))
    g_b = flat(t_grad(model, lambda: t_loss(model, bgn)))
    na, nb = g_a.norm(), g_b.norm()
    c = (g_a @ g_b) / (na * nb)
    out.update(g_ul=g_ul, g_up=g_up, g_a=g_a, g_b=g_b, norm_a=na.item(), norm_b=nb.item(), c=c.item())
    d_a = g_b / nb - c * g_a / na
    d_b = g_a / na - c * g_b / nb

    def perturbed(d, e, b):
        # The original adds eps*d to the parameters in place, takes the gradient, restores.
        params = list(model.parameters())
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            off = 0
            for p in params:
                p.add_(e * d[off:off + p.numel()].view_as(p))
                off += p.numel()
        g = flat(t_grad(model, lambda: t_loss(model, b)))
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        return g

    def eq6(e):
        return ((perturbed(d_a, e, adv) - g_a) / (e * na) + (perturbed(d_b, e, bgn) - g_b) / (e * nb))

    out["hf_1e-2"] = eq6(1e-2)
    out["hf_eps"] = eq6(eps)
    # Exact gradient of the cosine by double backward.
    ga = t_grad(model, lambda: t_loss(model, adv), create_graph=True)
    gb = t_grad(model, lambda: t_loss(model, bgn), create_graph=True)
    fa, fb = flat(ga), flat(gb)
    cos = (fa @ fb) / (fa.norm() * fb.norm())
    out["exact"] = flat(torch.autograd.grad(cos, list(model.parameters())))
    out["update"] = g_ul + alpha * g_up + beta * out["hf_eps"]
    return out


# ------------------------------------------------------------------ helpers
def to_hf_flat(tree, cfg, model):
    """A seam_jax gradient tree as one vector in the order of model.parameters()."""
    from seam_jax.hf.keymap import get_path

    by_key = {}
    for e in entries(ModelFn(cfg).abstract_params, cfg.num_hidden_layers):
        by_key[e.hf_key] = e.to_hf(np.asarray(get_path(tree, e.path)))
    return torch.cat([torch.from_numpy(np.ascontiguousarray(by_key[n])).reshape(-1)
                      for n, _ in model.named_parameters()])


def rel(a, b):
    return float((a - b).norm() / b.norm())


def make_batches(vocab, seed=0):
    rng = np.random.default_rng(seed)
    b, t, prompt = 3, 24, 9

    def one(all_targets=False):
        ids = rng.integers(3, vocab, (b, t))
        attn = np.ones((b, t), np.int64)
        attn[1, t - 5:] = 0
        ids[attn == 0] = 0
        loss = attn.copy()
        if not all_targets:
            loss[:, :prompt] = 0
        return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}

    adv = one()
    aln = {k: v.copy() for k, v in adv.items()}
    aln["input_ids"][:, prompt:] = rng.integers(3, vocab, (b, t - prompt))
    aln["input_ids"][aln["attention_mask"] == 0] = 0
    return {"adv": adv, "aln": aln, "bgn": one(all_targets=True)}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    model = hf_models.build("llama_kv2", seed=3)
    cfg, params, _ = load_hf(hf_models.save(model, tmp_path_factory.mktemp("m") / "m"))
    batches = make_batches(cfg.vocab_size)
    tb = {k: {kk: torch.tensor(vv) for kk, vv in v.items()} for k, v in batches.items()}
    jb = {k: {kk: vv.astype(np.int32) for kk, vv in v.items()} for k, v in batches.items()}
    ref = t_reference(model, tb, alpha=1.0, beta=0.01, eps=1e-3)
    return model, cfg, params, jb, ref, tb


def test_losses_gradients_and_cosine_match(both):
    model, cfg, params, jb, ref, _ = both
    fn = ModelFn(cfg)
    (l_ul, _), pull = jax.vjp(lambda p: unlearning_and_attack_losses(fn, p, jb["adv"]), params)
    assert abs(float(l_ul) - ref["L_ul"]) <= 1e-4 * abs(ref["L_ul"])
    g_ul = pull((1.0, 0.0))[0]
    assert rel(to_hf_flat(g_ul, cfg, model), ref["g_ul"]) < 1e-4
    ce = lambda p, b: masked_ce(fn, p, b)
    l_up, g_up = jax.value_and_grad(ce)(params, jb["aln"])
    assert abs(float(l_up) - ref["L_up"]) <= 1e-4 * ref["L_up"]
    assert rel(to_hf_flat(g_up, cfg, model), ref["g_up"]) < 1e-4
    g_a, g_b = jax.grad(ce)(params, jb["adv"]), jax.grad(ce)(params, jb["bgn"])
    assert rel(to_hf_flat(g_a, cfg, model), ref["g_a"]) < 1e-4
    assert rel(to_hf_flat(g_b, cfg, model), ref["g_b"]) < 1e-4
    geo = geometry(g_a, g_b)
    assert abs(float(geo.norm_a) - ref["norm_a"]) <= 1e-4 * ref["norm_a"]
    assert abs(float(geo.norm_b) - ref["norm_b"]) <= 1e-4 * ref["norm_b"]
    assert abs(float(geo.cos) - ref["c"]) <= 1e-4 * abs(ref["c"])


def test_original_ul_variant_matches(both):
    model, cfg, params, jb, _, tb = both
    fn = ModelFn(cfg)
    want = t_ul(model, tb["adv"], "original").item()
    got = float(unlearning_and_attack_losses(fn, params, jb["adv"], variant="original")[0])
    assert abs(got - want) <= 1e-4 * abs(want)


def test_sd_gradient_estimators_match(both):
    model, cfg, params, jb, ref, _ = both
    fn = ModelFn(cfg)
    grad_ce = jax.grad(lambda p, b: masked_ce(fn, p, b))
    g_a, g_b = grad_ce(params, jb["adv"]), grad_ce(params, jb["bgn"])
    geo = geometry(g_a, g_b)
    exact = sd_gradient("exact_hvp", grad_ce, params, jb["adv"], jb["bgn"], g_a, g_b, geo)
    assert rel(to_hf_flat(exact, cfg, model), ref["exact"]) < 1e-4
    hf = sd_gradient("hessian_free", grad_ce, params, jb["adv"], jb["bgn"], g_a, g_b, geo, eps=1e-2)
    assert rel(to_hf_flat(hf, cfg, model), ref["hf_1e-2"]) < 1e-4


def test_full_update_at_original_defaults(both):
    model, cfg, params, jb, ref, _ = both
    fn = ModelFn(cfg)
    total, m = jax.jit(lambda p: seam_gradient(fn, p, jb, SeamHyper(alpha=1.0, beta=0.01, eps=1e-3)))(params)
    got = to_hf_flat(total, cfg, model)
    want = ref["update"]
    cos = float(got @ want / (got.norm() * want.norm()))
    assert cos >= 0.9999 and rel(got, want) <= 1e-4, (cos, rel(got, want))


def test_float32_noise_floor_at_paper_eps(both, capsys):
    """Reports (does not tighten) the eps = 1e-3 agreement of the two float32 Eq. 6's.

    Asserted at 1e-2 relative: measured ~3e-4 when written, and the bound u/eps with
    u = 6e-8 amplified by the model's depth puts it below 1e-2 by a wide margin.
    """
    model, cfg, params, jb, ref, _ = both
    fn = ModelFn(cfg)
    grad_ce = jax.grad(lambda p, b: masked_ce(fn, p, b))
    g_a, g_b = grad_ce(params, jb["adv"]), grad_ce(params, jb["bgn"])
    geo = geometry(g_a, g_b)
    hf = sd_gradient("hessian_free", grad_ce, params, jb["adv"], jb["bgn"], g_a, g_b, geo, eps=1e-3)
    r = rel(to_hf_flat(hf, cfg, model), ref["hf_eps"])
    print(f"hessian_free at eps=1e-3, float32, JAX vs PyTorch: {r:.2e} relative")
    assert r < 1e-2

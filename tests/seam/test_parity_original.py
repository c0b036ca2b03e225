"""SEAM in JAX against a PyTorch reference of the original ``training_step``'s math.

The reference (``benchmarks/torch_original.py``, which the benchmark runs too) is written
from the paper's equations and the authors' trainer: autograd on transformers'
LlamaForCausalLM, the logit lens over HF's ``hidden_states``, the perturbed gradients
taken on the parameters moved in place as the original does; here also the exact
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
from benchmarks import torch_original as reference
from seam_jax.hf.keymap import entries
from seam_jax.hf.load import load_hf
from seam_jax.model.api import ModelFn
from seam_jax.seam.losses import masked_ce, unlearning_and_attack_losses
from seam_jax.seam.objective import SeamHyper, seam_gradient
from seam_jax.seam.sd_grad import geometry, sd_gradient

import jax


# ------------------------------------------------------------------ torch reference
def flat(gs):
    return torch.cat([g.reshape(-1) for g in gs])


def t_reference(model, batches, alpha, beta, eps, variant="intent"):
    """The original step's quantities (``benchmarks.torch_original``), as flat vectors,
    plus Eq. 6 at eps = 1e-2 and the exact gradient of the cosine by double backward."""
    adv, bgn = batches["adv"], batches["bgn"]
    parts = {}
    update = reference.seam_update(model, batches, alpha=alpha, beta=beta, eps=eps,
                                   variant=variant, parts=parts)
    out = {k: flat(parts[k]) for k in ("g_ul", "g_up", "g_a", "g_b")}
    out.update(L_ul=parts["L_ul"].item(), L_up=parts["L_up"].item(), norm_a=parts["n_a"].item(),
               norm_b=parts["n_b"].item(), c=parts["c"].item(), hf_eps=flat(parts["g_sd"]),
               update=flat(update))
    out["hf_1e-2"] = flat(reference.hessian_free_sd(model, parts["g_a"], parts["g_b"], parts["n_a"],
                                                    parts["n_b"], parts["c"], 1e-2, adv, bgn))
    fa = flat(reference.grads(model, lambda: reference.sft_loss(model, adv), create_graph=True))
    fb = flat(reference.grads(model, lambda: reference.sft_loss(model, bgn), create_graph=True))
    cos = (fa @ fb) / (fa.norm() * fb.norm())
    out["exact"] = flat(torch.autograd.grad(cos, list(model.parameters())))
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


def _jit_sd(name, grad_ce, params, jb, g_a, g_b, geo, **kw):
    """``sd_gradient`` compiled: op by op it takes tens of seconds on 2 cores; the same
    float32 arithmetic up to XLA's reordering, round-off far under the 1e-4 compared."""
    return jax.jit(lambda p, a, b, g: sd_gradient(name, grad_ce, p, jb["adv"], jb["bgn"], a, b,
                                                  g, **kw))(params, g_a, g_b, geo)


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
    g_a, g_b = jax.jit(jax.grad(ce))(params, jb["adv"]), jax.jit(jax.grad(ce))(params, jb["bgn"])
    assert rel(to_hf_flat(g_a, cfg, model), ref["g_a"]) < 1e-4
    assert rel(to_hf_flat(g_b, cfg, model), ref["g_b"]) < 1e-4
    geo = geometry(g_a, g_b)
    assert abs(float(geo.norm_a) - ref["norm_a"]) <= 1e-4 * ref["norm_a"]
    assert abs(float(geo.norm_b) - ref["norm_b"]) <= 1e-4 * ref["norm_b"]
    assert abs(float(geo.cos) - ref["c"]) <= 1e-4 * abs(ref["c"])


def test_original_ul_variant_matches(both):
    model, cfg, params, jb, _, tb = both
    fn = ModelFn(cfg)
    want = reference.ul_loss(model, tb["adv"], "original").item()
    got = float(unlearning_and_attack_losses(fn, params, jb["adv"], variant="original")[0])
    assert abs(got - want) <= 1e-4 * abs(want)


def test_sd_gradient_estimators_match(both):
    model, cfg, params, jb, ref, _ = both
    fn = ModelFn(cfg)
    grad_ce = jax.grad(lambda p, b: masked_ce(fn, p, b))
    g_a, g_b = jax.jit(grad_ce)(params, jb["adv"]), jax.jit(grad_ce)(params, jb["bgn"])
    geo = geometry(g_a, g_b)
    exact = _jit_sd("exact_hvp", grad_ce, params, jb, g_a, g_b, geo)
    assert rel(to_hf_flat(exact, cfg, model), ref["exact"]) < 1e-4
    hf = _jit_sd("hessian_free", grad_ce, params, jb, g_a, g_b, geo, eps=1e-2)
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
    g_a, g_b = jax.jit(grad_ce)(params, jb["adv"]), jax.jit(grad_ce)(params, jb["bgn"])
    geo = geometry(g_a, g_b)
    hf = _jit_sd("hessian_free", grad_ce, params, jb, g_a, g_b, geo, eps=1e-3)
    r = rel(to_hf_flat(hf, cfg, model), ref["hf_eps"])
    print(f"hessian_free at eps=1e-3, float32, JAX vs PyTorch: {r:.2e} relative")
    assert r < 1e-2

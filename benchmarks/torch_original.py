"""A PyTorch reference of the original SEAM ``training_step``, on transformers' causal LMs.

Shared by the parity test (``tests/seam/test_parity_original.py``) and the benchmark
(``benchmarks/seam_step.py``), so both measure seam_jax against the same program.
It follows the original pass for pass:

1. L_ul on the harmful batch with ``output_hidden_states``: the logit lens
   ``lm_head(norm(h))`` over the hidden states plus the final logits
   (``ul_loss``, two variants, see there); its gradient.
2. L_up, the refusal CE; its gradient. The update starts as g_ul + alpha g_up.
3. g_a: the harmful batch's CE gradient at theta; g_b: the benign batch's.
4. |g_a|, |g_b| and their cosine c over all parameters.
5. The parameters moved in place by eps (g_b/|g_b| - c g_a/|g_a|) (a saved copy kept),
   the harmful CE gradient taken there, the parameters restored; the same for the
   benign side with the roles swapped.
6. update += beta/eps ((g_a' - g_a)/|g_a| + (g_b' - g_b)/|g_b|), the Hessian-free
   gradient of the cosine (Eq. 6 of the paper).

Gradients are lists of tensors in the order of ``model.parameters()``. PyTorch is
imported here only: this module is not part of the seam_jax package.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

Grads = list[torch.Tensor]


def masked_ce(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean next-token CE over the positions where ``loss_mask`` is 1 (0 when there are none)."""
    lg = logits[:, :-1].float()
    tgt = batch["input_ids"][:, 1:]
    m = batch["loss_mask"][:, 1:].float()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1),
                         reduction="none").reshape(tgt.shape)
    return (ce * m).sum() / m.sum().clamp(min=1)


def sft_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return masked_ce(out.logits, batch)


def ul_loss(model: torch.nn.Module, batch: dict, variant: str = "original") -> torch.Tensor:
    """L_ul through the logit lens. HF's ``hidden_states`` are h_0..h_{L-1} and norm(h_L).

    ``"original"``: the authors' code, the final logits' CE plus the lens CE of every
    hidden state (the last one normed twice), -log(sum / (L + 1) + 1).
    ``"intent"``: the paper's formula, the lens CE of h_0..h_{L-1} and the final
    logits' CE, -log(1 + mean).
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                output_hidden_states=True)
    head, norm = model.get_output_embeddings(), model.model.norm
    hs = out.hidden_states
    if variant == "intent":
        ces = [masked_ce(head(norm(h)), batch) for h in hs[:-1]] + [masked_ce(out.logits, batch)]
        return -torch.log1p(sum(ces) / len(ces))
    if variant != "original":
        raise ValueError(f"unknown L_ul variant {variant!r}; choose original or intent")
    total = masked_ce(out.logits, batch)
    for h in hs:
        total = total + masked_ce(head(norm(h)), batch)
    return -torch.log(total / len(hs) + 1)


def grads(model: torch.nn.Module, loss: Callable[[], torch.Tensor], create_graph: bool = False) -> Grads:
    return list(torch.autograd.grad(loss(), list(model.parameters()), create_graph=create_graph))


def norm(gs: Grads) -> torch.Tensor:
    return torch.sqrt(sum((g * g).sum() for g in gs))


def dot(xs: Grads, ys: Grads) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def perturbed_grads(model: torch.nn.Module, direction: Iterable[torch.Tensor], eps: float,
                    batch: dict) -> Grads:
    """The CE gradient of ``batch`` at theta + eps * direction, moved in place and restored.

    ``direction`` may be a generator (one parameter's worth at a time), so that no whole
    direction is held besides the saved copy of theta.
    """
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d, alpha=eps)
    g = grads(model, lambda: sft_loss(model, batch))
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    return g


def hessian_free_sd(model: torch.nn.Module, g_a: Grads, g_b: Grads, n_a: torch.Tensor,
                    n_b: torch.Tensor, c: torch.Tensor, eps: float, adv: dict, bgn: dict) -> Grads:
    """Eq. 6, the finite-difference gradient of cos(g_a, g_b) at step ``eps``:
    (g_a' - g_a) / (eps |g_a|) + (g_b' - g_b) / (eps |g_b|)."""
    g_ap = perturbed_grads(model, (b / n_b - c * a / n_a for a, b in zip(g_a, g_b)), eps, adv)
    g_bp = perturbed_grads(model, (a / n_a - c * b / n_b for a, b in zip(g_a, g_b)), eps, bgn)
    for ap, a, bp, b in zip(g_ap, g_a, g_bp, g_b):  # in place: no third gradient-sized list
        ap.sub_(a).div_(eps * n_a).add_((bp - b) / (eps * n_b))
    return g_ap


def seam_update(model: torch.nn.Module, batches: dict, *, alpha: float, beta: float, eps: float,
                variant: str = "original", parts: dict | None = None) -> Grads:
    """The original step's update direction (steps 1-6 of the module docstring).

    ``batches``: ``adv`` (harmful), ``aln`` (refusals of the harmful prompts) and ``bgn``
    (benign), each with ``input_ids``, ``attention_mask`` and ``loss_mask`` tensors.
    ``parts``, when given, receives the losses L_ul and L_up, the gradients g_ul, g_up,
    g_a, g_b, g_sd, the norms n_a, n_b and the cosine c; without it they are released as
    soon as the update has them, as in the original.
    """
    adv, aln, bgn = batches["adv"], batches["aln"], batches["bgn"]
    params = list(model.parameters())
    l_ul = ul_loss(model, adv, variant)
    g_ul = list(torch.autograd.grad(l_ul, params))
    l_up = sft_loss(model, aln)
    g_up = list(torch.autograd.grad(l_up, params))
    update = [u + alpha * p for u, p in zip(g_ul, g_up)]
    if parts is not None:
        parts.update(L_ul=l_ul.detach(), L_up=l_up.detach(), g_ul=g_ul, g_up=g_up)
    del g_ul, g_up
    g_a = grads(model, lambda: sft_loss(model, adv))
    g_b = grads(model, lambda: sft_loss(model, bgn))
    n_a, n_b = norm(g_a), norm(g_b)
    c = dot(g_a, g_b) / (n_a * n_b)
    g_sd = hessian_free_sd(model, g_a, g_b, n_a, n_b, c, eps, adv, bgn)
    if parts is not None:
        parts.update(g_a=g_a, g_b=g_b, n_a=n_a, n_b=n_b, c=c,
                     g_sd=g_sd)
    for u, s in zip(update, g_sd):
        u.add_(s, alpha=beta)
    return update


def seam_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: dict, *,
              alpha: float, beta: float, eps: float, variant: str = "original") -> None:
    """One original training step: the update direction as the gradient, then ``optimizer``."""
    update = seam_update(model, batches, alpha=alpha, beta=beta, eps=eps, variant=variant)
    for p, u in zip(model.parameters(), update):
        p.grad = u
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

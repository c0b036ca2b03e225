"""Matmul FLOPs of each benchmarked step, counted from the model's shapes.

XLA's ``cost_analysis`` counts a ``while`` loop's body once, so with scanned layers
it reports one layer of thirty. The counts here are analytic instead: every matrix
product of the forward pass at 2 FLOPs per multiply-add, the backward pass at twice
the forward (gradients with respect to inputs and to weights), elementwise work
ignored (it is under 2% at these shapes). ``benchmarks.seam_step`` cross-checks them
against XLA on the tiny config compiled with unrolled layers.

Notation, for one batch of ``b x t`` tokens:
- ``body``: the decoder stack (attention with full ``t x t`` scores, as XLA computes
  them, and the MLP);
- ``P``: one projection through the ``d x V`` LM head;
- ``F = body + P``: a forward pass; a gradient evaluation costs ``3F``.
"""

from __future__ import annotations

from typing import Any


def forward_parts(cfg: Any, b: int, t: int) -> dict[str, float]:
    """``{"body": ..., "head": ...}``: FLOPs of one forward pass on ``b x t`` tokens."""
    d, hd = cfg.hidden_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    proj = d * nq * hd + 2 * d * nkv * hd + nq * hd * d + 3 * d * cfg.intermediate_size
    attn = 2 * t * nq * hd  # q k^T and p v, per token
    body = 2 * b * t * cfg.num_hidden_layers * (proj + attn)
    head = 2 * b * t * d * cfg.vocab_size
    return {"body": float(body), "head": float(head)}


def step_flops(cfg: Any, b: int, t: int, kind: str, lens_layers: int | None = None,
               lens_rows: float | None = None, sd_remat: bool = False,
               sd_widened: bool = False) -> float:
    """FLOPs of one step of ``kind``, as each implementation computes it.

    ``lens_layers``: hidden states under the logit lens (default all ``L + 1``).
    ``lens_rows``: positions that seam_jax's lens projects (default all ``b t``);
    seam_jax skips chunks of positions outside the loss mask (``seam.lens``), so with
    the prompt masked out it projects fewer rows than the original.
    - ``sft``: one gradient evaluation, ``3F``.
    - ``seam_vmap`` / ``seam_seq`` (hessian_free): the harmful forward once
      (``body``) with two backward passes through the body (``L_ul`` and ``g_a``,
      ``4 body``); the lens at 3 projections per hidden state (logits, ``dx``, ``dW``),
      the last shared with ``g_a``; ``L_up`` and ``g_b`` (``3F`` each); two perturbed
      gradients (``6F``). This is also the floor of the SEAM update: every term is
      needed once.
    - ``seam_exact``: as above with two Hessian-vector products (forward-over-reverse:
      a gradient and its tangent, ``6F`` each) instead of the perturbed gradients.
    - ``seam_central``: as ``seam_vmap`` with four perturbed gradients (``theta +- eps d``
      for each side, ``12F``).
    - ``torch_original``: the original ``training_step``: ``L_ul`` as forward and
      backward of the body with the lens on every hidden state plus the final logits
      (``3 (L + 2) P``); a second forward/backward of the harmful batch for ``g_a``;
      ``L_up``, ``g_b`` and two perturbed gradients.
    - ``torch_sft``: ``3F``.

    ``sd_remat``: the L_sd estimator's gradient evaluations rematerialise the layers
    (``seam.sd_remat="full"``), so each recomputes the body's forward in its backward
    pass: ``+ body`` per perturbed gradient, ``+ 2 body`` per Hessian-vector product
    (the recomputation carries the tangent). This is work above the floor.

    ``sd_widened``: ``seam.sd_precision='float32'`` on a model computing narrower: the
    estimator computes its own g_a, g_b at theta in float32 (``+ 6F``, ``+ 2 body`` under
    ``sd_remat``), and XLA drops the backward passes of the step's own g_a (through the
    body, ``- 2 body``) and g_b (``- 2F``), which nothing then reads. Also above the floor.
    """
    parts = forward_parts(cfg, b, t)
    body, p = parts["body"], parts["head"]
    f = body + p
    n = cfg.num_hidden_layers + 1 if lens_layers is None else lens_layers
    lens_p = p * (b * t if lens_rows is None else lens_rows) / (b * t)
    shared = body + 4 * body + 3 * n * lens_p  # L_ul and g_a from one forward
    counts = {
        "sft": 3 * f,
        "torch_sft": 3 * f,
        "seam_vmap": shared + 6 * f + 6 * f,
        "seam_seq": shared + 6 * f + 6 * f,
        "seam_exact": shared + 6 * f + 12 * f,
        "seam_central": shared + 6 * f + 12 * f,
        "torch_original": 3 * body + 3 * (cfg.num_hidden_layers + 2) * p + 3 * f + 6 * f + 6 * f,
    }
    if kind not in counts:
        raise ValueError(f"no FLOP count for {kind!r}; known: {sorted(counts)}")
    recompute = {"seam_vmap": 2 * body, "seam_seq": 2 * body, "seam_exact": 4 * body,
                 "seam_central": 4 * body}
    extra = recompute.get(kind, 0.0) if sd_remat else 0.0
    if sd_widened and kind in recompute:
        extra += 6 * f - 2 * body - 2 * f + (2 * body if sd_remat else 0.0)
    return float(counts[kind] + extra)


def seam_floor(cfg: Any, b: int, t: int, targets: int) -> float:
    """The fewest FLOPs a hessian_free SEAM update needs (see ``step_flops``): the lens
    projects only the ``targets`` positions inside the loss mask."""
    return step_flops(cfg, b, t, "seam_vmap", lens_rows=targets)

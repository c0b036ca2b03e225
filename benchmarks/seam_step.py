"""The SEAM step against the original algorithm in PyTorch, and against a plain SFT step.

    python -m benchmarks.seam_step                     # tiny config and SmolLM2 at batch 4 x 128
    python -m benchmarks.seam_step --sizes smollm2 --repeats 5

Cases, each in its own process with the same thread count (default 2):
- ``sft``: one AdamW step of plain fine-tuning (seam_jax);
- ``seam_vmap`` / ``seam_seq`` / ``seam_exact``: one SEAM AdamW step with the
  hessian_free estimator (perturbed gradients vmapped, or sequential) and with
  exact_hvp (seam_jax);
- ``torch_original``: the original ``SeamTrainer.training_step`` algorithm on
  transformers' LlamaForCausalLM (sdpa attention) followed by ``torch.optim.AdamW``.
  It is ``benchmarks/torch_original.py``; see ``ORIGINAL_REFERENCE`` below.
- ``torch_sft``: one AdamW step of plain fine-tuning in PyTorch, for scale.

Reported: median of ``--repeats`` timed runs after a warm-up, peak resident memory of
the process (model, optimizer state and step), the step's FLOPs counted from the model's
shapes (``benchmarks/flops.py``), their ratio to the SEAM update's floor (the lens on the
loss-masked positions only), and the FLOP/s they give, and for JAX the FLOPs from
XLA's cost analysis and its temporaries. XLA counts a scanned layer stack's body once,
so the tiny config is compiled with unrolled layers, where XLA's count checks the
analytic one (``xla/analytic``); the SmolLM2 config keeps the scan (its XLA figure is
then one layer's worth, and is printed only for reference). ``rest_rss_mb`` is the
process's resident memory with the state built and before any step; with it the run
prints the memory floor of a hessian_free step (``FLOOR_BUFFERS``). The SEAM cases use
``seam.sd_remat`` from ``--sd-remat`` (default ``full``, the job's default), and their
FLOP counts include the forward passes it recomputes. A table is printed and JSON
written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from benchmarks.flops import seam_floor, step_flops
from benchmarks.harness import peak_rss_mb, print_table, rss_mb, run_case, timed

ORIGINAL_REFERENCE = """
The PyTorch reference is benchmarks/torch_original.py, the one the parity test checks
seam_jax against: the original training_step pass for pass (L_ul through the logit lens,
L_up, g_a, g_b, their cosine, the two perturbed gradients on parameters moved in place
and restored), then an AdamW step.
Fair to PyTorch: same thread count as JAX, sdpa attention, float32, no hooks or
synchronisation; the masked CE multiplies the per-token CE [B, T] by the mask (the
original multiplies the [B, T, V] logits), and gradient copies stay on the same device
(the original moves them to two extra GPUs).
"""

SIZES = {"tiny": dict(preset="debug", unrolled=True), "smollm2": dict(preset=None, unrolled=False)}


def _batches(vocab: int, b: int, t: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)

    def one(all_targets: bool = False) -> dict:
        ids = rng.integers(3, vocab, (b, t)).astype(np.int32)
        attn = np.ones((b, t), np.int32)
        loss = attn.copy()
        if not all_targets:
            loss[:, : t // 2] = 0  # prompt half, response half
        return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}

    adv = one()
    aln = {k: v.copy() for k, v in adv.items()}
    aln["input_ids"][:, t // 2:] = rng.integers(3, vocab, (b, t - t // 2))
    return {"adv": adv, "aln": aln, "bgn": one(True), "train": adv}


def _jax_model(a: dict):
    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import preset

    if a["preset"]:
        cfg = preset(a["preset"], scan_layers=not a["unrolled"])
        fn = ModelFn(cfg)
        return cfg, fn, fn.init(0)
    from seam_jax.hf.load import load_hf

    cfg, params, _ = load_hf(a["model_dir"], scan_layers=not a["unrolled"])
    return cfg, ModelFn(cfg), params


def _targets(batches: dict) -> int:
    """Loss-mask rows of the harmful batch (the positions the lens must project)."""
    return int(batches["adv"]["loss_mask"][:, 1:].sum())


def _against_floor(cfg, a: dict, targets: int, flops: float) -> dict:
    floor = seam_floor(cfg, a["batch"], a["seq"], targets)
    return {"floor_flops": floor, "flops_over_floor": flops / floor}


def case_jax(a: dict) -> dict:
    import jax

    from seam_jax.seam.lens import projected_rows
    from seam_jax.seam.objective import SeamHyper
    from seam_jax.train.optim import OptimConfig, make_optimizer
    from seam_jax.train.step import Objective, build_step, init_state, seam_objective, sft_objective

    cfg, fn, params = _jax_model(a)
    batches = _batches(cfg.vocab_size, a["batch"], a["seq"])
    opt, sched = make_optimizer(OptimConfig(lr=1e-5, warmup_ratio=0.0), 1000)
    kind = a["kind"]
    if kind == "sft":
        objective = sft_objective(fn)
    else:
        hp = SeamHyper(beta=0.01, eps=1e-3, estimator="exact_hvp" if kind == "seam_exact" else "hessian_free",
                       vmap=kind != "seam_seq", fused_lens=a.get("fused_lens", True),
                       sd_remat=a["sd_remat"])
        objective = Objective(seam_objective(fn, hp).gradient, ("targets_adv",))
    step = build_step(objective, opt, sched)  # the jobs' step: donated state, the same options
    state = init_state(params, opt, 0)
    del params
    jax.block_until_ready(state)
    rest = rss_mb()  # the runtime, theta and both Adam moments, before any step
    compiled = step.lower(state, batches).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    box = [state]

    def run() -> None:
        box[0], m = compiled(box[0], batches)
        jax.block_until_ready(m)

    r = timed(run, a["repeats"])
    targets = _targets(batches)
    lens_rows = projected_rows(targets, a["batch"] * (a["seq"] - 1))
    remat = cfg.remat if a["sd_remat"] == "model" else a["sd_remat"]
    recompute = kind != "sft" and remat in ("full", "nothing_saveable")  # dots_saveable: partly
    flops = step_flops(cfg, a["batch"], a["seq"], kind, lens_rows=lens_rows, sd_remat=recompute)
    if kind != "sft":
        r.update(_against_floor(cfg, a, targets, flops))
    xla = float(cost.get("flops", 0.0))
    r.update(case=kind, framework="seam_jax", peak_rss_mb=peak_rss_mb(), flops=flops,
             gflops_per_s=flops / r["median_s"] / 1e9, xla_flops=xla,
             xla_over_analytic=xla / flops if a["unrolled"] else None,
             xla_temp_mb=getattr(mem, "temp_size_in_bytes", 0) / 2**20, rest_rss_mb=rest,
             param_mb=4 * cfg.num_params() / 2**20)
    return r


def _torch_model(a: dict):
    import torch
    import transformers

    torch.set_num_threads(a["threads"])
    if a["preset"]:
        from seam_jax.model.config import preset

        cfg = preset(a["preset"]).to_hf()
        hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(hf_cfg)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(a["model_dir"], dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    return model.float().train()


def _t(batch: dict):
    import torch

    return {k: torch.from_numpy(v.astype("int64")) for k, v in batch.items()}


def case_torch(a: dict) -> dict:
    import torch

    from benchmarks import torch_original as reference

    model = _torch_model(a)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    b = {k: _t(v) for k, v in _batches(model.config.vocab_size, a["batch"], a["seq"]).items()}

    def seam_step():
        reference.seam_step(model, opt, b, alpha=1.0, beta=0.01, eps=1e-3, variant="original")

    def sft_step():
        opt.zero_grad(set_to_none=True)
        reference.sft_loss(model, b["train"]).backward()
        opt.step()

    kind = a["kind"]
    r = timed(seam_step if kind == "torch_original" else sft_step, a["repeats"])
    from seam_jax.model.config import ModelConfig

    mcfg = ModelConfig.from_hf(model.config.to_dict())
    flops = step_flops(mcfg, a["batch"], a["seq"], kind)
    r.update(case=kind, framework="PyTorch", peak_rss_mb=peak_rss_mb(), flops=flops,
             gflops_per_s=flops / r["median_s"] / 1e9)
    if kind == "torch_original":
        r.update(_against_floor(mcfg, a, _targets(_batches(mcfg.vocab_size, a["batch"], a["seq"])), flops))
    return r


# Live at once in any hessian_free step besides the resting state (theta, Adam's m and v):
# g_a and g_b (both enter each perturbation direction and each difference), the running
# total of the update, one perturbed copy of theta and the gradient computed at it.
FLOOR_BUFFERS = 5


def _memory_floor(by: dict) -> float | None:
    """Peak RSS no hessian_free step can go below: rest + FLOOR_BUFFERS parameter copies."""
    row = next((by[k] for k in ("seam_seq", "seam_vmap", "sft") if by.get(k, {}).get("rest_rss_mb")), None)
    return row["rest_rss_mb"] + FLOOR_BUFFERS * row["param_mb"] if row else None


CASES = {"jax": case_jax, "torch": case_torch}
KINDS = [("jax", "sft"), ("jax", "seam_vmap"), ("jax", "seam_seq"), ("jax", "seam_exact"),
         ("torch", "torch_original"), ("torch", "torch_sft")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case")
    p.add_argument("--args")
    p.add_argument("--sizes", default="tiny,smollm2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sd-remat", default="full",
                   help="seam.sd_remat for the SEAM cases (default: the job's default, full)")
    p.add_argument("--kinds", default=",".join(k for _, k in KINDS))
    p.add_argument("--out", default="benchmarks/results/seam_step.json")
    a = p.parse_args()
    if a.case:
        print(json.dumps(CASES[a.case](json.loads(a.args))))
        return
    from seam_jax.seam.objective import SD_REMAT  # here: the case processes stay free of it

    if a.sd_remat not in SD_REMAT:
        p.error(f"--sd-remat={a.sd_remat!r}; choose one of {', '.join(SD_REMAT)}")
    results = {}
    wanted = set(a.kinds.split(","))
    for size in a.sizes.split(","):
        args = dict(SIZES[size], batch=a.batch, seq=a.seq, repeats=a.repeats, threads=a.threads,
                    sd_remat=a.sd_remat)
        if size == "smollm2":
            from seam_jax.hf.default_model import resolve_default_model

            args["model_dir"] = str(resolve_default_model(allow_hub=False))
        rows = []
        for framework, kind in KINDS:
            if kind in wanted:
                rows.append(run_case("benchmarks.seam_step", framework, {**args, "kind": kind}, a.threads))
                print(f"  {size}/{kind}: {rows[-1]['median_s']:.3g} s", file=sys.stderr, flush=True)
        by = {r["case"]: r for r in rows}
        ratios = {}
        if "torch_original" in by:
            for k in ("seam_vmap", "seam_seq", "seam_exact"):
                if k in by:
                    ratios[f"time {k} / torch_original"] = by[k]["median_s"] / by["torch_original"]["median_s"]
                    ratios[f"memory {k} / torch_original"] = by[k]["peak_rss_mb"] / by["torch_original"]["peak_rss_mb"]
                    ratios[f"FLOPs {k} / torch_original"] = by[k]["flops"] / by["torch_original"]["flops"]
        floor = _memory_floor(by)
        if floor and "torch_original" in by:
            ratios["memory floor of hessian_free / torch_original"] = floor / by["torch_original"]["peak_rss_mb"]
        if "sft" in by:
            for k in ("seam_vmap", "seam_seq", "seam_exact"):
                if k in by:
                    ratios[f"FLOP/s {k} / sft"] = by[k]["gflops_per_s"] / by["sft"]["gflops_per_s"]
                    ratios[f"memory {k} / sft"] = by[k]["peak_rss_mb"] / by["sft"]["peak_rss_mb"]
        print(f"\n== {size}: batch {a.batch} x {a.seq}, float32, {a.threads} threads, "
              f"seam.sd_remat={a.sd_remat}")
        print_table(rows, ["case", "framework", "median_s", "min_s", "peak_rss_mb", "flops",
                           "flops_over_floor", "gflops_per_s", "xla_flops", "xla_over_analytic",
                           "xla_temp_mb", "rest_rss_mb"])
        if floor:
            print(f"  memory floor of a hessian_free step: {floor:.0f} MB (the resting process plus "
                  f"{FLOOR_BUFFERS} parameter-sized float32 buffers)")
        for k, v in ratios.items():
            print(f"  {k}: {v:.2f}")
        results[size] = {"rows": rows, "ratios": ratios, "args": args, "memory_floor_mb": floor}
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())

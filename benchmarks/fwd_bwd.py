"""Forward+backward of the default model: seam_jax against transformers' PyTorch model.

    python -m benchmarks.fwd_bwd                       # SmolLM2-135M, batch 4 x 128, float32
    python -m benchmarks.fwd_bwd --batch 4 --seq 64

One loss-and-gradient evaluation (mean token cross-entropy) per timed run; each
framework in its own process with the same thread count; PyTorch uses sdpa
attention. Prints a table and writes JSON next to the run (``--out``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from benchmarks.harness import peak_rss_mb, print_table, run_case, timed


def _model_dir() -> str:
    from seam_jax.hf.default_model import resolve_default_model

    return str(resolve_default_model(allow_hub=False))


def case_jax(a: dict) -> dict:
    import jax
    import numpy as np

    from seam_jax.hf.load import load_hf
    from seam_jax.model.api import ModelFn
    from seam_jax.seam.losses import masked_ce

    cfg, params, _ = load_hf(a["model_dir"])
    fn = ModelFn(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (a["batch"], a["seq"])).astype(np.int32)
    ones = np.ones_like(ids)
    batch = {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}
    step = jax.jit(jax.value_and_grad(lambda p, b: masked_ce(fn, p, b)))
    compiled = step.lower(params, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    r = timed(lambda: jax.block_until_ready(compiled(params, batch)), a["repeats"])
    r.update(framework="seam_jax", peak_rss_mb=peak_rss_mb(), flops=float(cost.get("flops", 0.0)),
             xla_temp_mb=getattr(mem, "temp_size_in_bytes", 0) / 2**20)
    return r


def case_torch(a: dict) -> dict:
    import torch
    import transformers

    torch.set_num_threads(a["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(
        a["model_dir"], attn_implementation="sdpa", dtype=torch.float32)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (a["batch"], a["seq"]), generator=g)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()

    r = timed(step, a["repeats"])
    r.update(framework="transformers (PyTorch)", peak_rss_mb=peak_rss_mb())
    return r


CASES = {"jax": case_jax, "torch": case_torch}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case")
    p.add_argument("--args")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/fwd_bwd.json")
    a = p.parse_args()
    if a.case:
        print(json.dumps(CASES[a.case](json.loads(a.args))))
        return
    args = dict(model_dir=_model_dir(), batch=a.batch, seq=a.seq, repeats=a.repeats, threads=a.threads)
    rows = [run_case("benchmarks.fwd_bwd", c, args, a.threads) for c in ("jax", "torch")]
    ratio = rows[0]["median_s"] / rows[1]["median_s"]
    print(f"SmolLM2-135M fwd+bwd, batch {a.batch} x {a.seq}, float32, {a.threads} threads")
    print_table(rows, ["framework", "median_s", "min_s", "peak_rss_mb", "flops", "xla_temp_mb"])
    print(f"time ratio seam_jax / PyTorch = {ratio:.2f}")
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratio": ratio, "args": args}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

"""One train step of each defense against one plain SFT step, as the jobs build them.

    python -m benchmarks.defense_step                        # SmolLM2-135M shape, batch 2 x 96
    python -m benchmarks.defense_step --size tiny --repeats 2  # the debug preset, seconds

Each case runs in its own process (``harness.run_case``, the same thread count, default 2):
the SEAM job's step (``jobs.seam.train_step``: the defense's objective, AdamW, donation)
for ``defense.name = <case>`` with the hyperparameters of ``--config`` (default
configs/experiment.py:compare, the comparison these costs belong to: config.py's defense
section, TAR with one adversary of K = 2 steps, SEAM hessian_free with beta 1); ``sft`` is
plain fine-tuning on one batch (``train.step.sft_objective``, what an attack step runs),
the unit of the table. ``control`` is SEAM at beta 0 (no L_sd gradients). Weights are
random in the model's shape (a step's cost does not depend on their values; nothing is
downloaded); each batch is random tokens with its first half masked as the prompt, the
benign batch all targets. Float32 on the CPU.

Reported per case: the median and the minimum of ``--repeats`` timed steps after one
warm-up step, the compile time, the process's peak resident memory, and the median over
the SFT step's median (``x_sft``). Ratios are read within one run only. A table is
printed and JSON written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from benchmarks.harness import peak_rss_mb, print_table, run_case, timed

SIZES = {"smollm2": "smollm2-135m", "tiny": "debug"}
CASES = ("sft", "none", "control", "seam", "booster", "vaccine", "repnoise", "tar")


def _batches(vocab: int, b: int, t: int, seeded: bool) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)

    def one(all_targets: bool = False) -> dict:
        ids = rng.integers(3, vocab, (b, t)).astype(np.int32)
        attn = np.ones((b, t), np.int32)
        loss = attn.copy()
        if not all_targets:
            loss[:, : t // 2] = 0
        return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}

    out = {"adv": one(), "aln": one(), "bgn": one(True)}
    if seeded:
        from seam_jax.train.step import SEED_KEY

        out[SEED_KEY] = np.arange(b, dtype=np.uint32)
    return out


def case(a: dict) -> dict:
    import jax

    from seam_jax import defense as defense_lib
    from seam_jax.jobs.seam import train_step
    from seam_jax.main import parse
    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import preset
    from seam_jax.train.optim import OptimConfig
    from seam_jax.train.step import SFT_KEY, build_step, optimizer_for, sft_objective

    c = parse(["seam_jax", f"--config={a['config']}"])
    cfg = preset(SIZES[a["size"]])
    fn = ModelFn(cfg)
    name = a["case"]
    if name == "sft":
        opt, sched = optimizer_for(OptimConfig(**c.optim.to_dict()), int(c.steps))
        step = build_step(sft_objective(fn), opt, sched)
        batches = {SFT_KEY: _batches(cfg.vocab_size, a["batch"], a["seq"], False)["adv"]}
    else:
        with c.unlocked():
            c.defense.name = "seam" if name == "control" else name
            if name == "control":
                c.seam.beta = 0.0
        step = train_step(c, fn)
        batches = _batches(cfg.vocab_size, a["batch"], a["seq"], defense_lib.seeded(c))
    state = step.init(fn.init(0), 0)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    compiled = step.lower(state, batches).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def run() -> None:
        box[0], m = compiled(box[0], batches)
        jax.block_until_ready(m)

    r = timed(run, a["repeats"])
    r.update(case=name, compile_s=compile_s, peak_rss_mb=peak_rss_mb())
    return r


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case")
    p.add_argument("--args")
    p.add_argument("--size", default="smollm2", choices=sorted(SIZES))
    p.add_argument("--config", default="configs/experiment.py:compare")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/defense_step.json")
    a = p.parse_args()
    if a.case:
        print(json.dumps(case(json.loads(a.args))))
        return
    cases = [x.strip() for x in a.cases.split(",") if x.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"--cases has {unknown}; choose from {','.join(CASES)}")
    if "sft" not in cases:
        cases.insert(0, "sft")  # the unit of the table
    args = dict(size=a.size, config=a.config, batch=a.batch, seq=a.seq, repeats=a.repeats)
    rows = []
    for name in cases:
        rows.append(run_case("benchmarks.defense_step", "case", {**args, "case": name}, a.threads))
        print(f"  {name}: {rows[-1]['median_s']:.3g} s", file=sys.stderr, flush=True)
    sft = next(r["median_s"] for r in rows if r["case"] == "sft")
    for r in rows:
        r["x_sft"] = r["median_s"] / sft
    print(f"\n== {a.size}: batch {a.batch} x {a.seq}, float32, {a.threads} threads, "
          f"hyperparameters of {a.config}, median of {a.repeats}")
    print_table(rows, ["case", "median_s", "min_s", "x_sft", "compile_s", "peak_rss_mb"])
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": args, "threads": a.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

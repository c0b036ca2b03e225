"""The SFT and SEAM steps on whatever accelerator JAX sees, against the original in PyTorch.

    python -m benchmarks.accelerator                    # GPU/TPU: SmolLM2-135M and a 1B Llama
    python -m benchmarks.accelerator --sizes tiny       # CPU: the 2-layer debug preset only

Random weights of the presets' shapes (``seam_jax.model.config.PRESETS``: ``smollm2-135m``,
``llama3.2-1b``), nothing read from a hub. Every case runs in its own process
(``benchmarks.harness.run_case``), so the peak device memory is that case's alone:

- ``sft``: one AdamW step of plain fine-tuning;
- ``seam_hessian_free`` (vmapped perturbed gradients), ``seam_exact_hvp``,
  ``seam_central``: one SEAM AdamW step with that L_sd estimator;
- ``torch_original``: the original ``training_step`` (``benchmarks/torch_original.py``)
  then ``torch.optim.AdamW`` (fused on CUDA), sdpa attention, on the same device;
- ``torch_sft``: plain fine-tuning in PyTorch, for scale;
- ``batch_search``: the largest batch (doubling from ``--batch``) at which the
  hessian_free SEAM step compiles and runs, under a time cap.

Precision: float32 master weights and optimizer state, bfloat16 compute (``--dtype``), the
default ``seam.sd_precision`` (``float32``: the L_sd estimator's gradients in float32) and
``seam.sd_remat`` (``full``); PyTorch runs the same master weights under
``torch.autocast(bfloat16)``. The steps are the jobs' own (``train.step.build_step``,
``seam_objective`` / ``sft_objective``).

Reported per case: median step time of ``--repeats`` runs after a warm-up (and the
compile time); tokens/s, counting the data tokens a step consumes (``b t`` for SFT, ``3 b
t`` for SEAM: the harmful, refusal and benign batches); MFU, the FLOPs the step's algorithm
must do (``benchmarks.flops.step_flops`` with the lens on the loss-masked rows only and no
recomputation; for hessian_free this is the SEAM update's floor) per second over the
chip's peak bfloat16 FLOP/s (``PEAK_BF16_TFLOPS``); HFU, the same with the FLOPs actually
done (rematerialised forwards and the float32 gradients at theta included); peak device
memory (``memory_stats()['peak_bytes_in_use']`` where the backend has it, else XLA's
memory analysis of the compiled step; PyTorch: ``torch.cuda.max_memory_allocated``, or
the process's peak RSS on CPU). FLOPs of the L_sd gradients done in float32 are counted
against the bfloat16 peak like the rest, so MFU/HFU understate the chip's use there.

Time: ``--budget-s`` (default 480) for the whole run. The cases run by priority (the SFT,
hessian_free and PyTorch original cases of every size first, then exact_hvp, the batch
searches, central, torch_sft); each gets at most its cap and what is left of the budget,
and one that would not fit is skipped with the reason printed. On an accelerator the XLA
compilation cache (``--cache-dir``) makes a rerun skip the compiles. Writes one JSON
(``--out``) and prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.harness import peak_rss_mb, run_case, timed

MODULE = "benchmarks.accelerator"

# Peak dense (no structured sparsity) bfloat16 FLOP/s per device, in TFLOP/s, matched
# against ``jax.Device.device_kind`` lower-cased, first match wins (so the specific names
# come before the general ones).
PEAK_BF16_TFLOPS: list[tuple[str, float, str]] = [
    # NVIDIA H200 datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with sparsity, half dense.
    ("h200", 989.0, "NVIDIA H200 datasheet, SXM, dense"),
    # NVIDIA H100 datasheet: H100 PCIe BF16 Tensor Core 1,513 TFLOPS with sparsity.
    ("h100 pcie", 756.0, "NVIDIA H100 datasheet, PCIe, dense"),
    # NVIDIA H100 datasheet: H100 SXM BF16 Tensor Core 1,979 TFLOPS with sparsity.
    ("h100", 989.0, "NVIDIA H100 datasheet, SXM, dense"),
    # NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOPS (624 with sparsity), SXM and PCIe.
    ("a100", 312.0, "NVIDIA A100 datasheet, dense"),
    # NVIDIA L40S datasheet: BF16 Tensor Core 733 TFLOPS with sparsity.
    ("l40s", 362.0, "NVIDIA L40S datasheet, dense"),
    # NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOPS with sparsity.
    ("l4", 121.0, "NVIDIA L4 datasheet, dense"),
    # Google Cloud TPU system architecture pages: peak bf16 compute per chip.
    ("tpu v6 lite", 918.0, "Google Cloud TPU v6e (Trillium) documentation"),
    ("tpu v6e", 918.0, "Google Cloud TPU v6e (Trillium) documentation"),
    ("tpu v5 lite", 197.0, "Google Cloud TPU v5e documentation"),
    ("tpu v5e", 197.0, "Google Cloud TPU v5e documentation"),
    ("tpu v5p", 459.0, "Google Cloud TPU v5p documentation"),
    ("tpu v5", 459.0, "Google Cloud TPU v5p documentation"),
    ("tpu v4", 275.0, "Google Cloud TPU v4 documentation"),
]


def peak_tflops(device_kind: str) -> tuple[float | None, str]:
    """(peak dense bfloat16 TFLOP/s, its source) for a device kind; (None, why) if unknown."""
    kind = device_kind.lower()
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key in kind:
            return tflops, source
    return None, f"no peak bf16 FLOP/s known for device kind {device_kind!r} (give --peak-tflops)"


# size -> (preset, default batch, default sequence length)
SIZES = {
    "tiny": ("debug", 2, 32),
    "smollm2": ("smollm2-135m", 8, 512),
    "llama-1b": ("llama3.2-1b", 8, 512),
}

JAX_KINDS = {  # case -> (benchmarks.flops kind, SeamHyper estimator or None for SFT)
    "sft": ("sft", None),
    "seam_hessian_free": ("seam_vmap", "hessian_free"),
    "seam_exact_hvp": ("seam_exact", "exact_hvp"),
    "seam_central": ("seam_central", "central"),
}
TORCH_KINDS = ("torch_original", "torch_sft")
# Execution order: (priority, case); within a priority, every size in --sizes order.
PLAN = [(0, "sft"), (0, "seam_hessian_free"), (0, "torch_original"), (1, "seam_exact_hvp"),
        (2, "batch_search"), (3, "seam_central"), (3, "torch_sft")]
CASES = [c for _, c in PLAN]


def data_tokens(case: str, b: int, t: int) -> int:
    """Tokens of data one step consumes: one batch for SFT, three for SEAM."""
    return b * t * (1 if case in ("sft", "torch_sft") else 3)


# ------------------------------------------------------------------ in the case processes
def _oom(e: BaseException) -> bool:
    text = str(e)
    return any(s in text for s in ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory",
                                   "OutOfMemory", "CUDA out of memory"))


def case_probe(a: dict) -> dict:
    """What this machine has: JAX's backend and device, and whether PyTorch has CUDA."""
    import jax

    dev = jax.devices()[0]
    stats = _memory_stats(dev)
    out = {"backend": jax.default_backend(), "device_kind": dev.device_kind,
           "device_count": jax.device_count(), "jax": jax.__version__,
           "bytes_limit": (stats or {}).get("bytes_limit")}
    try:
        import torch

        out.update(torch=torch.__version__, torch_cuda=bool(torch.cuda.is_available()))
    except ImportError as e:
        out.update(torch=None, torch_cuda=False, torch_error=str(e))
    return out


def _memory_stats(dev: Any) -> dict | None:
    try:
        return dev.memory_stats()
    except Exception:  # backends without allocator statistics
        return None


def _jax_setup(a: dict, batch: int):
    import jax

    from benchmarks.seam_step import _batches
    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import preset
    from seam_jax.seam.objective import SeamHyper
    from seam_jax.train.optim import OptimConfig, make_optimizer
    from seam_jax.train.step import Objective, build_step, init_state, seam_objective, sft_objective

    cfg = preset(a["preset"], dtype=a["dtype"], param_dtype="float32", scan_layers=True)
    fn = ModelFn(cfg)
    opt, sched = make_optimizer(OptimConfig(lr=1e-5, warmup_ratio=0.0), 1000)
    estimator = JAX_KINDS[a["kind"]][1]
    if estimator is None:
        objective = sft_objective(fn)
    else:  # the job's defaults otherwise: sd_precision float32, sd_remat full, intent L_ul
        hp = SeamHyper(beta=0.01, eps=1e-3, estimator=estimator, vmap=True)
        objective = Objective(seam_objective(fn, hp).gradient, ("targets_adv",))
    # compiler_options: cheaper XLA:CPU code generation for the tests.
    step = build_step(objective, opt, sched, compiler_options=a.get("compiler_options"))
    host = _batches(cfg.vocab_size, batch, a["seq"])
    batches = jax.device_put(host)
    state = init_state(fn.init(0), opt, 0)
    jax.block_until_ready(state)
    return cfg, step, state, batches, host


def _analysis_bytes(compiled: Any) -> float | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    return float(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                 - mem.alias_size_in_bytes + getattr(mem, "generated_code_size_in_bytes", 0))


def _flops(cfg: Any, a: dict, batch: int, host: dict) -> tuple[float, float]:
    """(FLOPs the step's algorithm must do, FLOPs it does) for a JAX case."""
    from benchmarks.flops import step_flops
    from benchmarks.seam_step import _targets
    from seam_jax.seam.lens import projected_rows
    from seam_jax.seam.sd_grad import widens

    kind = JAX_KINDS[a["kind"]][0]
    t = a["seq"]
    if kind == "sft":
        f = step_flops(cfg, batch, t, "sft")
        return f, f
    targets = _targets(host)
    must = step_flops(cfg, batch, t, kind, lens_rows=targets)
    done = step_flops(cfg, batch, t, kind, lens_rows=projected_rows(targets, batch * (t - 1)),
                      sd_remat=True, sd_widened=widens("float32", cfg.dtype))
    return must, done


def case_jax(a: dict) -> dict:
    import jax
    import numpy as np

    cfg, step, state, batches, host = _jax_setup(a, a["batch"])
    t0 = time.perf_counter()
    compiled = step.lower(state, batches).compile()
    compile_s = time.perf_counter() - t0
    box, metrics = [state], {}
    del state

    def run() -> None:
        box[0], m = compiled(box[0], batches)
        metrics.update(jax.device_get(m))

    r = timed(run, a["repeats"])
    must, done = _flops(cfg, a, a["batch"], host)
    dev = jax.devices()[0]
    stats = _memory_stats(dev)
    if stats and "peak_bytes_in_use" in stats:
        peak, source = float(stats["peak_bytes_in_use"]), "memory_stats"
    else:
        peak, source = _analysis_bytes(compiled), "memory_analysis"
    r.update(case=a["kind"], framework="seam_jax", compile_s=compile_s, flops_must=must,
             flops_done=done, peak_bytes=peak, peak_source=source,
             loss=float(metrics["loss"]), skipped=int(metrics["skipped"]),
             analysis_bytes=_analysis_bytes(compiled), params=cfg.num_params())
    if not np.isfinite(r["loss"]) or r["skipped"]:
        raise RuntimeError(f"{a['kind']}: the step did not train (loss {r['loss']}, "
                           f"skipped {r['skipped']})")
    return r


def case_batch_search(a: dict) -> dict:
    """The largest batch at which ``a['kind']`` compiles and runs one step, doubling from
    twice ``a['batch']`` (which the case itself ran), stopping at the first that does not
    fit, at ``max_batch``, or when the next try would pass ``cap_s``."""
    import gc

    import jax

    t_start = time.perf_counter()
    dev = jax.devices()[0]
    stats = _memory_stats(dev) or {}
    limit = stats.get("bytes_limit")
    if limit is None:
        import psutil

        limit = psutil.virtual_memory().available
    tried, best, last_s, b = [], a["batch"], 0.0, 2 * a["batch"]
    stop = f"reached --max-batch={a['max_batch']}"
    while b <= a["max_batch"]:
        elapsed = time.perf_counter() - t_start
        if tried and elapsed + 2.5 * last_s > a["cap_s"]:  # the next try costs about 2x the last
            stop = f"time cap {a['cap_s']:.0f} s (the next try would pass it)"
            break
        t0 = time.perf_counter()
        row: dict[str, Any] = {"batch": b}
        try:
            _, step, state, batches, _ = _jax_setup(a, b)
            compiled = step.lower(state, batches).compile()
            need = _analysis_bytes(compiled)
            row["analysis_bytes"] = need
            if need is not None and need > limit:
                row.update(fits=False, why=f"needs {need / 2**30:.1f} GiB of {limit / 2**30:.1f}")
            else:
                state, m = compiled(state, batches)
                jax.block_until_ready(m)
                row["fits"] = True
        except Exception as e:  # noqa: BLE001 - an allocation failure is the answer sought
            if not _oom(e):
                raise
            row.update(fits=False, why=str(e).splitlines()[0][:200])
        state = batches = compiled = None
        gc.collect()
        last_s = time.perf_counter() - t0
        row["seconds"] = last_s
        tried.append(row)
        if not row["fits"]:
            stop = f"batch {b} does not fit"
            break
        best = b
        b *= 2
    return {"case": "batch_search", "kind": a["kind"], "largest_batch": best, "tried": tried,
            "stopped": stop, "bytes_limit": float(limit), "seconds": time.perf_counter() - t_start}


def _torch_model(a: dict, device: str):
    import torch
    import transformers

    from seam_jax.model.config import preset

    cfg = preset(a["preset"]).to_hf()
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in cfg.items()
                                         if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(hf_cfg)
    model.config._attn_implementation = "sdpa"
    return model.float().train()


def case_torch(a: dict) -> dict:
    import torch

    from benchmarks import torch_original as reference
    from benchmarks.flops import step_flops
    from benchmarks.seam_step import _batches
    from seam_jax.model.config import preset

    cuda = torch.cuda.is_available() and a["device"] == "cuda"
    device = "cuda" if cuda else "cpu"
    if not cuda:
        torch.set_num_threads(a["threads"])
    model = _torch_model(a, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=cuda)
    host = _batches(model.config.vocab_size, a["batch"], a["seq"])
    b = {k: {n: torch.from_numpy(v.astype("int64")).to(device) for n, v in batch.items()}
         for k, batch in host.items()}
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16,
                              enabled=a["dtype"] == "bfloat16")

    def seam_step() -> None:
        with autocast:
            reference.seam_step(model, opt, b, alpha=1.0, beta=0.01, eps=1e-3, variant="original")

    def sft_step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = reference.sft_loss(model, b["train"])
        loss.backward()
        opt.step()

    body = seam_step if a["kind"] == "torch_original" else sft_step

    def run() -> None:
        body()
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    run()  # the first step (lazy optimizer state, kernel selection), reported like a compile
    first_s = time.perf_counter() - t0
    r = timed(run, a["repeats"], warmup=0)
    cfg = preset(a["preset"])
    must = step_flops(cfg, a["batch"], a["seq"], a["kind"])  # its lens projects every row
    loss_ok = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not loss_ok:
        raise RuntimeError(f"{a['kind']}: parameters not finite after the step")
    if cuda:
        peak, source = float(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    else:
        peak, source = peak_rss_mb() * 2**20, "ru_maxrss (process)"
    r.update(case=a["kind"], framework="PyTorch" + (" (CUDA)" if cuda else " (CPU)"),
             compile_s=first_s, flops_must=must, flops_done=must, peak_bytes=peak,
             peak_source=source, params=cfg.num_params())
    return r


CASE_FNS = {"probe": case_probe, "jax": case_jax, "torch": case_torch,
            "batch_search": case_batch_search}


# ------------------------------------------------------------------ the driver
def _derive(row: dict, b: int, t: int, peak: float | None) -> dict:
    s = row["median_s"]
    row["tokens_per_s"] = data_tokens(row["case"], b, t) / s
    row["tflops_must_per_s"] = row["flops_must"] / s / 1e12
    row["mfu"] = row["flops_must"] / s / (peak * 1e12) if peak else None
    row["hfu"] = row["flops_done"] / s / (peak * 1e12) if peak else None
    row["peak_gib"] = row["peak_bytes"] / 2**30 if row.get("peak_bytes") else None
    return row


def _markdown(rows: list[dict], searches: dict[str, dict]) -> str:
    head = ["size", "case", "framework", "batch x seq", "step (s)", "tokens/s", "MFU", "HFU",
            "peak memory (GiB)", "compile (s)", "largest batch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.1f}%"

    for r in rows:
        largest = ""
        found = searches.get(r["size"])
        if found and r["case"] == "seam_hessian_free" and found.get("largest_batch"):
            largest = f"{found['largest_batch']} ({found['stopped']})"
        lines.append("| " + " | ".join([
            r["size"], r["case"], r["framework"], f"{r['batch']} x {r['seq']}",
            f"{r['median_s']:.4g}", f"{r['tokens_per_s']:.4g}", pct(r["mfu"]), pct(r["hfu"]),
            "" if r["peak_gib"] is None else f"{r['peak_gib']:.3g} ({r['peak_source']})",
            f"{r['compile_s']:.3g}", largest]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case")
    p.add_argument("--args")
    p.add_argument("--sizes", default="", help=f"of {', '.join(SIZES)}; default: smollm2,llama-1b "
                   "on an accelerator, tiny on CPU")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--batch", type=int, default=0, help="default: per size (SIZES)")
    p.add_argument("--seq", type=int, default=0, help="default: per size (SIZES)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (float32 master weights)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time")
    p.add_argument("--case-cap-s", type=float, default=200.0, help="the most one case may take")
    p.add_argument("--search-cap-s", type=float, default=60.0, help="each batch search's cap")
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the peak table")
    p.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "seam_jax_bench_xla"),
                   help="XLA compilation cache on an accelerator ('' for none)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="benchmarks/results/accelerator.json")
    a = p.parse_args(argv)
    if a.case:
        print(json.dumps(CASE_FNS[a.case](json.loads(a.args))))
        return 0
    t_start = time.monotonic()
    deadline = t_start + a.budget_s
    wanted = [c for c in a.cases.split(",") if c]
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        p.error(f"--cases has {unknown}; choose from {', '.join(CASES)}")
    # The case processes may use most of the device (JAX preallocates 75% by default), one
    # at a time; the driver itself never initialises a backend.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    probe = run_case(MODULE, "probe", {}, a.threads, timeout=max(30.0, a.budget_s / 4))
    on_accel = probe["backend"] != "cpu"
    if on_accel and a.cache_dir:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", a.cache_dir)
    sizes = [s for s in (a.sizes or ("smollm2,llama-1b" if on_accel else "tiny")).split(",") if s]
    bad = sorted(set(sizes) - set(SIZES))
    if bad:
        p.error(f"--sizes has {bad}; choose from {', '.join(SIZES)}")
    if a.peak_tflops:
        peak, peak_source = a.peak_tflops, "--peak-tflops"
    else:
        peak, peak_source = peak_tflops(probe["device_kind"])
    torch_skip = None
    if probe.get("torch") is None:
        torch_skip = f"PyTorch is not importable ({probe.get('torch_error')})"
    elif on_accel and not probe.get("torch_cuda"):
        torch_skip = "PyTorch has no CUDA on this machine (torch.cuda.is_available() is False)"
    print(f"accelerator benchmark: {probe['backend']} ({probe['device_kind']} x "
          f"{probe['device_count']}), peak bf16 {peak} TFLOP/s ({peak_source}); sizes {sizes}; "
          f"budget {a.budget_s:.0f} s", file=sys.stderr, flush=True)

    rows: list[dict] = []
    skipped: list[dict] = []
    searches: dict[str, dict] = {}

    def skip(size: str, case: str, reason: str) -> None:
        skipped.append({"size": size, "case": case, "reason": reason})
        print(f"  {size}/{case}: skipped: {reason}", file=sys.stderr, flush=True)

    for _, case in sorted(PLAN, key=lambda pc: pc[0]):
        if case not in wanted:
            continue
        for size in sizes:
            name, b0, t0 = SIZES[size]
            args = dict(preset=name, batch=a.batch or b0, seq=a.seq or t0, dtype=a.dtype,
                        repeats=a.repeats, threads=a.threads, kind=case,
                        device="cuda" if on_accel else "cpu")
            if case in TORCH_KINDS and torch_skip:
                skip(size, case, torch_skip)
                continue
            if case == "batch_search":
                cap = min(a.search_cap_s, deadline - time.monotonic() - 15)
                args.update(kind="seam_hessian_free", cap_s=cap, max_batch=a.max_batch)
                if not any(r["size"] == size and r["case"] == "seam_hessian_free" for r in rows):
                    skip(size, case, "the hessian_free case at the base batch did not run")
                    continue
            else:
                cap = min(a.case_cap_s, deadline - time.monotonic())
            if cap < 20:
                skip(size, case, f"over the budget ({a.budget_s:.0f} s; {max(cap, 0):.0f} s left)")
                continue
            kind = ("torch" if case in TORCH_KINDS else
                    "batch_search" if case == "batch_search" else "jax")
            t_case = time.monotonic()
            try:
                # A batch search stops itself at its cap; the kill is for a hung one.
                r = run_case(MODULE, kind, args, a.threads,
                             timeout=cap * 1.5 + 30 if kind == "batch_search" else cap)
            except subprocess.TimeoutExpired:
                skip(size, case, f"over its {cap:.0f} s cap (killed)")
                continue
            except RuntimeError as e:
                text = str(e)
                why = "out of device memory" if _oom(e) else text.strip().splitlines()[-1][:300]
                skip(size, case, f"failed: {why}")
                continue
            wall = time.monotonic() - t_case
            if kind == "batch_search":
                searches[size] = r
                print(f"  {size}/batch_search: largest batch {r['largest_batch']} "
                      f"({r['stopped']}; {wall:.0f} s)", file=sys.stderr, flush=True)
                continue
            r.update(size=size, preset=name, batch=args["batch"], seq=args["seq"],
                     dtype=a.dtype, wall_s=wall)
            rows.append(_derive(r, args["batch"], args["seq"], peak))
            print(f"  {size}/{case}: {r['median_s']:.4g} s/step, {r['tokens_per_s']:.4g} tok/s "
                  f"({wall:.0f} s)", file=sys.stderr, flush=True)

    ratios = {}
    for size in sizes:
        by = {r["case"]: r for r in rows if r["size"] == size}
        for k in JAX_KINDS:
            if k in by and "torch_original" in by and k != "sft":
                ratios[f"{size}: time {k} / torch_original"] = by[k]["median_s"] / by["torch_original"]["median_s"]
        if "sft" in by and "torch_sft" in by:
            ratios[f"{size}: time sft / torch_sft"] = by["sft"]["median_s"] / by["torch_sft"]["median_s"]
    result = {
        "meta": {**probe, "peak_bf16_tflops": peak, "peak_source": peak_source,
                 "sizes": sizes, "dtype": a.dtype, "param_dtype": "float32",
                 "sd_precision": "float32", "sd_remat": "full", "repeats": a.repeats,
                 "budget_s": a.budget_s, "wall_s": time.monotonic() - t_start,
                 "xla_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR") if on_accel else None},
        "rows": rows, "batch_search": searches, "ratios": ratios, "skipped": skipped,
    }
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float))
    table = _markdown(rows, searches)
    print(f"\n{probe['device_kind']} ({probe['backend']}), {a.dtype} compute, float32 master "
          f"weights, seam.sd_precision=float32, seam.sd_remat=full; MFU against "
          f"{peak} TFLOP/s ({peak_source})\n")
    print(table)
    for k, v in ratios.items():
        print(f"- {k}: {v:.3g}")
    for s in skipped:
        print(f"- skipped {s['size']}/{s['case']}: {s['reason']}")
    print(f"\nwall {result['meta']['wall_s']:.0f} s; JSON in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Job "plan": will the SEAM step fit on the target devices? Compiled ahead of time on a CPU.

    python -m seam_jax.main --config=configs/plan.py:llama2-7b
    python -m seam_jax.main --config=configs/plan.py:llama3.1-8b --config.plan.search=True

It lowers and compiles the train step of ``c.model`` (a ``preset:NAME`` or a local
HF directory, of which only ``config.json`` is read) with ``c.seam``, ``c.optim`` and a
global batch of ``c.data.batch_size x c.data.context_length`` for a mesh of
``c.plan.num_devices`` devices laid out by ``c.mesh``, allocating no parameter
(``parallel/plan.py``). It logs per-device memory (arguments, outputs, temporaries,
peak) and whether the peak fits ``c.plan.device_memory_gb`` GiB times
``c.plan.usable_fraction``; with ``c.plan.search`` it also finds the smallest
fsdp-only mesh that fits. Results go to ``run_dir/plan.json``.

JAX fixes its device count when it starts, so when this process has fewer devices
than the plan needs, the job re-runs itself in a subprocess with that many fake CPU
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Any

import ml_collections as mlc

from seam_jax.errors import ConfigError, read_json
from seam_jax.train import run_dir as run_dir_lib

log = logging.getLogger(__name__)

CHILD_ENV = "SEAM_JAX_PLAN_CHILD"
_COUNT_FLAG = "--xla_force_host_platform_device_count"


def model_config(c: mlc.ConfigDict) -> Any:
    """The ModelConfig of ``c.model.source`` with the config's runtime fields; no weights."""
    from seam_jax.hf.source import runtime_fields
    from seam_jax.model.config import ModelConfig, preset

    source = str(c.model.source)
    runtime = runtime_fields(c)
    if source.startswith("preset:"):
        return preset(source.split(":", 1)[1], **runtime)
    path = pathlib.Path(source).expanduser()
    if (path / "config.json").is_file():
        return ModelConfig.from_hf(read_json(path / "config.json"), **runtime)
    raise ConfigError(f"the plan reads model.source={source!r} as preset:NAME or a local HF "
                      f"directory with config.json; neither was found")


def plan_config(c: mlc.ConfigDict) -> Any:
    """``c.plan`` as a ``parallel.plan.PlanConfig``."""
    from seam_jax.parallel.plan import PlanConfig

    p = c.plan
    return PlanConfig(num_devices=int(p.num_devices), device_memory_gb=float(p.device_memory_gb),
                      usable_fraction=float(p.usable_fraction), search=bool(p.search),
                      search_max_devices=int(p.search_max_devices), step=str(p.step))


def step_spec(c: mlc.ConfigDict) -> Any:
    """The step the SEAM job (``jobs.seam.train_step``) would compile for ``c``: the
    objective of ``defense.name`` (SEAM by default) and the batches that defense reads."""
    from seam_jax import defense as defense_lib
    from seam_jax.parallel.plan import StepSpec
    from seam_jax.train.optim import OptimConfig

    defense_lib.check(c)
    d = defense_lib.get(str(c.defense.name))
    return StepSpec(model=model_config(c), hp=defense_lib.seam_hyper(c),
                    optim=OptimConfig(**c.optim.to_dict()),
                    batch_size=int(c.data.batch_size), seq_len=int(c.data.context_length),
                    step=plan_config(c).step, seed=int(c.seed), steps=int(c.steps),
                    objective=lambda fn: defense_lib.objective(c, fn),
                    batch_keys=d.batch_keys, seeded=defense_lib.seeded(c))


def run(c: mlc.ConfigDict) -> dict[str, Any]:
    needed = plan_config(c).devices_needed()
    import jax  # the backend starts here; its device count is fixed from now on

    if jax.device_count() < needed:
        if os.environ.get(CHILD_ENV):
            raise ConfigError(f"the plan subprocess has {jax.device_count()} devices, not {needed}; "
                              f"is XLA_FLAGS overridden?")
        return _run_in_subprocess(c, needed)
    return plan_here(c)


def plan_here(c: mlc.ConfigDict) -> dict[str, Any]:
    """The plan in this process (it must already have the devices)."""
    from seam_jax.jobs.sharding import mesh_config
    from seam_jax.parallel.plan import format_bytes, plan_step, search_smallest_fsdp

    plan = plan_config(c)
    spec = step_spec(c)
    mesh_cfg = mesh_config(c)
    result: dict[str, Any] = {
        "model": str(c.model.source), "params": spec.model.num_params(),
        "param_dtype": spec.model.param_dtype, "dtype": spec.model.dtype,
        "remat": spec.model.remat, "scan_layers": spec.model.scan_layers,
        "step": spec.step, "defense": str(c.defense.name), "estimator": spec.hp.estimator,
        "vmap": spec.hp.vmap,
        "optimizer": spec.optim.name, "batch": [spec.batch_size, spec.seq_len],
        "device_memory_gib": plan.device_memory_gb, "usable_fraction": plan.usable_fraction,
        "compiled_on": _platform(),
        "note": "per-device bytes from compiled.memory_analysis(); peak = arguments + outputs "
                "- aliased + temporaries; compiled on the backend above, so an estimate of "
                "the target's",
    }
    target = plan_step(spec, mesh_cfg, plan, plan.num_devices)
    result["target"] = dataclasses.asdict(target)
    if plan.search:
        best, tried = search_smallest_fsdp(spec, plan, mesh_cfg.rules, already=[target])
        result["search"] = [dataclasses.asdict(p) for p in tried]
        result["smallest_fsdp"] = best.num_devices if best else None
        if best:
            log.info("smallest fsdp mesh that fits: %d devices (peak %s)", best.num_devices,
                     format_bytes(best.peak_bytes))
        else:
            log.info("no fsdp mesh of up to %d devices fits", plan.search_max_devices)
    run_dir = run_dir_lib.resolve(c.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(result, indent=1))
    log.info("plan written to %s", run_dir / "plan.json")
    return result


def _platform() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({jax.device_count()} devices)"


def child_env(env: dict[str, str], count: int) -> dict[str, str]:
    """``env`` with ``count`` fake CPU devices (replacing any device-count flag)."""
    flags = re.sub(rf"{_COUNT_FLAG}=\S+", "", env.get("XLA_FLAGS", "")).strip()
    out = dict(env)
    out["XLA_FLAGS"] = f"{flags} {_COUNT_FLAG}={count}".strip()
    out["JAX_PLATFORMS"] = "cpu"
    out[CHILD_ENV] = "1"
    return out


def _run_in_subprocess(c: mlc.ConfigDict, count: int) -> dict[str, Any]:
    log.info("this process has fewer devices than the plan's %d: compiling in a subprocess with "
             "%d fake CPU devices", count, count)
    with tempfile.TemporaryDirectory(prefix="seam_jax-plan-") as tmp:
        cfg_file = pathlib.Path(tmp) / "config.json"
        out_file = pathlib.Path(tmp) / "result.json"
        cfg_file.write_text(c.to_json_best_effort())
        proc = subprocess.run([sys.executable, "-m", "seam_jax.jobs.plan", str(cfg_file), str(out_file)],
                              env=child_env(dict(os.environ), count))
        if proc.returncode or not out_file.is_file():
            raise ConfigError(f"the plan subprocess failed (exit code {proc.returncode}); its log "
                              f"is above")
        return read_json(out_file)


def _child_main(cfg_file: str, out_file: str) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("seam_jax").setLevel(logging.INFO)
    c = mlc.ConfigDict(read_json(cfg_file))
    result = run(c)
    pathlib.Path(out_file).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:3]))

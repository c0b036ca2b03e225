"""Ahead-of-time memory plan: compile the train step for a target mesh, allocate nothing.

The step is the jobs' own (``train.step.build_step`` with the objective, optimizer and
layout the SEAM job uses); the state and the batches are ``jax.ShapeDtypeStruct``s
carrying their shardings, so ``step.lower(...).compile()`` builds the per-device
program of the target mesh without a single parameter in memory. ``compiled.memory_analysis()``
then gives, per device: the arguments (state + batch shards), the outputs, the
bytes of outputs that alias donated arguments, and the temporaries (activations,
gradients, the SEAM direction and perturbed parameters). The peak is

    arguments + outputs - aliased + temporaries

(MaxText's ``train_compile`` estimate). The plan fits when the peak is at most
``device_memory_gb`` GiB times ``usable_fraction`` (the allocator's share: JAX on
GPU takes ``XLA_PYTHON_CLIENT_MEM_FRACTION`` of the memory; the launch scripts set
it to the same 0.9).

Compiled on a CPU, the figures are XLA:CPU's: the partitioned program and its
parameter-sized buffers are the target's, but fusion, bf16 handling and scheduling
differ from the TPU/GPU backends, so treat them as estimates with a margin.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn
from seam_jax.model.config import ModelConfig
from seam_jax.parallel import sharded
from seam_jax.parallel.mesh import MeshConfig, make_mesh, resolve_sizes
from seam_jax.parallel.rules import Rules
from seam_jax.seam.objective import SeamHyper
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import (Objective, SEED_KEY, SFT_KEY, TrainStep, build_step,
                                 optimizer_for, seam_objective, sft_objective)

log = logging.getLogger(__name__)

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """The target topology and memory, and the search option (``c.plan``)."""

    num_devices: int = 8
    device_memory_gb: float = 80.0
    usable_fraction: float = 0.9
    search: bool = False
    search_max_devices: int = 64
    step: str = "seam"  # seam | sft

    def __post_init__(self) -> None:
        if self.num_devices < 1 or self.device_memory_gb <= 0:
            raise ConfigError("plan.num_devices must be >= 1 and plan.device_memory_gb > 0")
        if not 0 < self.usable_fraction <= 1:
            raise ConfigError(f"plan.usable_fraction={self.usable_fraction}; choose a value in (0, 1]")
        if self.step not in ("seam", "sft"):
            raise ConfigError(f"plan.step={self.step!r}; choose seam or sft")

    @property
    def budget_bytes(self) -> int:
        return int(self.device_memory_gb * self.usable_fraction * GIB)

    def devices_needed(self) -> int:
        return max(self.num_devices, self.search_max_devices if self.search else 0)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What is compiled: the model, the objective, the optimizer and the global batch.

    ``steps``: the run's micro-steps; it sets the learning-rate schedule's constants,
    which change no buffer (so no memory figure) but are part of the program.
    """

    model: ModelConfig
    hp: SeamHyper
    optim: OptimConfig
    batch_size: int
    seq_len: int
    step: str = "seam"
    seed: int = 0
    steps: int = 1000
    # The job's defense (seam_jax.defense), for step "seam": its objective builder
    # (None: SEAM with ``hp``), the batch keys it reads and whether it reads seed rows.
    objective: Callable[[ModelFn], Objective] | None = None
    batch_keys: tuple[str, ...] = ("adv", "aln", "bgn")
    seeded: bool = False


@dataclasses.dataclass
class MemoryPlan:
    """Per-device memory of one compiled step on one mesh (bytes)."""

    mesh: dict[str, int]
    num_devices: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    peak_bytes: int
    state_bytes: int  # params + optimizer state on one device (from the shardings)
    params_bytes: int
    budget_bytes: int
    fits: bool
    margin_bytes: int
    compile_seconds: float

    def summary(self) -> str:
        g = format_bytes
        return (f"mesh {self.mesh}: per device arguments {g(self.argument_bytes)} "
                f"(state {g(self.state_bytes)}), outputs {g(self.output_bytes)} "
                f"(aliased {g(self.alias_bytes)}), temporaries {g(self.temp_bytes)}; "
                f"peak {g(self.peak_bytes)} of {g(self.budget_bytes)} usable -> "
                f"{'FITS' if self.fits else 'DOES NOT FIT'} (margin {g(self.margin_bytes)}); "
                f"compiled in {self.compile_seconds:.0f} s")


def abstract_step_batches(spec: StepSpec, rules: Rules) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """The step's batches as sharded ShapeDtypeStructs (int32 [B, T], as data.format makes)."""
    keys = spec.batch_keys if spec.step == "seam" else (SFT_KEY,)
    one = {k: jax.ShapeDtypeStruct((spec.batch_size, spec.seq_len), jnp.int32)
           for k in ("input_ids", "attention_mask", "loss_mask")}
    batches: dict[str, Any] = {k: one for k in keys}
    if spec.step == "seam" and spec.seeded:  # defense.DefenseSource's seed rows
        batches[SEED_KEY] = jax.ShapeDtypeStruct((spec.batch_size,), jnp.uint32)
    return sharded.abstract_batches(batches, rules)


def objective_for(spec: StepSpec, fn: ModelFn) -> Objective:
    if spec.step != "seam":
        return sft_objective(fn)
    return seam_objective(fn, spec.hp) if spec.objective is None else spec.objective(fn)


def lower_step(spec: StepSpec, mesh_cfg: MeshConfig, devices: list[jax.Device]
               ) -> tuple[Any, TrainStep, Rules, Any]:
    """(lowered step, the step, rules, abstract state) for ``spec`` on a mesh over ``devices``.

    The step is built as the jobs build theirs: ``build_step`` with the objective, the
    optimizer for ``spec.steps`` and the mesh's layout.
    """
    mesh = make_mesh(mesh_cfg, devices)
    rules = Rules.preset(mesh_cfg.rules, mesh)
    fn = ModelFn(spec.model)
    optimizer, schedule = optimizer_for(spec.optim, spec.steps)
    objective = objective_for(spec, fn)
    layout = sharded.step_layout(fn, optimizer, rules, spec.batch_size, objective.frozen)
    step = build_step(objective, optimizer, schedule, layout=layout)
    state = step.abstract_state(fn.abstract_params, spec.seed)
    return step.lower(state, abstract_step_batches(spec, rules)), step, rules, state


def compile_step(spec: StepSpec, mesh_cfg: MeshConfig, devices: list[jax.Device],
                 compiler_options: dict[str, Any] | None = None) -> tuple[Any, Rules, Any]:
    """(compiled step, rules, abstract state) for ``spec`` on a mesh over ``devices``."""
    lowered, _, rules, state = lower_step(spec, mesh_cfg, devices)
    return lowered.compile(compiler_options), rules, state


def per_device_bytes(abstract: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(abstract):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return total


def plan_step(spec: StepSpec, mesh_cfg: MeshConfig, plan: PlanConfig, num_devices: int,
              devices: list[jax.Device] | None = None) -> MemoryPlan:
    """Compile ``spec`` on ``num_devices`` devices laid out by ``mesh_cfg``; its memory plan."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) < num_devices:
        raise ConfigError(f"the plan needs {num_devices} devices, JAX has {len(devices)}; run it "
                          f"through the plan job, which fakes CPU devices")
    devices = devices[:num_devices]
    sizes = resolve_sizes(mesh_cfg.sizes(), num_devices)
    log.info("compiling the %s step of %s (%.4gM parameters, %s master, %s compute, remat %s) "
             "for mesh %s", spec.step, _name(spec.model), spec.model.num_params() / 1e6,
             spec.model.param_dtype, spec.model.dtype, spec.model.remat, sizes)
    t0 = time.time()
    compiled, rules, state = compile_step(spec, mesh_cfg, devices)
    seconds = time.time() - t0
    mem = compiled.memory_analysis()
    if mem is None:
        raise ConfigError(f"this backend ({devices[0].platform}) gives no memory analysis")
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes)
    budget = plan.budget_bytes
    out = MemoryPlan(
        mesh=dict(rules.mesh.shape), num_devices=num_devices,
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), peak_bytes=int(peak),
        state_bytes=per_device_bytes({k: state[k] for k in ("params", "opt_state")}),
        params_bytes=per_device_bytes(state["params"]),
        budget_bytes=budget, fits=peak <= budget, margin_bytes=int(budget - peak),
        compile_seconds=round(seconds, 1),
    )
    log.info("%s", out.summary())
    return out


def state_lower_bound(spec: StepSpec) -> int:
    """Bytes of params + optimizer state in total (no device can hold less than its share)."""
    fn = ModelFn(spec.model)
    optimizer, _ = optimizer_for(spec.optim, spec.steps)
    shapes = jax.eval_shape(lambda p: optimizer.init(p), fn.abstract_params)
    return sharded.total_bytes(fn.abstract_params) + sharded.total_bytes(shapes)


def search_smallest_fsdp(spec: StepSpec, plan: PlanConfig, rules: str = "fsdp_tp",
                         devices: list[jax.Device] | None = None,
                         already: list[MemoryPlan] | None = None,
                         ) -> tuple[MemoryPlan | None, list[MemoryPlan]]:
    """The smallest power-of-two fsdp-only mesh (data=1, tensor=1) on which the step fits.

    Per-device memory does not grow with the fsdp size, so sizes at or below one
    that ``already`` failed are skipped, as are sizes whose share of the state alone
    exceeds the budget; plans in ``already`` are reused, not recompiled. Returns (the
    first that fits or None, the plans of every size tried).
    """
    state = state_lower_bound(spec)
    known = {_fsdp_only_size(p): p for p in (already or []) if _fsdp_only_size(p)}
    n = 1
    while n < plan.search_max_devices and (
            state / n > plan.budget_bytes or (n in known and not known[n].fits)
            or any(m > n and not p.fits for m, p in known.items())):
        n *= 2
    log.info("search: the state is %s in all; trying fsdp sizes from %d (budget %s per device)",
             format_bytes(state), n, format_bytes(plan.budget_bytes))
    tried: list[MemoryPlan] = []
    while n <= plan.search_max_devices:
        p = known.get(n) or plan_step(spec, MeshConfig(data=1, fsdp=n, tensor=1, rules=rules),
                                      plan, n, devices)
        tried.append(p)
        if p.fits:
            return p, tried
        n *= 2
    return None, tried


def format_bytes(n: float) -> str:
    """Bytes in binary units (GiB for the plans that matter, KiB for test models)."""
    for unit, size in (("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _fsdp_only_size(p: MemoryPlan) -> int | None:
    return p.mesh["fsdp"] if p.mesh["data"] == 1 and p.mesh["tensor"] == 1 else None


def _name(cfg: ModelConfig) -> str:
    return f"{cfg.architecture}(L={cfg.num_hidden_layers}, d={cfg.hidden_size}, V={cfg.vocab_size})"

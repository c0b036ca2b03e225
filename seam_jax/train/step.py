"""The train step ``(state, batches) -> (state, metrics)`` and the one builder that jits it.

The state is a plain pytree (``step``, ``params``, ``opt_state``, ``rng``), so Orbax
saves it as is. A step whose loss or gradient is not finite, or whose loss mask is
empty, leaves the state unchanged and says so in ``metrics["skipped"]``; the host
loop decides whether to stop.

``build_step`` is the only place a train step is jitted: the SEAM job, the attacks,
the FS fine-tuning, the ahead-of-time memory plan and the tests all get their step
from it, so the plan compiles the program the job runs. It owns the state's
donation, the compiler options, and, given a ``StepLayout`` (a mesh), the in/out
shardings and the activation constraints.

An ``Objective`` is what is trained: a gradient function
``gradient(params, batches) -> (grads, metrics)`` and the metric names holding
target-token counts. ``seam_objective`` and ``sft_objective`` are the two the
project trains; ``SftSource`` is the one batch adaptor for SFT.

Frozen parameters: an objective with ``frozen`` (a ``Frozen``) trains only part of what it
reads. The state then holds, besides the trained ``params``, a ``"frozen"`` tree that the
step passes to ``gradient(params, batches, frozen)`` and returns unchanged: no gradient,
no optimizer state, laid out like the model's parameters (``parallel.sharded``). It is
built from the model's parameters by ``Frozen.split`` (TAR's DPO reference: a copy of the
base model; LoRA: the base weights under the adapters) and is not checkpointed: a resumed
run re-derives it from the model it loads (``checkpointed``; ``train.loop``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.transformer import activation_constraint
from seam_jax.seam.objective import SeamHyper, seam_gradient, sft_gradient
from seam_jax.tree import tree_norm
from seam_jax.train.optim import OptimConfig, make_optimizer

State = dict[str, Any]
GradientFn = Callable[[Params, dict], tuple[Params, dict[str, jax.Array]]]
SEAM_TARGETS = ("targets_adv", "targets_aln", "targets_bgn")
SFT_KEY = "train"  # the batches' key the SFT objective reads
# The batches' key holding one uint32 per row, all equal to the step number
# (``defense.DefenseSource``): a defense that draws random numbers (RepNoise's noise,
# TAR's adversary learning rate) keys them on it, so a resumed run draws the same ones.
SEED_KEY = "seed"
FROZEN = "frozen"  # the state's key of the parameters a step reads but never trains (``Frozen``)


# ------------------------------------------------------------------ what is trained
@dataclasses.dataclass(frozen=True)
class Frozen:
    """How a state holds parameters its step reads but does not train.

    ``split(model_params) -> (trained, frozen)``: the state's ``params`` and ``"frozen"``
    trees from the model's parameters (a pure function of them, so a resumed run derives
    the same frozen tree from the same model). ``join(trained, frozen) -> model_params``:
    the model's parameters back (what is exported and evaluated).
    """

    split: Callable[[Params], tuple[Params, Params]]
    join: Callable[[Params, Params], Params]

    @staticmethod
    def copy() -> "Frozen":
        """All parameters trained, and a copy of them at the start held fixed (a reference
        model: TAR's DPO reference)."""
        return Frozen(split=lambda p: (p, jax.tree.map(jnp.copy, p)), join=lambda t, f: t)


@dataclasses.dataclass(frozen=True)
class Objective:
    """``gradient(params, batches) -> (grads, metrics)``; ``target_keys`` name the metrics
    holding target-token counts (a zero count skips the step). With ``frozen``, the
    gradient is ``gradient(params, batches, frozen)`` and the state carries the frozen
    tree (``Frozen``)."""

    gradient: GradientFn
    target_keys: tuple[str, ...]
    frozen: Frozen | None = None


def seam_objective(fn: ModelFn, hp: SeamHyper) -> Objective:
    """SEAM's ``grad L_ul + alpha grad L_up + beta grad L_sd`` on batches adv, aln, bgn."""
    return Objective(functools.partial(seam_gradient, fn, hp=hp), SEAM_TARGETS)


def sft_objective(fn: Callable[..., Any]) -> Objective:
    """Plain fine-tuning, ``grad l(theta; batches["train"])`` (attacks, FS, baselines).

    ``fn(params, input_ids, attention_mask)`` is the model (a ``ModelFn``, or LoRA's
    adapter-only apply, ``attack.lora.lora_objective``).
    """
    return Objective(functools.partial(sft_gradient, fn, key=SFT_KEY), ("targets",))


class SftSource:
    """The training loop's batch source for SFT: ``{"train": batches.batch_at(step)}``.

    ``step_seed``: also pass the step number under ``"seed"`` (a uint32 scalar; LoRA's
    dropout key is folded with it, so each step draws its own masks).
    """

    def __init__(self, batches: Any, *, step_seed: bool = False) -> None:
        self.batches = batches
        self.step_seed = step_seed

    def batch_at(self, step: int) -> dict[str, Any]:
        out: dict[str, Any] = {SFT_KEY: self.batches.batch_at(step)}
        if self.step_seed:
            out["seed"] = np.asarray(step, np.uint32)
        return out


# ------------------------------------------------------------------ the step
def init_state(params: Params, optimizer: optax.GradientTransformation, seed: int,
               frozen: Params | None = None) -> State:
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": optimizer.init(params),
             "rng": jax.random.key_data(jax.random.key(seed))}
    if frozen is not None:
        state[FROZEN] = frozen
    return state


def initial_state(model_params: Params, optimizer: optax.GradientTransformation, seed: int,
                  frozen: Frozen | None = None) -> State:
    """``init_state`` around the model's parameters, split by ``frozen`` when given."""
    if frozen is None:
        return init_state(model_params, optimizer, seed)
    trained, fixed = frozen.split(model_params)
    return init_state(trained, optimizer, seed, fixed)


def checkpointed(state: State) -> State:
    """The part of a state a checkpoint holds: all but the frozen tree, which a resumed run
    derives again from the model it loads (``Frozen.split``)."""
    return {k: v for k, v in state.items() if k != FROZEN}


def _count_of(opt_state: Any) -> jax.Array | None:
    """The inner optimizer's update count (for the learning rate metric)."""
    # NamedTuple states all have tuple.count (a method); the optax ones hold an array.
    has = lambda x: hasattr(x, "count") and not callable(x.count)
    for leaf in jax.tree.leaves(opt_state, is_leaf=has):
        if has(leaf):
            return leaf.count
    return None


def make_step(gradient_fn: GradientFn, optimizer: optax.GradientTransformation,
              schedule: optax.Schedule, *, target_keys: tuple[str, ...]) -> Callable[[State, dict], tuple[State, dict]]:
    """Wrap ``gradient_fn(params, batches) -> (grads, metrics)`` into an (unjitted) train step.

    ``target_keys``: metric names holding target-token counts; a zero count skips the step.
    Jit it with ``build_step``. Its boundary is shape-checked (``check_step_boundary``).
    """

    def step(state: State, batches: dict) -> tuple[State, dict]:
        frozen = (state[FROZEN],) if FROZEN in state else ()
        grads, m = gradient_fn(state["params"], batches, *frozen)
        check_step_boundary(state["params"], batches, grads, m, target_keys)
        count = _count_of(state["opt_state"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        gnorm = tree_norm(grads)
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(gnorm)
        nonempty = jnp.all(jnp.stack([m[k] > 0 for k in target_keys]))
        ok = finite & nonempty
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        new_state = {"step": state["step"] + 1, "params": keep(params, state["params"]),
                     "opt_state": keep(opt_state, state["opt_state"]), "rng": state["rng"]}
        if frozen:
            new_state[FROZEN] = frozen[0]
        m = dict(m)
        m.update(grad_norm=gnorm, param_norm=tree_norm(new_state["params"]),
                 lr=schedule(count) if count is not None else jnp.nan,
                 skipped=(~ok).astype(jnp.int32), nonfinite=(~finite).astype(jnp.int32),
                 empty_mask=(~nonempty).astype(jnp.int32))
        return new_state, m

    return step


def check_step_boundary(params: Params, batches: dict, grads: Params, metrics: dict,
                        target_keys: tuple[str, ...]) -> None:
    """chex checks of a step's inputs and its gradient function's outputs.

    Every batch (a dict with ``input_ids``) is [B, T] with masks of the same shape; the
    gradient has the parameters' tree and shapes; the loss and the target counts are
    scalars. On static shapes, so under jit they run once, while tracing.
    """
    for b in batches.values():
        if isinstance(b, dict) and "input_ids" in b:
            chex.assert_rank(b["input_ids"], 2)
            chex.assert_equal_shape([b[k] for k in ("input_ids", "attention_mask", "loss_mask")
                                     if k in b])
    chex.assert_trees_all_equal_shapes(grads, params)
    chex.assert_rank([metrics["loss"], *(metrics[k] for k in target_keys)], 0)


# XLA:CPU's default scheduler runs the SEAM step's independent gradient evaluations in
# an order that keeps more of their buffers alive at once; the memory-optimised one
# lowers the SmolLM2 SEAM step's peak from 10.97 to 9.71 GB (vmapped perturbed
# gradients, batch 4 x 128, no rematerialisation) at the same step time
# (benchmarks/seam_step.py).
CPU_COMPILER_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def step_compiler_options() -> dict[str, Any]:
    """``jax.jit(..., compiler_options=...)`` for a train step on the current backend."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def optimizer_for(cfg: OptimConfig, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) for a run of ``steps`` micro-steps (``grad_accum`` per update)."""
    return make_optimizer(cfg, math.ceil(steps / max(cfg.grad_accum, 1)))


# ------------------------------------------------------------------ the builder
@dataclasses.dataclass(frozen=True)
class StepLayout:
    """Where a sharded step's inputs and outputs live (``parallel.sharded.step_layout``).

    ``state``: a NamedSharding per state leaf; ``batch``: one sharding for every batch
    array (a pytree prefix); ``constrain(x, logical_axes)``: the rules' activation
    constraint, active while the step is traced (``parallel.rules.Rules.constrain``).
    The metrics (scalars) come back replicated over ``mesh``.
    """

    mesh: Mesh
    state: State
    batch: Sharding
    constrain: Callable[[jax.Array, tuple], jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A jitted train step and the optimizer whose state it carries (``build_step``)."""

    jitted: Any  # jax.jit(step, donate_argnums=0, ...)
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    target_keys: tuple[str, ...]
    layout: StepLayout | None = None
    frozen: Frozen | None = None  # the objective's (``Objective.frozen``)

    def __call__(self, state: State, batches: dict) -> tuple[State, dict]:
        return self.jitted(state, batches)

    def lower(self, state: Any, batches: Any) -> Any:
        """``jax.jit(...).lower`` on arrays or (sharded) ShapeDtypeStructs."""
        return self.jitted.lower(state, batches)

    def init(self, params: Params, seed: int) -> State:
        """The initial state around the model's ``params`` (``initial_state``: split by the
        objective's ``Frozen`` if it has one), laid out as the step expects.

        On a mesh, ``params`` already carry their shardings (``ModelFn.init(seed,
        shardings)`` or the HF loader placed them) and the optimizer's moments follow them; ``device_put``
        only replicates the scalars (step, counts, RNG) and moves nothing already placed.
        """
        state = initial_state(params, self.optimizer, seed, self.frozen)
        return state if self.layout is None else jax.device_put(state, self.layout.state)

    def model_params(self, state: State) -> Params:
        """The model's parameters of ``state`` (``Frozen.join``; else its ``params``)."""
        if self.frozen is None:
            return state["params"]
        return self.frozen.join(state["params"], state[FROZEN])

    def abstract_state(self, params: Any, seed: int = 0) -> State:
        """ShapeDtypeStructs (with the layout's shardings) of ``init``'s output; allocates nothing."""
        shapes = jax.eval_shape(lambda p: initial_state(p, self.optimizer, seed, self.frozen),
                                params)
        if self.layout is None:
            return shapes
        return jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h),
                            shapes, self.layout.state)


def build_step(objective: Objective, optimizer: optax.GradientTransformation,
               schedule: optax.Schedule, *, layout: StepLayout | None = None,
               compiler_options: dict[str, Any] | None = None) -> TrainStep:
    """The jitted train step of ``objective`` under ``optimizer``; the state is donated.

    Donation: the state's buffers are reused for the new state, so a state passed in is
    consumed (the caller that keeps its params trains a copy; ``train.loop.run``'s
    ``keep_params``). ``layout``: run on its mesh (state and batch shardings, metrics
    replicated, activation constraints while tracing). ``compiler_options`` extend
    ``step_compiler_options()`` (tests use cheaper XLA:CPU code generation).
    """
    gradient = objective.gradient
    shardings: dict[str, Any] = {}
    if layout is not None:
        gradient = _constrained(objective.gradient, layout.constrain)
        shardings = dict(in_shardings=(layout.state, layout.batch),
                         out_shardings=(layout.state, replicated(layout.mesh)))
    step = make_step(gradient, optimizer, schedule, target_keys=objective.target_keys)
    jitted = jax.jit(step, donate_argnums=(0,),
                     compiler_options={**step_compiler_options(), **(compiler_options or {})},
                     **shardings)
    return TrainStep(jitted, optimizer, schedule, objective.target_keys, layout, objective.frozen)


def _constrained(gradient: GradientFn, constrain: Callable[[jax.Array, tuple], jax.Array]
                 ) -> GradientFn:
    @functools.wraps(gradient)
    def wrapped(params: Params, batches: dict, *frozen: Params) -> tuple[Params, dict]:
        with activation_constraint(constrain):
            return gradient(params, batches, *frozen)

    return wrapped


def replicated(mesh: Any) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())

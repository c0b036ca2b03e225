"""Sharded init, the sharded step's layout, and global batches from host data.

Everything is laid out by ``rules.Rules`` over one mesh:

- parameters: the rules table (``fsdp`` splits ``embed``, ``tensor`` splits heads/MLP/
  vocabulary); optimizer moments take the sharding of the parameter they mirror (by
  tree path and shape), counters and the RNG are replicated;
- init: ``ModelFn.init(seed, shardings=param_shardings(...))`` runs the model's init
  inside one ``jax.jit`` whose ``out_shardings`` are the sharded layout, so each device
  only ever materialises its own shards (the HF loader places loaded weights the same
  way); the optimizer state is then built around them (``train.step.TrainStep.init``)
  and inherits their layout;
- the step: ``step_layout`` gives ``train.step.build_step`` the state and batch
  shardings and the rules' activation constraints. The SEAM gradient keeps its
  estimators as written (vmapped perturbed gradients, ``jax.jvp`` for the exact
  Hessian-vector product); GSPMD partitions them like any other function;
- batches: each host loads its own contiguous rows of the global batch
  (``data.batches.shard_slice``) and ``global_batch`` assembles them into one global
  array with ``jax.make_array_from_process_local_data``.

Precision is the model config's: ``param_dtype`` is the master (and optimizer)
dtype, ``dtype`` the compute dtype; the L_sd perturbation is added to the master
parameters (``seam.sd_grad.perturb``), so with float32 masters it stays float32.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig
from seam_jax.parallel.mesh import MeshConfig, make_mesh
from seam_jax.parallel.rules import Rules, ShardingError
from seam_jax.train.step import Frozen, State, StepLayout, initial_state, replicated

log = logging.getLogger(__name__)

Tree = Any


# ------------------------------------------------------------------ parameters and state
def param_shardings(fn: ModelFn, rules: Rules) -> Params:
    """NamedShardings for ``fn``'s parameters (ShardingError names any it cannot place)."""
    return rules.param_shardings(fn.abstract_params, fn.logical_axes)


def state_shardings(abstract_state: State, params_sharding: Params, mesh: Mesh,
                    model_params: Params | None = None) -> State:
    """Shardings for a train state: parameters as given, optimizer leaves like their parameter.

    An optimizer leaf mirrors a parameter when its tree path ends with that parameter's
    path and it has its shape (optax's ``mu``, ``nu``, ``MultiSteps.acc_grads``, ...);
    every other leaf (counts, the RNG, scalars) is replicated. A frozen tree
    (``train.step.Frozen``) is laid out the same way: its leaves that are the model's
    parameters take their sharding. ``model_params``: the model's abstract parameters, the
    tree ``params_sharding`` lays out (default: the state's ``params``); when the trained
    ``params`` are not the model's (LoRA's adapters), they too follow it by path, so what no
    parameter mirrors (the adapters, small) is replicated.
    """
    model_params = abstract_state["params"] if model_params is None else model_params
    flat_params = jax.tree_util.tree_flatten_with_path(model_params)[0]
    flat_sh = jax.tree.leaves(params_sharding)
    by_path = {_keys(path): (tuple(leaf.shape), sh) for (path, leaf), sh in zip(flat_params, flat_sh)}
    depth = max(len(k) for k in by_path)

    def one(path: tuple, leaf: Any) -> NamedSharding:
        keys = _keys(path)
        for n in range(min(depth, len(keys)), 0, -1):
            hit = by_path.get(keys[-n:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return replicated(mesh)

    out = jax.tree_util.tree_map_with_path(one, abstract_state)
    if jax.tree.structure(abstract_state["params"]) == jax.tree.structure(params_sharding):
        out["params"] = params_sharding
    return out


def step_layout(fn: ModelFn, optimizer: optax.GradientTransformation, rules: Rules,
                global_rows: int, frozen: Frozen | None = None) -> StepLayout:
    """The layout of ``fn``'s train step under ``optimizer`` on ``rules.mesh`` (for
    ``train.step.build_step``), with global batches of ``global_rows`` rows; ``frozen``:
    the objective's (``Objective.frozen``), whose state also holds a frozen tree."""
    params_sh = param_shardings(fn, rules)
    shapes = jax.eval_shape(lambda p: initial_state(p, optimizer, 0, frozen), fn.abstract_params)
    return StepLayout(mesh=rules.mesh,
                      state=state_shardings(shapes, params_sh, rules.mesh, fn.abstract_params),
                      batch=batch_sharding(rules, global_rows), constrain=rules.constrain)


# ------------------------------------------------------------------ batches
def batch_sharding(rules: Rules, global_rows: int) -> NamedSharding:
    """Sharding of every batch array: rows over the ``batch`` rule's mesh axes."""
    return NamedSharding(rules.mesh, rules.batch_spec(global_rows))


def global_batch(local: Tree, rules: Rules) -> Tree:
    """Assemble this host's rows (``batch_at(step, process_index, process_count)``) into
    global arrays. On one host it is a sharded ``device_put``.

    Every process must pass the same number of rows; the global batch is their
    concatenation in process order (``data.batches.shard_slice``).
    """
    nproc = jax.process_count()

    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        rows = x.shape[0] * nproc
        sharding = batch_sharding(rules, rows)
        return jax.make_array_from_process_local_data(sharding, x, (rows,) + x.shape[1:])

    return jax.tree.map(one, local)


def abstract_batches(batches: dict[str, dict[str, Any]], rules: Rules) -> Tree:
    """ShapeDtypeStructs with batch shardings, for ahead-of-time lowering."""
    def one(x: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding(rules, x.shape[0]))

    return jax.tree.map(one, batches)


# ------------------------------------------------------------------ the training job's entry
@dataclasses.dataclass
class ShardedSetup:
    """What a training job needs to run sharded (see ``sharded_training_setup``)."""

    mesh: Mesh
    rules: Rules
    global_rows: int

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    def param_shardings_fn(self, cfg: ModelConfig) -> Params:
        """``cfg -> shardings`` for the model loader (``ModelFn.init`` / ``hf.load.load_hf``)."""
        return param_shardings(ModelFn(cfg), self.rules)

    def layout(self, fn: ModelFn, optimizer: optax.GradientTransformation,
               frozen: Frozen | None = None) -> StepLayout:
        """The step layout for ``train.step.build_step`` (``step_layout``)."""
        return step_layout(fn, optimizer, self.rules, self.global_rows, frozen)

    def local_source(self, source: Any) -> Any:
        """``source`` with ``batch_at(step)`` giving this host's rows of the global batch."""
        return _LocalRows(source, self.process_index, self.process_count)

    def batch_to_global(self, local: Tree) -> Tree:
        """This host's rows (``batch_at(step, process_index, process_count)``) -> global arrays."""
        return global_batch(local, self.rules)


def sharded_training_setup(mesh_cfg: MeshConfig, global_rows: int) -> ShardedSetup:
    """The mesh of ``mesh_cfg`` over every device and its rules, for global batches of
    ``global_rows`` rows.

    Call ``mesh.initialize_distributed`` first (before any JAX device use). Needs no
    model: ``param_shardings_fn`` goes to the model loader, ``layout(fn, optimizer)`` to
    ``train.step.build_step``.
    """
    mesh = make_mesh(mesh_cfg)
    rules = Rules.preset(mesh_cfg.rules, mesh)
    if global_rows % jax.process_count():
        raise ShardingError(f"data.batch_size={global_rows} does not divide over "
                            f"{jax.process_count()} processes")
    log.info("sharded training: mesh %s, rules %s, global batch %d rows from %d process(es)",
             dict(mesh.shape), rules.name, global_rows, jax.process_count())
    return ShardedSetup(mesh=mesh, rules=rules, global_rows=global_rows)


def wants_sharding(mesh_cfg: MeshConfig) -> bool:
    """Whether a training job should run sharded (``mesh_cfg.use``).

    ``auto``: yes with several processes, or several accelerators on this host; a CPU
    host's devices (often faked for tests) stay on the single-device path.
    """
    if mesh_cfg.use in ("on", "off"):
        return mesh_cfg.use == "on"
    return jax.process_count() > 1 or (jax.device_count() > 1 and jax.default_backend() != "cpu")


@dataclasses.dataclass
class _LocalRows:
    source: Any
    process_index: int
    process_count: int

    def batch_at(self, step: int) -> Tree:
        return self.source.batch_at(step, self.process_index, self.process_count)


# ------------------------------------------------------------------ accounting
def bytes_per_device(tree: Tree) -> dict[int, int]:
    """Bytes each device holds of ``tree``'s arrays (device id -> bytes)."""
    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def total_bytes(tree: Tree) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _keys(path: tuple) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)

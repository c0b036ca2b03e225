"""Sharded init, the sharded SEAM and SFT train steps, and global batches from host data.

Everything is laid out by ``rules.Rules`` over one mesh:

- parameters: the rules table (``fsdp`` splits ``embed``, ``tensor`` splits heads/MLP/
  vocabulary); optimizer moments take the sharding of the parameter they mirror (by
  tree path and shape), counters and the RNG are replicated;
- init: ``jax.eval_shape`` gives the state's shapes without allocating it, and the
  init runs inside one ``jax.jit`` whose ``out_shardings`` are the sharded layout, so
  each device only ever materialises its own shards;
- the step: ``jax.jit(step, in_shardings, out_shardings, donate_argnums=0)``, with the
  rules' activation constraints applied while it is traced. The SEAM gradient keeps
  its estimators as written (vmapped perturbed gradients, ``jax.jvp`` for the exact
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
import functools
import logging
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig
from seam_jax.parallel.mesh import DistributedConfig, MeshConfig, initialize_distributed, make_mesh
from seam_jax.parallel.rules import Rules, ShardingError, activation_sharding
from seam_jax.train.step import GradientFn, State, init_state, make_step, step_compiler_options

log = logging.getLogger(__name__)

Tree = Any


# ------------------------------------------------------------------ parameters and state
def param_shardings(fn: ModelFn, rules: Rules) -> Params:
    """NamedShardings for ``fn``'s parameters (ShardingError names any it cannot place)."""
    return rules.param_shardings(fn.abstract_params, fn.logical_axes)


def shard_init(fn: ModelFn, shardings: Params, seed: int = 0) -> Params:
    """``fn.init(seed)`` computed directly into ``shardings`` (``ModelFn.init``'s sharded path)."""
    return fn.init(seed, shardings=shardings)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_shardings(abstract_state: State, params_sharding: Params, mesh: Mesh) -> State:
    """Shardings for a train state: parameters as given, optimizer leaves like their parameter.

    An optimizer leaf mirrors a parameter when its tree path ends with that parameter's
    path and it has its shape (optax's ``mu``, ``nu``, ``MultiSteps.acc_grads``, ...);
    every other leaf (counts, the RNG, scalars) is replicated.
    """
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_state["params"])[0]
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
    out["params"] = params_sharding
    return out


def abstract_state(fn: ModelFn, optimizer: optax.GradientTransformation, params_sharding: Params,
                   mesh: Mesh, seed: int = 0) -> State:
    """ShapeDtypeStructs (with shardings) of ``init_state``'s output; allocates nothing."""
    shapes = jax.eval_shape(lambda p: init_state(p, optimizer, seed), fn.abstract_params)
    sh = state_shardings(shapes, params_sharding, mesh)
    return jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), shapes, sh)


def shard_init_state(params: Params, optimizer: optax.GradientTransformation, shardings: State,
                     seed: int = 0) -> State:
    """``init_state`` computed into ``shardings``; ``params`` is donated (its buffers reused)."""
    f = jax.jit(lambda p: init_state(p, optimizer, seed), in_shardings=(shardings["params"],),
                out_shardings=shardings, donate_argnums=(0,))
    return f(params)


def shard_init_train_state(fn: ModelFn, optimizer: optax.GradientTransformation, shardings: State,
                           seed: int = 0) -> State:
    """The whole train state (``fn.init(seed)`` then ``init_state``) in one jit, computed
    straight into ``shardings`` (``abstract_state``'s): one compile, no full copy anywhere."""
    return jax.jit(lambda: init_state(fn.init(seed), optimizer, seed), out_shardings=shardings)()


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


# ------------------------------------------------------------------ steps
def constrained(gradient_fn: GradientFn, rules: Rules) -> GradientFn:
    """``gradient_fn`` with the rules' activation constraints active while it is traced."""
    @functools.wraps(gradient_fn)
    def wrapped(params: Params, batches: dict) -> tuple[Params, dict]:
        with activation_sharding(rules):
            return gradient_fn(params, batches)

    return wrapped


def step_jit_kwargs(state_sh: State, batch_sh: NamedSharding, mesh: Mesh) -> dict[str, Any]:
    """``jax.jit`` keyword arguments for ``step(state, batches) -> (state, metrics)``.

    The batch sharding is a pytree prefix: it applies to every array of ``batches``.
    Metrics come back replicated (scalars). ``train.loop.run`` adds the donation.
    """
    return dict(in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated(mesh)))


def jit_train_step(gradient_fn: GradientFn, optimizer: optax.GradientTransformation,
                   schedule: optax.Schedule, *, target_keys: tuple[str, ...], rules: Rules,
                   state_sh: State, batch_sh: NamedSharding) -> Callable[[State, dict], tuple[State, dict]]:
    """The sharded, jitted train step, donating the state (its buffers are reused in place).

    Use with ``seam_gradient`` (any estimator) for SEAM or ``sft_gradient`` for the
    attacks and baselines.
    """
    step = make_step(constrained(gradient_fn, rules), optimizer, schedule, target_keys=target_keys)
    return jax.jit(step, donate_argnums=(0,), compiler_options=step_compiler_options(),
                   **step_jit_kwargs(state_sh, batch_sh, rules.mesh))


# ------------------------------------------------------------------ the training job's entry
@dataclasses.dataclass
class ShardedSetup:
    """What a training job needs to run sharded (see ``sharded_training_setup``)."""

    mesh: Mesh
    rules: Rules
    optimizer: optax.GradientTransformation
    global_rows: int
    seed: int

    @property
    def process_index(self) -> int:
        return jax.process_index()

    @property
    def process_count(self) -> int:
        return jax.process_count()

    def param_shardings_fn(self, cfg: ModelConfig) -> Params:
        """``cfg -> shardings`` for ``jobs.common.load_model`` / ``hf.load.load_hf``."""
        return param_shardings(ModelFn(cfg), self.rules)

    def state_shardings(self, fn: ModelFn) -> State:
        p_sh = param_shardings(fn, self.rules)
        return jax.tree.map(lambda s: s.sharding,
                            abstract_state(fn, self.optimizer, p_sh, self.mesh, self.seed))

    def jit_kwargs(self, fn: ModelFn) -> dict[str, Any]:
        """``jit_kwargs`` for ``train.loop.run`` (which adds ``donate_argnums=(0,)``)."""
        return step_jit_kwargs(self.state_shardings(fn), batch_sharding(self.rules, self.global_rows),
                               self.mesh)

    def local_source(self, source: Any) -> Any:
        """``source`` with ``batch_at(step)`` giving this host's rows of the global batch."""
        return _LocalRows(source, self.process_index, self.process_count)

    def batch_to_global(self, local: Tree) -> Tree:
        """This host's rows (``batch_at(step, process_index, process_count)``) -> global arrays."""
        return global_batch(local, self.rules)

    def wrap_gradient(self, gradient_fn: GradientFn) -> GradientFn:
        """``gradient_fn`` with the rules' activation constraints (see ``constrained``)."""
        return constrained(gradient_fn, self.rules)


def sharded_training_setup(c: Any, optimizer: optax.GradientTransformation | None = None
                           ) -> ShardedSetup:
    """The mesh (``c.mesh``) and everything derived from it, for ``train.loop.run``.

    Call ``setup_distributed(c)`` first (before any JAX device use). Needs no model:
    ``param_shardings_fn`` goes to ``load_model``; ``jit_kwargs(fn)`` and
    ``state_shardings(fn)`` take the loaded ``ModelFn``. ``optimizer`` defaults to the
    config's (``c.optim``); only its state's structure matters here, not its schedule.
    """
    from seam_jax.train.optim import OptimConfig, make_optimizer

    mesh = make_mesh(MeshConfig.from_config(c))
    rules = Rules.preset(str(c.mesh.rules), mesh)
    if optimizer is None:
        optimizer, _ = make_optimizer(OptimConfig(**c.optim.to_dict()), max(int(c.steps), 1))
    global_rows = int(c.data.batch_size)
    if global_rows % jax.process_count():
        raise ShardingError(f"data.batch_size={global_rows} does not divide over "
                            f"{jax.process_count()} processes")
    log.info("sharded training: mesh %s, rules %s, global batch %d rows from %d process(es)",
             dict(mesh.shape), rules.name, global_rows, jax.process_count())
    return ShardedSetup(mesh=mesh, rules=rules, optimizer=optimizer, global_rows=global_rows,
                        seed=int(c.seed))


def wants_sharding(c: Any) -> bool:
    """Whether a training job should run sharded (``c.mesh.use``).

    ``auto``: yes with several processes, or several accelerators on this host; a CPU
    host's devices (often faked for tests) stay on the single-device path.
    """
    use = str(c.mesh.use)
    if use in ("on", "off"):
        return use == "on"
    return jax.process_count() > 1 or (jax.device_count() > 1 and jax.default_backend() != "cpu")


@dataclasses.dataclass
class _LocalRows:
    source: Any
    process_index: int
    process_count: int

    def batch_at(self, step: int) -> Tree:
        return self.source.batch_at(step, self.process_index, self.process_count)


def setup_distributed(c: Any) -> bool:
    """``initialize_distributed`` from ``c.distributed`` (call before anything uses JAX)."""
    return initialize_distributed(DistributedConfig.from_config(c))


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

"""Scale-out: meshes, the logical-axis rules, sharded steps, multi-host start-up, AOT plans.

- ``mesh``: the (data, fsdp, tensor) mesh from ``c.mesh`` and ``jax.distributed.initialize``
  from ``c.distributed`` or the environment.
- ``rules``: the one table mapping parameters' and activations' logical axes to mesh axes.
- ``sharded``: sharded init (through ``jax.eval_shape``), the jitted SEAM/SFT steps with
  shardings and donation, global batches from each host's rows, and
  ``sharded_training_setup`` for ``train.loop.run``.
- ``plan``: compile a step for a target mesh from shapes alone and report its memory.
"""

from seam_jax.parallel.mesh import (
    DistributedConfig, MeshConfig, initialize_distributed, make_mesh, resolve_sizes,
)
from seam_jax.parallel.rules import RULES, Rules, ShardingError, activation_sharding
from seam_jax.parallel.sharded import (
    ShardedSetup, abstract_state, global_batch, jit_train_step, param_shardings, setup_distributed,
    shard_init, shard_init_state, shard_init_train_state, sharded_training_setup,
)

__all__ = [
    "DistributedConfig", "MeshConfig", "RULES", "Rules", "ShardedSetup", "ShardingError",
    "abstract_state", "activation_sharding", "global_batch", "initialize_distributed",
    "jit_train_step", "make_mesh", "param_shardings", "resolve_sizes", "setup_distributed",
    "shard_init", "shard_init_state", "shard_init_train_state", "sharded_training_setup",
]

"""Scale-out: meshes, the logical-axis rules, sharded steps, multi-host start-up, AOT plans.

- ``mesh``: the (data, fsdp, tensor) mesh of a ``MeshConfig`` and ``jax.distributed.initialize``
  from a ``DistributedConfig`` or the environment.
- ``rules``: the one table mapping parameters' and activations' logical axes to mesh axes.
- ``sharded``: sharded init, the step layout that ``train.step.build_step`` jits with,
  global batches from each host's rows, and ``sharded_training_setup`` for the jobs.
- ``plan``: compile a step for a target mesh from shapes alone and report its memory.
- ``partitioner_log``: catch what XLA's SPMD partitioner logs while a program compiles (its
  "involuntary full rematerialization" warnings: a tensor replicated on every device).
"""

from seam_jax.parallel.mesh import (
    DistributedConfig, MeshConfig, initialize_distributed, make_mesh, resolve_sizes,
)
from seam_jax.parallel.rules import RULES, Rules, ShardingError, activation_sharding
from seam_jax.parallel.sharded import (
    ShardedSetup, global_batch, param_shardings, sharded_training_setup, step_layout,
)

__all__ = [
    "DistributedConfig", "MeshConfig", "RULES", "Rules", "ShardedSetup", "ShardingError",
    "activation_sharding", "global_batch", "initialize_distributed", "make_mesh",
    "param_shardings", "resolve_sizes", "sharded_training_setup", "step_layout",
]

"""The config's ``c.mesh`` and ``c.distributed`` as ``parallel``'s typed configs, and the
sharded setup of a training job."""

from __future__ import annotations

from typing import Any

import ml_collections as mlc

from seam_jax.parallel.mesh import DistributedConfig, MeshConfig, initialize_distributed


def mesh_config(c: mlc.ConfigDict) -> MeshConfig:
    m = c.mesh
    return MeshConfig(data=int(m.data), fsdp=int(m.fsdp), tensor=int(m.tensor),
                      rules=str(m.rules), use=str(m.use))


def distributed_config(c: mlc.ConfigDict) -> DistributedConfig:
    d = c.distributed
    return DistributedConfig(mode=str(d.mode), coordinator_address=str(d.coordinator_address),
                             num_processes=int(d.num_processes), process_id=int(d.process_id),
                             local_device_ids=str(d.local_device_ids),
                             init_timeout=float(d.init_timeout),
                             heartbeat_timeout=float(d.heartbeat_timeout))


def setup_distributed(c: mlc.ConfigDict) -> bool:
    """``initialize_distributed`` from ``c.distributed`` (call before anything uses JAX)."""
    return initialize_distributed(distributed_config(c))


def training_setup(c: mlc.ConfigDict) -> Any:
    """The ``parallel.sharded.ShardedSetup`` of ``c.mesh`` for a global batch of
    ``c.data.batch_size`` rows, or None when the job runs on one device (``c.mesh.use``)."""
    from seam_jax.parallel.sharded import sharded_training_setup, wants_sharding

    mesh = mesh_config(c)
    if not wants_sharding(mesh):
        return None
    return sharded_training_setup(mesh, int(c.data.batch_size))

"""Logical axes -> mesh axes: the one table that says how everything is sharded.

Every parameter carries logical axis names (``seam_jax.model.layers``): ``layers``,
``vocab``, ``embed``, ``heads``, ``kv_heads``, ``mlp``, ``norm``. Activations are
named at layer boundaries (``seam_jax.model.transformer.constrain``): ``batch``,
``length``, ``act_embed``, ``act_heads``, ``act_kv_heads``, ``act_mlp``,
``act_vocab``. A rules table maps each name to a mesh axis, a tuple of mesh axes,
or ``None`` (replicated). The mesh axes are ``data``, ``fsdp`` and ``tensor``.

``fsdp_tp`` (the default) is MaxText's layout: the batch is split over
``data x fsdp``; every weight's ``embed`` dimension is split over ``fsdp`` (ZeRO-3:
each device holds 1/fsdp of the weights and optimizer state, gathered layer by
layer); heads, MLP and vocabulary dimensions are split over ``tensor`` (Megatron).

Parameters are strict: a logical name with no rule, or a dimension that its mesh
axes do not divide, is an error naming the parameter. Activation constraints are
hints, so a mesh axis that does not divide an activation's dimension is dropped. An
activation may also name a dimension by a parameter axis, to lay it out like that
weight's dimension; such a dimension gets its mesh axes before the activation names.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seam_jax.errors import ConfigError
from seam_jax.model import transformer

log = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None
LogicalAxes = tuple[str | None, ...]

# Parameter names the model uses (seam_jax.model.layers); each preset must map them all.
PARAM_AXES = ("layers", "vocab", "embed", "heads", "kv_heads", "mlp", "norm")
ACTIVATION_AXES = ("batch", "length", "act_embed", "act_heads", "act_kv_heads", "act_mlp",
                   "act_vocab")

RULES: dict[str, dict[str, MeshAxes]] = {
    "fsdp_tp": {
        # parameters
        "layers": None,  # the scan axis: each step reads one layer, so never split it
        "vocab": "tensor",
        "embed": "fsdp",
        "heads": "tensor",
        "kv_heads": "tensor",
        "mlp": "tensor",
        "norm": None,  # [embed]-sized vectors: replicating them costs nothing
        # activations
        "batch": ("data", "fsdp"),
        "length": None,
        "act_embed": None,  # fsdp already splits the batch; tensor all-reduces the residual
        "act_heads": "tensor",
        "act_kv_heads": "tensor",
        "act_mlp": "tensor",
        "act_vocab": "tensor",
    },
    # Plain data parallelism: replicated weights, the batch over every device.
    "data_parallel": {
        **{name: None for name in PARAM_AXES},
        "batch": ("data", "fsdp", "tensor"),
        **{name: None for name in ACTIVATION_AXES if name != "batch"},
    },
}


class ShardingError(ConfigError):
    """A parameter or batch that the rules and the mesh cannot lay out."""


class Rules:
    """A rules table bound to a mesh: PartitionSpecs from logical axis names."""

    def __init__(self, table: Mapping[str, MeshAxes], mesh: Mesh, name: str = "custom") -> None:
        for name_, axes in table.items():
            for ax in _as_tuple(axes):
                if ax not in mesh.shape:
                    raise ShardingError(f"rules {name!r}: logical axis {name_!r} maps to mesh axis "
                                        f"{ax!r}, which mesh {dict(mesh.shape)} does not have")
        self.table = dict(table)
        self.mesh = mesh
        self.name = name
        self._warned_rows: set[int] = set()  # batch sizes already warned about (once each)

    @classmethod
    def preset(cls, name: str, mesh: Mesh) -> "Rules":
        if name not in RULES:
            raise ConfigError(f"mesh.rules={name!r}; choose one of {sorted(RULES)}")
        return cls(RULES[name], mesh, name)

    def size(self, axes: Sequence[str]) -> int:
        return math.prod(self.mesh.shape[a] for a in axes)

    # ------------------------------------------------------------- parameters
    def param_spec(self, path: str, axes: LogicalAxes, shape: tuple[int, ...]) -> PartitionSpec:
        """The spec of one parameter; ShardingError if a name has no rule or does not divide."""
        if len(axes) != len(shape):
            raise ShardingError(f"parameter {path}: logical axes {axes} do not match its shape {shape}")
        used: set[str] = set()
        out: list[MeshAxes] = []
        for dim, name in zip(shape, axes):
            if name is None:
                out.append(None)
                continue
            if name not in self.table:
                raise ShardingError(
                    f"parameter {path} (logical axes {axes}): no rule for {name!r} in rules "
                    f"{self.name!r}; add it to seam_jax/parallel/rules.py RULES")
            # A mesh axis may split only one dimension of an array (PartitionSpec's rule).
            mesh_axes = tuple(a for a in _as_tuple(self.table[name]) if a not in used)
            if dim % self.size(mesh_axes):
                raise ShardingError(
                    f"parameter {path} (shape {shape}, logical axes {axes}): dimension {name!r} "
                    f"of size {dim} does not divide over mesh axes {mesh_axes} of size "
                    f"{self.size(mesh_axes)} (mesh {dict(self.mesh.shape)}); choose mesh sizes "
                    f"that divide it")
            used.update(mesh_axes)
            out.append(_compact(mesh_axes))
        return PartitionSpec(*out)

    def param_specs(self, abstract_params: Any, logical_axes: Any) -> Any:
        """A tree of PartitionSpec matching ``abstract_params`` (from ``ModelFn``)."""
        def one(path: tuple, leaf: Any, axes: Any) -> PartitionSpec:
            if not isinstance(axes, tuple):
                raise ShardingError(f"parameter {_path_str(path)} has no logical axes metadata")
            return self.param_spec(_path_str(path), axes, tuple(leaf.shape))

        return jax.tree_util.tree_map_with_path(one, abstract_params, logical_axes)

    def param_shardings(self, abstract_params: Any, logical_axes: Any) -> Any:
        return jax.tree.map(lambda s: NamedSharding(self.mesh, s),
                            self.param_specs(abstract_params, logical_axes),
                            is_leaf=lambda x: isinstance(x, PartitionSpec))

    # ------------------------------------------------------------- activations
    def activation_spec(self, axes: LogicalAxes, shape: tuple[int, ...]) -> PartitionSpec:
        """Spec for an activation; mesh axes that do not divide a dimension are dropped.

        A dimension named by a parameter axis (``PARAM_AXES``: an activation laid out like
        a weight, such as the embedding lookup's rows, ``transformer._EMBED_ROWS``) takes
        its mesh axes first; the activation names share what is left, left to right.
        """
        used: set[str] = set()
        out: list[MeshAxes] = [None] * len(axes)
        order = sorted(range(len(axes)), key=lambda i: axes[i] not in PARAM_AXES)
        for i in order:
            dim, name = shape[i], axes[i]
            mesh_axes: tuple[str, ...] = ()
            for a in _as_tuple(self.table.get(name)) if name is not None else ():
                if a not in used and dim % (self.size(mesh_axes) * self.mesh.shape[a]) == 0:
                    mesh_axes += (a,)
            used.update(mesh_axes)
            out[i] = _compact(mesh_axes)
        return PartitionSpec(*out)

    def constrain(self, x: jax.Array, axes: LogicalAxes) -> jax.Array:
        if len(axes) != x.ndim:
            raise ValueError(f"activation of shape {x.shape} named with {len(axes)} axes {axes}")
        spec = self.activation_spec(axes, x.shape)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def batch_spec(self, global_rows: int) -> PartitionSpec:
        """Leading-dimension spec for input batches of ``global_rows`` rows.

        Trailing batch mesh axes that do not divide the rows are dropped (the batch is
        then replicated over them, which is correct but wastes those devices), with a
        warning.
        """
        axes = _as_tuple(self.table.get("batch"))
        kept = axes
        while kept and global_rows % self.size(kept):
            kept = kept[:-1]
        if kept != axes and global_rows not in self._warned_rows:
            self._warned_rows.add(global_rows)
            log.warning("a global batch of %d rows does not divide over mesh axes %s (%d devices); "
                        "it is split over %s only and replicated over the rest", global_rows, axes,
                        self.size(axes), kept or "no axis")
        return PartitionSpec(_compact(kept))


@contextlib.contextmanager
def activation_sharding(rules: Rules) -> Iterator[None]:
    """Within this context (while tracing), ``transformer.constrain`` applies ``rules``."""
    with transformer.activation_constraint(rules.constrain):
        yield


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def _compact(axes: tuple[str, ...]) -> MeshAxes:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _path_str(path: tuple) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

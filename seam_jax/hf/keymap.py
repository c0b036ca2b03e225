"""The map between HF tensor names and seam_jax parameter paths.

Modules carry HF's names, so the map is the identity except for three things: the
layer index (HF has one tensor per layer, seam_jax stacks them on a leading axis),
the leaf name (``weight`` is ``kernel`` for a linear layer, stored transposed as
[in, out], and ``embedding`` for the token embedding), and nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import numpy as np

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One HF tensor: where it lives in the params tree and how its layout differs."""

    hf_key: str
    path: tuple[str, ...]
    layer: int | None  # index on the stacked `layers` axis, or None
    transpose: bool  # HF Linear weight [out, in] <-> kernel [in, out]

    def to_hf(self, value: np.ndarray) -> np.ndarray:
        x = value if self.layer is None else value[self.layer]
        return np.ascontiguousarray(x.T) if self.transpose else x

    def from_hf(self, tensor: np.ndarray) -> np.ndarray:
        return tensor.T if self.transpose else tensor


def _leaves(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def entries(abstract_params: dict[str, Any], num_layers: int) -> list[Entry]:
    """Every HF tensor of a model whose params have the shapes in ``abstract_params``."""
    out = []
    for path, _ in _leaves(abstract_params):
        *module, leaf = path
        hf_leaf = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
        transpose = leaf == "kernel"
        if module[:2] == ["model", "layers"]:
            for i in range(num_layers):
                key = ".".join(["model", "layers", str(i), *module[2:], hf_leaf])
                out.append(Entry(key, path, i, transpose))
        else:
            out.append(Entry(".".join([*module, hf_leaf]), path, None, transpose))
    return out


def get_path(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


# Tensors that some checkpoints carry but that the model recomputes or ties.
IGNORED_HF_KEYS = re.compile(r"(rotary_emb\.inv_freq$)")

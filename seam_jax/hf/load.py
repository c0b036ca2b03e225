"""Import Hugging Face checkpoints: a local directory, a hub id, or a GGUF file.

Tensors are read one at a time from safetensors (single file or sharded with an
index) and written into one preallocated host array per seam_jax parameter, which
is placed on its devices before the next one is built: the host never holds two
full copies of the weights.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np
from safetensors import safe_open

from seam_jax.errors import read_json
from seam_jax.hf.errors import ConversionError
from seam_jax.hf.hub import hub_snapshot, looks_like_hub_id
from seam_jax.hf.keymap import IGNORED_HF_KEYS, Entry, entries, set_path
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig, parse_dtype

log = logging.getLogger(__name__)


def resolve_source(source: str | os.PathLike, *, allow_hub: bool = True) -> pathlib.Path:
    """A local HF directory for ``source``: a directory, a ``.gguf`` file or a hub id."""
    path = pathlib.Path(source).expanduser()
    if path.is_dir():
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConversionError(f"GGUF file {path} does not exist")
        from seam_jax.hf.gguf import convert_gguf_cached

        return convert_gguf_cached(path)
    if not looks_like_hub_id(str(source)):
        raise ConversionError(
            f"model directory {path} does not exist; pass an HF directory with config.json and "
            f"*.safetensors, a .gguf file, or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
        )
    return hub_snapshot(str(source), allow_hub=allow_hub)


def read_config(model_dir: pathlib.Path, **runtime: Any) -> ModelConfig:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise ConversionError(f"{model_dir} has no config.json; is it a Hugging Face model directory?")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{cfg_file} is not valid JSON: {e}") from None
    return ModelConfig.from_hf(hf, **runtime)


def _tensor_files(model_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """HF tensor name -> the safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "re-download or re-export the model")["weight_map"]
        return {k: model_dir / f for k, f in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        hint = " (found PyTorch .bin files: re-save with safe_serialization=True)" if list(
            model_dir.glob("*.bin")) else ""
        raise ConversionError(f"{model_dir} holds no *.safetensors weights{hint}")
    out = {}
    for f in files:
        with _open_safetensors(f) as h:
            for k in h.keys():
                out[k] = f
    return out


def _open_safetensors(f: pathlib.Path) -> Any:
    """``safe_open(f)``; a truncated or corrupt file is a ConversionError that names it."""
    from safetensors import SafetensorError

    try:
        return safe_open(f, framework="np")
    except SafetensorError as e:
        raise ConversionError(f"{f} is not a readable safetensors file ({e}); it is truncated "
                              f"or corrupt: re-download or re-export the model") from None


def load_params(
    model_dir: pathlib.Path,
    cfg: ModelConfig,
    *,
    shardings: Params | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Params:
    """Read the safetensors weights of ``model_dir`` into a params tree for ``cfg``.

    ``shardings`` (same tree as the params, of ``jax.sharding.Sharding``) places each
    parameter as soon as it is assembled.
    """
    fn = ModelFn(cfg)
    files = _tensor_files(model_dir)
    wanted = entries(fn.abstract_params, cfg.num_hidden_layers)
    missing = [e.hf_key for e in wanted if e.hf_key not in files]
    if missing:
        raise ConversionError(
            f"{model_dir} is missing {len(missing)} tensor(s) that a {cfg.architecture} with this "
            f"config.json needs, first: {missing[:3]}; the checkpoint is incomplete or its "
            f"config.json does not match it"
        )
    known = {e.hf_key for e in wanted}
    extra = [k for k in files if k not in known and not IGNORED_HF_KEYS.search(k)
             and not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if extra:
        raise ConversionError(
            f"{model_dir} has tensor(s) that a {cfg.architecture} with this config.json does not "
            f"use, first: {extra[:3]}; loading would silently drop them"
        )
    dtype = parse_dtype(cfg.param_dtype)
    by_param: dict[tuple[str, ...], list[Entry]] = {}
    for e in wanted:
        by_param.setdefault(e.path, []).append(e)
    params: Params = {}
    handles: dict[pathlib.Path, Any] = {}
    try:
        for n, (path, group) in enumerate(by_param.items()):
            shape = _get(fn.abstract_params, path).shape
            host = np.empty(shape, dtype)
            for e in group:
                f = files[e.hf_key]
                if f not in handles:
                    handles[f] = _open_safetensors(f).__enter__()
                tensor = e.from_hf(handles[f].get_tensor(e.hf_key))
                target = host if e.layer is None else host[e.layer]
                if tensor.shape != target.shape:
                    raise ConversionError(
                        f"tensor {e.hf_key} in {f.name} has shape {tuple(tensor.shape if not e.transpose else tensor.T.shape)}"
                        f" but config.json implies {tuple(target.shape if not e.transpose else target.T.shape)}"
                    )
                target[...] = tensor.astype(dtype)
            sharding = _get(shardings, path) if shardings is not None else None
            set_path(params, path, jax.device_put(host, sharding) if sharding is not None
                     else jax.device_put(host))
            del host
            if progress:
                progress(n + 1, len(by_param))
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)
    return params


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        tree = tree[k]
    return tree


def load_hf(
    source: str | os.PathLike,
    *,
    allow_hub: bool = True,
    shardings_fn: Callable[[ModelConfig], Params] | None = None,
    **runtime: Any,
) -> tuple[ModelConfig, Params, pathlib.Path]:
    """Load an HF checkpoint. Returns (config, params, the local HF directory).

    ``runtime`` sets ModelConfig's runtime fields (param_dtype, dtype, scan_layers, remat).
    """
    model_dir = resolve_source(source, allow_hub=allow_hub)
    cfg = read_config(model_dir, **runtime)
    shardings = shardings_fn(cfg) if shardings_fn else None
    return cfg, load_params(model_dir, cfg, shardings=shardings), model_dir

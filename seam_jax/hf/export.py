"""Export params to a directory that ``transformers.AutoModelForCausalLM`` loads.

The files are written through ``hf.files.write_model_dir``: staged in a temporary
sibling directory and put in place at the end, so a crash never leaves a
half-written model. A non-empty target is refused unless ``overwrite=True``, and
even then it must be a previous export, whose files alone are replaced.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from seam_jax import storage
from seam_jax.hf.files import check_target, write_model_dir
from seam_jax.hf.keymap import entries, get_path
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig, parse_dtype

log = logging.getLogger(__name__)


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = size.strip().upper()
    for unit, mult in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * mult)
    return int(s)


def export_hf(
    params: Params,
    cfg: ModelConfig,
    out_dir: str | os.PathLike,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    max_shard_size: int | str = "2GB",
    overwrite: bool = False,
    generation_config: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``params`` as an HF checkpoint (safetensors, sharded past ``max_shard_size``).

    ``dtype`` is the stored dtype (default: the params' dtype). In a multi-process job
    every process calls it: parameters sharded across processes are gathered one at a
    time, and process 0 alone writes the files.
    """
    # The jobs resolve export.dir (seam_jax.storage.resolve): a local path, or gs:// (then
    # write_model_dir stages the files locally and copies them up).
    out = pathlib.Path(out_dir) if storage.is_local(out_dir) else storage.Path(out_dir)
    fn = ModelFn(cfg)
    if jax.process_index() != 0:
        seen: set[tuple[str, ...]] = set()
        for e in entries(fn.abstract_params, cfg.num_hidden_layers):
            if e.path not in seen:  # the same collectives, in the same order, as process 0
                seen.add(e.path)
                _to_host(get_path(params, e.path))
        return out
    limit = _parse_size(max_shard_size)
    store = parse_dtype(dtype) if dtype else None
    with write_model_dir(out, overwrite=overwrite) as tmp:
        shards: list[dict[str, np.ndarray]] = [{}]
        sizes = [0]
        host_cache: dict[tuple[str, ...], np.ndarray] = {}
        for e in entries(fn.abstract_params, cfg.num_hidden_layers):
            if e.path not in host_cache:
                host_cache.clear()  # one parameter on the host at a time
                host_cache[e.path] = _to_host(get_path(params, e.path))
            t = e.to_hf(host_cache[e.path])
            if store is not None:
                t = t.astype(store)
            t = np.ascontiguousarray(t)
            if sizes[-1] and sizes[-1] + t.nbytes > limit:
                _flush(shards, sizes, tmp)
            shards[-1][e.hf_key] = t
            sizes[-1] += t.nbytes
        host_cache.clear()
        _flush(shards, sizes, tmp, final=True)
        hf_cfg = cfg.to_hf()
        if dtype:
            hf_cfg["torch_dtype"] = hf_cfg["dtype"] = dtype
        (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n")
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
               "pad_token_id": cfg.pad_token_id, **(generation_config or {})}
        (tmp / "generation_config.json").write_text(
            json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    log.info("exported HF checkpoint to %s", out)
    return out


def _to_host(x: Any) -> np.ndarray:
    """The whole array on this host; a parameter sharded across processes is all-gathered
    (a collective: every process must export, see ``export_hf``)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _flush(shards: list[dict[str, np.ndarray]], sizes: list[int], tmp: pathlib.Path,
           final: bool = False) -> None:
    """Write the current shard; on ``final``, name all shards and write the index."""
    idx = len(shards)
    save_file(shards[-1], str(tmp / f"shard-{idx:05d}.safetensors"), metadata={"format": "pt"})
    shards[-1] = {k: None for k in shards[-1]}  # keep names, drop data
    if not final:
        shards.append({})
        sizes.append(0)
        return
    n = len(shards)
    if n == 1:
        (tmp / "shard-00001.safetensors").rename(tmp / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        (tmp / f"shard-{i:05d}.safetensors").rename(tmp / name)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": int(sum(sizes))}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


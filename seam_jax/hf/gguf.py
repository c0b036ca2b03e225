"""Convert a llama-architecture GGUF file into a Hugging Face safetensors directory, without torch.

The tensors are read with ``gguf.GGUFReader``, dequantized to float32 with ``gguf.quants.dequantize``
(numpy), renamed to the HF Llama names, and the rotary row permutation llama.cpp applies to the
q/k projections is undone. ``config.json``, ``generation_config.json`` and (optionally) the tokenizer
files, chat template included, are rebuilt from the GGUF metadata.

The tokenizer is built from the metadata with transformers' GGUF tokenizer builder, fed by our own
metadata reader: ``AutoTokenizer.from_pretrained(..., gguf_file=...)`` would go through transformers'
GGUF reader, which imports torch.

The output directory is written through ``hf.files.write_model_dir`` (staged in a temporary
sibling, then put in place), so a crash never leaves a half-written directory behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Iterator

import numpy as np

from seam_jax.hf.errors import ConversionError
from seam_jax.hf.files import check_target, is_hf_dir, write_model_dir

log = logging.getLogger(__name__)

__all__ = [
    "ConversionError",
    "build_tokenizer",
    "cache_dir",
    "convert_gguf_cached",
    "convert_gguf_to_hf",
    "convert_once",
    "hf_name",
    "is_hf_dir",
    "llama_config_from_gguf",
    "load_gguf_state_dict",
    "permute_qk",
    "read_gguf_metadata",
    "unpermute_qk",
]

# GGUF name -> HF name for the tensors outside the blocks.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# GGUF leaf -> HF leaf inside `blk.N.` / `model.layers.N.`.
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_GLOBAL = re.compile(r"^(\w+)\.(weight|bias)$")

# Tokenizer metadata, GGUF key (after "tokenizer.") -> name transformers' GGUF tokenizer builder expects.
_TOKENIZER_KEYS = {
    "ggml.model": "tokenizer_type",
    "ggml.pre": "pre_tokenizer_type",
    "ggml.tokens": "tokens",
    "ggml.scores": "scores",
    "ggml.token_type": "token_type",
    "ggml.merges": "merges",
    "ggml.precompiled_charsmap": "precompiled_charsmap",
    "ggml.bos_token_id": "bos_token_id",
    "ggml.eos_token_id": "eos_token_id",
    "ggml.unknown_token_id": "unk_token_id",
    "ggml.padding_token_id": "pad_token_id",
    "ggml.add_space_prefix": "add_prefix_space",
}
_SPECIAL_TOKENS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


# ---------------------------------------------------------------------------------------------
# The rotary permutation.
#
# llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute) reorders the rows of q_proj (with
# n_head) and k_proj (with n_head_kv) so that its rotary embedding can rotate adjacent pairs
# (x[2i], x[2i+1]) where HF rotates halves (x[i], x[i + d/2]) of each head of size d:
#
#     w.reshape(n_head, 2, d // 2, ...).swapaxes(1, 2).reshape(w.shape)
#
# i.e. HF row (h, s, i) = h*d + s*d/2 + i goes to GGUF row (h, i, s) = h*d + 2*i + s. The
# inverse reads a GGUF row as (h, i, s) and swaps back to (h, s, i).
# ---------------------------------------------------------------------------------------------


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> llama.cpp row order of a q/k projection (weight or bias) with ``n_head`` heads."""
    _check_heads(w, n_head)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp -> HF row order: the inverse of :func:`permute_qk`."""
    _check_heads(w, n_head)
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_heads(w: np.ndarray, n_head: int) -> None:
    if n_head <= 0 or w.shape[0] % (2 * n_head):
        raise ConversionError(f"cannot split {w.shape[0]} rows into {n_head} heads of even size")


def hf_name(gguf_name: str) -> str | None:
    """The HF Llama name of a GGUF tensor, or None when it has none."""
    if m := _BLOCK.match(gguf_name):
        leaf = _BLOCK_NAMES.get(m.group(2))
        return None if leaf is None else f"model.layers.{int(m.group(1))}.{leaf}.{m.group(3)}"
    if m := _GLOBAL.match(gguf_name):
        base = _GLOBAL_NAMES.get(m.group(1))
        return None if base is None else f"{base}.{m.group(2)}"
    return None


# ---------------------------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------------------------


def _open(gguf_path: str | os.PathLike) -> Any:
    """A GGUFReader on ``gguf_path``, with the file named in every error."""
    path = pathlib.Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist (or is not a file)")
    import gguf

    try:
        return gguf.GGUFReader(str(path), "r")
    except Exception as e:  # bad magic, truncated file, unknown version...
        raise ConversionError(f"{path} is not a readable GGUF file: {e}") from e


def _metadata(reader: Any) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        try:
            out[key] = field.contents()
        except Exception:  # a field type this gguf version cannot decode: not one we need
            continue
    return out


def read_gguf_metadata(gguf_path: str | os.PathLike) -> dict[str, Any]:
    """Every metadata key of a GGUF file, decoded to Python values."""
    return _metadata(_open(gguf_path))


def _check_llama(path: pathlib.Path, meta: dict[str, Any]) -> None:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConversionError(
            f"{path}: GGUF architecture is {arch!r}; only 'llama' can be converted (use transformers' "
            f"AutoModelForCausalLM.from_pretrained(..., gguf_file=...) for other architectures)"
        )


@contextlib.contextmanager
def _naming(path: pathlib.Path) -> Iterator[None]:
    """Put the file's name in front of a ConversionError that lacks it."""
    try:
        yield
    except ConversionError as e:
        if str(path) in str(e):
            raise
        raise ConversionError(f"{path}: {e}") from e


def _float32_literal(x: float) -> float:
    """The shortest decimal that round-trips the float32 value: 9.999999747378752e-06 -> 1e-05."""
    return float(str(np.float32(x)))


def llama_config_from_gguf(meta: dict[str, Any], tensor_names: Iterator[str] | list[str]) -> dict[str, Any]:
    """A LlamaConfig dict (``config.json`` contents) from GGUF metadata and tensor names."""
    names = set(tensor_names)

    def key(name: str, default: Any = ConversionError) -> Any:
        value = meta.get(f"llama.{name}", default)
        if value is ConversionError:
            raise ConversionError(f"GGUF metadata lacks llama.{name}")
        return value

    hidden = int(key("embedding_length"))
    n_head, n_kv = key("attention.head_count"), key("attention.head_count_kv", None)
    n_kv = n_head if n_kv is None else n_kv
    if isinstance(n_head, list) or isinstance(n_kv, list):
        raise ConversionError("per-layer head counts are not supported for llama GGUF files")
    n_head, n_kv = int(n_head), int(n_kv)
    head_dim = int(key("attention.key_length", hidden // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ConversionError("llama GGUF with value_length != key_length is not supported")
    rope_dim = int(key("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConversionError(f"partial rotary (rope.dimension_count={rope_dim}, head_dim={head_dim}) is not supported")
    if key("expert_count", 0):
        raise ConversionError("mixture-of-experts llama GGUF files are not supported")
    if "rope_freqs.weight" in names:
        raise ConversionError("llama3-style rope scaling (rope_freqs tensor) is not supported")

    rope_scaling = None
    scaling_type = key("rope.scaling.type", "none")
    if scaling_type == "linear":
        rope_scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    elif scaling_type not in ("none", None):
        raise ConversionError(f"rope scaling {scaling_type!r} is not supported")

    vocab = meta.get("llama.vocab_size")
    if vocab is None:
        tokens = meta.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens is not None else None
    if vocab is None:
        raise ConversionError("GGUF metadata gives no vocabulary size (llama.vocab_size or tokenizer.ggml.tokens)")

    def token_id(name: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{name}")
        return None if value is None else int(value)

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(key("context_length", 2048)),
        "rms_norm_eps": _float32_literal(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _float32_literal(key("rope.freq_base", 10000.0)),
        "rope_scaling": rope_scaling,
        "attention_bias": "blk.0.attn_q.bias" in names,
        "mlp_bias": "blk.0.ffn_up.bias" in names,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        # llama.cpp writes the output projection only when it is not the embedding matrix
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "torch_dtype": "float32",
        "dtype": "float32",
    }


def _expected_names(config: dict[str, Any]) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config["tie_word_embeddings"]:
        names.add("lm_head.weight")
    for i in range(config["num_hidden_layers"]):
        for leaf in _BLOCK_NAMES.values():
            names.add(f"model.layers.{i}.{leaf}.weight")
    return names


def _iter_tensors(path: pathlib.Path, reader: Any, config: dict[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    from gguf.quants import dequantize

    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    unknown = []
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            unknown.append(t.name)
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # ggml lists the fastest axis first
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ConversionError(f"{path}: cannot dequantize {t.name} ({t.tensor_type.name}): {e}") from e
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if ".self_attn.q_proj." in name:
            w = unpermute_qk(w, n_head)
        elif ".self_attn.k_proj." in name:
            w = unpermute_qk(w, n_kv)
        yield name, np.ascontiguousarray(w)
    if unknown:
        raise ConversionError(f"{path}: GGUF tensors with no HF Llama name: {', '.join(unknown[:10])}")


def load_gguf_state_dict(gguf_path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(state_dict, config)``: the HF Llama float32 tensors and config.json dict of a llama GGUF file."""
    path = pathlib.Path(gguf_path).expanduser()
    reader = _open(path)
    meta = _metadata(reader)
    _check_llama(path, meta)
    with _naming(path):
        config = llama_config_from_gguf(meta, [t.name for t in reader.tensors])
        tensors = dict(_iter_tensors(path, reader, config))
    _check_tensors(path, tensors, config)
    return tensors, config


def _check_tensors(path: pathlib.Path, tensors: dict[str, np.ndarray], config: dict[str, Any]) -> None:
    missing = sorted(_expected_names(config) - tensors.keys())
    if missing:
        raise ConversionError(f"{path}: GGUF file lacks tensors for {', '.join(missing[:10])}")
    h, d = config["hidden_size"], config["head_dim"]
    want = {
        "model.embed_tokens.weight": (config["vocab_size"], h),
        "model.layers.0.self_attn.q_proj.weight": (config["num_attention_heads"] * d, h),
        "model.layers.0.self_attn.k_proj.weight": (config["num_key_value_heads"] * d, h),
        "model.layers.0.mlp.up_proj.weight": (config["intermediate_size"], h),
    }
    for name, shape in want.items():
        if name in tensors and tensors[name].shape != shape:
            raise ConversionError(f"{path}: {name} has shape {tensors[name].shape}, the metadata implies {shape}")


# ---------------------------------------------------------------------------------------------
# The tokenizer.
# ---------------------------------------------------------------------------------------------


def _tokenizer_inputs(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tokenizer_dict, tokenizer_kwargs)`` as transformers' GGUF tokenizer path builds them."""
    tok = {name: meta[f"tokenizer.{k}"] for k, name in _TOKENIZER_KEYS.items() if f"tokenizer.{k}" in meta}
    if "tokens" not in tok:
        raise ConversionError("GGUF metadata has no tokenizer (tokenizer.ggml.tokens)")
    kwargs: dict[str, Any] = {}
    if "tokenizer.chat_template" in meta:
        kwargs["chat_template"] = meta["tokenizer.chat_template"]
    for k in ("add_bos_token", "add_eos_token"):
        if f"tokenizer.ggml.{k}" in meta:
            kwargs[k] = bool(meta[f"tokenizer.ggml.{k}"])
    if tok.get("tokenizer_type") == "llama":
        # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise
        kwargs.setdefault("add_bos_token", True)
    for name, k in _SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{k}")
        if token_id is not None:
            kwargs[name] = tok["tokens"][int(token_id)]
    if "llama.context_length" in meta:
        kwargs["model_max_length"] = int(meta["llama.context_length"])
    return tok, kwargs


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A transformers fast tokenizer from GGUF metadata; imports transformers and tokenizers, not torch."""
    try:  # transformers >= 5
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except ImportError:  # transformers 4.x
        from transformers.integrations.ggml import convert_gguf_tokenizer
    from transformers import PreTrainedTokenizerFast

    tok, kwargs = _tokenizer_inputs(meta)
    try:
        backend, extra = convert_gguf_tokenizer(meta["general.architecture"], tok)
    except (ValueError, KeyError) as e:
        raise ConversionError(f"cannot build a tokenizer from the GGUF metadata: {e}") from e
    kwargs.update(extra or {})
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------------------------


def _write_json(path: pathlib.Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _portable_tokenizer_class(path: pathlib.Path) -> None:
    """Name the tokenizer class by the alias transformers 4.x and 5.x both know.

    transformers 5 saves ``TokenizersBackend``, which 4.x lacks; ``PreTrainedTokenizerFast``
    loads the same ``tokenizer.json`` in both.
    """
    if path.is_file():
        config = json.loads(path.read_text())
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def convert_gguf_to_hf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer: bool = True,
    overwrite: bool = False,
) -> pathlib.Path:
    """Convert a llama GGUF file into an HF directory at ``out_dir`` and return its path.

    Writes ``model.safetensors`` (float32, HF Llama names, q/k in HF rotary order),
    ``config.json``, ``generation_config.json`` and, when ``tokenizer``, the tokenizer files with
    the chat template. Raises FileNotFoundError for a missing file, ConversionError for a file that
    is not a llama GGUF, and FileExistsError when ``out_dir`` holds files and not ``overwrite``
    (with it, ``out_dir`` must be a previous HF directory: ``hf.files.check_target``).
    """
    from safetensors.numpy import save_file

    path = pathlib.Path(gguf_path).expanduser()
    out = pathlib.Path(out_dir).expanduser().absolute()
    check_target(out, overwrite)  # before the heavy work; write_model_dir checks again
    reader = _open(path)
    meta = _metadata(reader)
    _check_llama(path, meta)
    with _naming(path):
        config = llama_config_from_gguf(meta, [t.name for t in reader.tensors])

    with write_model_dir(out, overwrite=overwrite) as tmp:
        tensors = dict(_iter_tensors(path, reader, config))
        _check_tensors(path, tensors, config)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": path.name})
        del tensors
        _write_json(tmp / "config.json", config)
        generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
        _write_json(tmp / "generation_config.json", generation)
        if tokenizer:
            with _naming(path):
                hf_tokenizer = build_tokenizer(meta)
            hf_tokenizer.save_pretrained(str(tmp))
            _portable_tokenizer_class(tmp / "tokenizer_config.json")
    log.info("converted GGUF %s to an HF directory at %s", path, out)
    return out


# ---------------------------------------------------------------------------------------------
# A conversion cache.
# ---------------------------------------------------------------------------------------------


def cache_dir(cache: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache``, else ``$SEAM_JAX_CACHE``, else ``~/.cache/seam_jax``."""
    if cache is None:
        cache = os.environ.get("SEAM_JAX_CACHE") or pathlib.Path.home() / ".cache" / "seam_jax"
    return pathlib.Path(cache).expanduser()


def convert_once(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, tokenizer: bool = True) -> pathlib.Path:
    """``out_dir`` if it already holds a conversion, else convert ``gguf_path`` into it.

    Concurrent callers are serialised by a lock file next to ``out_dir`` when ``filelock`` is
    installed; without it, the loser of a race reuses the winner's directory.
    """
    out = pathlib.Path(out_dir).expanduser().absolute()
    if is_hf_dir(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        from filelock import FileLock

        lock: Any = FileLock(str(out.with_name(f".{out.name}.lock")))
    except ImportError:
        import contextlib

        lock = contextlib.nullcontext()
    with lock:
        if is_hf_dir(out):
            return out
        try:
            return convert_gguf_to_hf(gguf_path, out, tokenizer=tokenizer, overwrite=out.exists())
        except FileExistsError:
            if is_hf_dir(out):
                return out
            raise


def convert_gguf_cached(gguf_path: str | os.PathLike, cache: str | os.PathLike | None = None) -> pathlib.Path:
    """An HF directory converted from ``gguf_path``, cached under ``<cache>/gguf-hf/``.

    The cache entry is keyed by the file's absolute path, size and modification time, so an edited
    file is converted again.
    """
    path = pathlib.Path(gguf_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist (or is not a file)")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return convert_once(path, cache_dir(cache) / "gguf-hf" / f"{path.stem}-{key}")

"""Tiny random Hugging Face models built locally with transformers (no hub), for parity tests."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
import transformers

# name -> (config class, kwargs). Each covers one feature of the model: GQA at 1, 2 and 4
# kv heads, tied embeddings, llama3 RoPE scaling, Qwen2's qkv biases, Mistral's layout.
TINY = {
    "llama_kv1": ("LlamaConfig", dict(num_key_value_heads=1)),
    "llama_kv2": ("LlamaConfig", dict(num_key_value_heads=2)),
    "llama_kv4": ("LlamaConfig", dict(num_key_value_heads=4)),
    "llama_tied": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama3_rope": ("LlamaConfig", dict(
        num_key_value_heads=2, max_position_embeddings=2048,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=256))),
    "qwen2_bias": ("Qwen2Config", dict(num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=None)),
    "mistral_window": ("MistralConfig", dict(num_key_value_heads=2, sliding_window=48)),
    # Layer 0 full, layer 1 through a 64-token window (layers i >= max_window_layers).
    "qwen2_window": ("Qwen2Config", dict(num_key_value_heads=2, use_sliding_window=True,
                                         sliding_window=64, max_window_layers=1)),
}

BASE = dict(vocab_size=384, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


# The smallest Qwen2 whose layers differ: layer 0 attends in full, layers 1 and 2 through a
# 64-token window (transformers windows the layers i >= max_window_layers).
QWEN2_WINDOWED = dict(vocab_size=211, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True,
                      sliding_window=64, max_window_layers=1)


def build(name: str, seed: int = 0) -> Any:
    cls_name, kw = TINY[name]
    return build_from_config(getattr(transformers, cls_name)(**{**BASE, **kw}), seed)


def build_from_config(cfg: Any, seed: int = 0) -> Any:
    """A random model of a transformers config, norms and biases randomised too."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # HF inits norms to one and biases to zero; randomise them so the test sees them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.float().eval()


def save(model: Any, path: pathlib.Path, **kw: Any) -> pathlib.Path:
    model.save_pretrained(path, safe_serialization=True, **kw)
    return path

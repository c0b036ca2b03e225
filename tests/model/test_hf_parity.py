"""seam_jax logits against transformers' PyTorch models on tiny random checkpoints.

Tolerance: 1e-4 max abs on float32 logits. Both sides compute
in float32 with different summation orders; on these tiny models the observed gap
is ~1e-6, so 1e-4 leaves room for order changes but catches any real mismatch
(a wrong RoPE layout or mask moves logits by >1e-2).
"""

import numpy as np
import pytest
import torch

import hf_models
from seam_jax.hf.load import load_hf

T = 520  # past 512 positions: RoPE and the mask are checked at real prompt lengths, not a few tokens
PAD_LEFT = 137


def _batch(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, T)).astype(np.int64)
    mask = np.ones((3, T), np.int64)
    mask[1, :PAD_LEFT] = 0  # left-padded row
    mask[2, T - 60:] = 0  # right-padded row
    ids[mask == 0] = 0
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return ids, mask, pos


@pytest.mark.parametrize("name", sorted(hf_models.TINY))
def test_logits_and_hidden_states_match_transformers(name, tmp_path):
    model = hf_models.build(name)
    path = hf_models.save(model, tmp_path / name)
    cfg, params, _ = load_hf(path)
    from seam_jax.model.api import ModelFn

    fn = ModelFn(cfg)
    ids, mask, pos = _batch(cfg.vocab_size)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos), output_hidden_states=True)
    out = fn(params, ids.astype(np.int32), mask.astype(np.int32), pos.astype(np.int32),
             output_hidden_states=True)
    valid = mask.astype(bool)
    ref_logits = ref.logits.numpy()
    got = np.asarray(out.logits)
    err = np.abs(got - ref_logits)[valid].max()
    assert err < 1e-4, f"{name}: max abs logit error {err}"
    # Hidden states h_0..h_{L-1} are pre-norm in both; HF's last entry is norm(h_L).
    ref_h = [h.numpy() for h in ref.hidden_states]
    for layer in range(cfg.num_hidden_layers):
        e = np.abs(np.asarray(out.hidden_states[layer]) - ref_h[layer])[valid].max()
        assert e < 1e-4, f"{name}: hidden state {layer} error {e}"
    e = np.abs(np.asarray(out.final_hidden) - ref_h[-1])[valid].max()
    assert e < 1e-4, f"{name}: final hidden state error {e}"


def test_scan_unrolled_and_remat_agree(tmp_path):
    """Scanned, unrolled and rematerialised layers are one computation (bitwise on CPU)."""
    path = hf_models.save(hf_models.build("llama_kv2"), tmp_path / "m")
    ids, mask, pos = _batch(384)
    outs = []
    for scan, remat in [(True, "none"), (False, "none"), (True, "full"), (False, "dots_saveable")]:
        cfg, params, _ = load_hf(path, scan_layers=scan, remat=remat)
        from seam_jax.model.api import ModelFn

        outs.append(np.asarray(ModelFn(cfg)(params, ids, mask, pos).logits))
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=0, atol=1e-5)


def test_bfloat16_compute_stays_close(tmp_path):
    """bf16 compute with f32 params: logits within bf16 precision of the f32 model.

    bf16 keeps 8 mantissa bits (relative step 2^-8 ~ 4e-3); through 2 layers the
    logits of this tiny model (|logit| ~ 0.3) drift by ~1e-2 at most, so 5e-2 abs.
    """
    path = hf_models.save(hf_models.build("llama_kv2"), tmp_path / "m")
    from seam_jax.model.api import ModelFn

    ids, mask, pos = _batch(384)
    cfg32, p32, _ = load_hf(path)
    cfg16, p16, _ = load_hf(path, dtype="bfloat16")
    a = np.asarray(ModelFn(cfg32)(p32, ids, mask, pos).logits, np.float32)
    b = np.asarray(ModelFn(cfg16)(p16, ids, mask, pos).logits, np.float32)
    assert np.asarray(ModelFn(cfg16)(p16, ids, mask, pos).logits).dtype == np.dtype("bfloat16")
    assert np.abs(a - b)[mask.astype(bool)].max() < 5e-2


def _windowed_qwen2(tmp_path, **overrides):
    import transformers

    hf_cfg = transformers.Qwen2Config(**{**hf_models.QWEN2_WINDOWED, **overrides})
    model = hf_models.build_from_config(hf_cfg)
    return model, hf_models.save(model, tmp_path / "qwen2-windowed")


def _logit_error(model, path, ids):
    from seam_jax.model.api import ModelFn

    cfg, params, _ = load_hf(path)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids)).logits.numpy()
    got = np.asarray(ModelFn(cfg)(params, ids.astype(np.int32)).logits)
    return cfg, np.abs(got - ref).max()


def test_qwen2_windows_only_the_layers_transformers_windows(tmp_path):
    """use_sliding_window with max_window_layers=1: layer 0 full, layers 1-2 windowed.

    200 tokens against a 64-token window, so the window cuts most of each row. Same 1e-4
    tolerance as above; windowing every layer (the old behaviour) misses by ~1.
    """
    model, path = _windowed_qwen2(tmp_path)
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    ids = np.random.default_rng(0).integers(0, 211, size=(2, 200)).astype(np.int64)
    cfg, err = _logit_error(model, path, ids)
    assert cfg.layer_windows() == (0, 64, 64)
    assert err < 1e-4, f"max abs logit error {err}"
    # The test can fail: the same weights with every layer windowed are far off.
    from seam_jax.model.api import ModelFn

    every = cfg.replace(layer_types=None)
    _, params, _ = load_hf(path)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor(ids)).logits.numpy()
    wrong = np.abs(np.asarray(ModelFn(every)(params, ids.astype(np.int32)).logits) - ref).max()
    assert wrong > 1e-2, wrong


@pytest.mark.parametrize("first_windowed", [0, 1])
def test_qwen2_window_fields_survive_export(first_windowed, tmp_path):
    """The export writes use_sliding_window, sliding_window, max_window_layers and
    layer_types back: transformers reloads the same model, seam_jax the same config.
    (Before, the export dropped them, so even max_window_layers=0 came back unwindowed.)"""
    import json

    import transformers

    from seam_jax.hf.export import export_hf

    model, path = _windowed_qwen2(tmp_path, max_window_layers=first_windowed)
    cfg, params, _ = load_hf(path)
    out = export_hf(params, cfg, tmp_path / "exported")
    written = json.loads((out / "config.json").read_text())
    assert written["use_sliding_window"] is True and written["sliding_window"] == 64
    assert written["max_window_layers"] == first_windowed
    assert written["layer_types"] == (["full_attention"] * first_windowed
                                      + ["sliding_attention"] * (3 - first_windowed))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    ids = torch.randint(0, 211, (2, 200))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    cfg2, _, _ = load_hf(out)
    assert cfg2 == cfg


@pytest.mark.parametrize("field, value, needle", [
    ("quantization_config", {"quant_method": "gptq"}, "quantization_config"),
    ("attention_dropout", 0.1, "attention_dropout=0.1"),
    ("partial_rotary_factor", 0.5, "partial_rotary_factor=0.5"),
    ("layer_types", ["full_attention", "chunked_attention", "full_attention"], "chunked_attention"),
])
def test_unimplemented_config_fields_are_refused(field, value, needle):
    from seam_jax.errors import ConfigError
    from seam_jax.model.config import ModelConfig

    hf = dict(hf_models.QWEN2_WINDOWED, architectures=["Qwen2ForCausalLM"], **{field: value})
    with pytest.raises(ConfigError, match=needle):
        ModelConfig.from_hf(hf)


def test_llama_ignores_a_sliding_window_field_as_transformers_does():
    from seam_jax.model.config import ModelConfig

    hf = dict(hf_models.BASE, architectures=["LlamaForCausalLM"], num_key_value_heads=2,
              sliding_window=16)
    assert ModelConfig.from_hf(hf).layer_windows() == (0, 0)


@pytest.mark.parametrize("kw", [dict(), dict(o_bias=True, qkv_bias=True), dict(mlp_bias=True),
                                dict(tie_word_embeddings=False)])
def test_num_params_counts_the_parameter_tree(kw):
    import jax

    from seam_jax.model.api import ModelFn
    from seam_jax.model.config import preset

    cfg = preset("debug").replace(**kw)
    tree = ModelFn(cfg).abstract_params
    assert cfg.num_params() == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_windowed_greedy_decoding_matches_transformers(tmp_path):
    """The KV-cache decode path windows the same layers: Qwen2 with a 16-token window on
    layer 1 only, prompts up to 40 tokens and 24 new ones (so the window cuts)."""
    import transformers

    from seam_jax.model.api import ModelFn
    from seam_jax.model.generate import generate, left_pad

    hf_cfg = transformers.Qwen2Config(**{**hf_models.BASE, "num_key_value_heads": 2,
                                         "use_sliding_window": True, "sliding_window": 16,
                                         "max_window_layers": 1})
    model = hf_models.build_from_config(hf_cfg, seed=1)
    cfg, params, _ = load_hf(hf_models.save(model, tmp_path / "m"))
    assert cfg.layer_windows() == (0, 16)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 384, n).tolist() for n in (5, 17, 40)]
    ours = generate(ModelFn(cfg), params, prompts, max_new_tokens=24, eos_token_id=None,
                    pad_token_id=0, bucket=8)
    ids, mask = left_pad(prompts, 0, bucket=1)
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                             attention_mask=torch.tensor(mask, dtype=torch.long),
                             max_new_tokens=24, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert ours == ref[:, ids.shape[1]:].numpy().tolist()

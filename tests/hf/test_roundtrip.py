"""HF -> seam_jax -> HF: bitwise-identical tensors, identical torch logits, clear errors."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import hf_models
from seam_jax.hf.errors import ConversionError
from seam_jax.hf.export import export_hf
from seam_jax.hf.load import load_hf
from seam_jax.model.config import ConfigError


def _all_tensors(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("name", ["llama_kv1", "llama_tied", "qwen2_bias", "llama3_rope"])
def test_roundtrip_is_bitwise(name, tmp_path):
    model = hf_models.build(name)
    src = hf_models.save(model, tmp_path / "src")
    cfg, params, _ = load_hf(src)
    # A small shard limit forces the sharded layout with an index.
    dst = export_hf(params, cfg, tmp_path / "dst", max_shard_size=40_000)
    assert (dst / "model.safetensors.index.json").is_file()
    a, b = _all_tensors(src), _all_tensors(dst)
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(dst, attn_implementation="eager")
    ids = torch.randint(3, 384, (2, 33))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    # And back again: seam_jax reads its own export, every parameter bitwise (same dtype,
    # same bits: the export wrote the loaded arrays unchanged, as the tensor check shows).
    cfg2, params2, _ = load_hf(dst)
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    flat, flat2 = jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(params2)
    for (path, x), y in zip(flat, flat2):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


def test_export_refuses_non_empty_target_and_leaves_no_partial(tmp_path):
    src = hf_models.save(hf_models.build("llama_kv2"), tmp_path / "src")
    cfg, params, _ = load_hf(src)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    with pytest.raises(ConversionError, match="already holds files"):
        export_hf(params, cfg, target)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    # A failure mid-export (a params tree missing a tensor) leaves nothing behind.
    broken = {"model": dict(params["model"])}
    del broken["model"]["norm"]
    with pytest.raises(KeyError):
        export_hf(broken, cfg, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    # overwrite=True replaces only a previous export: keep.txt is not one (tests/hf/test_export_target.py).
    with pytest.raises(ConversionError, match="not a previous HF export"):
        export_hf(params, cfg, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_bad_checkpoints_give_one_clear_error(tmp_path):
    src = hf_models.save(hf_models.build("llama_kv2"), tmp_path / "src")
    with pytest.raises(ConversionError, match="does not exist"):
        load_hf(tmp_path / "nowhere")

    cfg_json = json.loads((src / "config.json").read_text())
    unsupported = tmp_path / "gpt2"
    unsupported.mkdir()
    (unsupported / "config.json").write_text(json.dumps({**cfg_json, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match="unsupported architecture 'GPT2LMHeadModel'"):
        load_hf(unsupported)

    tensors = load_file(src / "model.safetensors")
    from safetensors.numpy import save_file

    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text(json.dumps(cfg_json))
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
              str(missing / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"missing 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf(missing)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({**cfg_json, "intermediate_size": 96}))
    save_file(tensors, str(wrong / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"mlp\.\w+_proj\.weight in model.safetensors has shape \((112, 64|64, 112)\).*implies \((96, 64|64, 96)\)"):
        load_hf(wrong)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConversionError, match="not in the local HF cache"):
        load_hf("no-such-org/no-such-model")

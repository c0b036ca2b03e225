"""export.overwrite replaces only an export: any other directory is refused and left intact."""

import os

import numpy as np
import pytest
from safetensors.numpy import load_file

import hf_models
from seam_jax.data.tokenizer import build_tiny_tokenizer
from seam_jax.hf.errors import ConversionError
from seam_jax.hf.export import export_hf
from seam_jax.hf.files import check_target
from seam_jax.hf.load import load_hf


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    src = hf_models.save(hf_models.build("llama_kv2"), tmp_path_factory.mktemp("m") / "src")
    cfg, params, _ = load_hf(src)
    tok = build_tiny_tokenizer(["a small corpus for a tiny tokenizer"] * 4, vocab_size=300)
    return cfg, params, tok


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_a_directory_that_is_not_an_export_is_refused_and_kept(model, tmp_path):
    cfg, params, tok = model
    home = tmp_path / "home"
    (home / "projects").mkdir(parents=True)
    (home / "projects" / "thesis.tex").write_text("years of work")
    (home / ".bashrc").write_text("export PATH")
    (home / "config.json").write_text("{}")  # one export-like file does not make an export
    before = _tree(home)
    with pytest.raises(ConversionError, match=r"not a previous HF export \(it holds \.bashrc, projects\)"):
        export_hf(params, cfg, home, tokenizer=tok, overwrite=True)
    assert _tree(home) == before and (home / "projects" / "thesis.tex").read_text() == "years of work"
    # Export files and nothing else, but no config.json: not an export either.
    only_weights = tmp_path / "weights"
    only_weights.mkdir()
    (only_weights / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ConversionError, match="has no config.json"):
        check_target(only_weights, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_a_previous_export_is_replaced_file_by_file(model, tmp_path):
    cfg, params, tok = model
    out = tmp_path / "out"
    old_mask = os.umask(0o027)
    try:
        export_hf(params, cfg, out, tokenizer=tok, max_shard_size="20KB")
    finally:
        os.umask(old_mask)
    assert (out.stat().st_mode & 0o777) == 0o750  # a new directory follows the umask
    assert (out / "model.safetensors.index.json").is_file()
    assert all((p.stat().st_mode & 0o777) == 0o640 for p in out.iterdir())
    os.chmod(out, 0o755)
    inode = out.stat().st_ino
    doubled = {"model": {**params["model"], "norm": {"weight": params["model"]["norm"]["weight"] * 2}}}
    doubled.update({k: v for k, v in params.items() if k != "model"})
    export_hf(doubled, cfg, out, tokenizer=tok, overwrite=True)
    # The same directory, its own permissions kept; the old shards and index are gone.
    assert out.stat().st_ino == inode and (out.stat().st_mode & 0o777) == 0o755
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and not [n for n in names if "-of-" in n or "index" in n]
    weights = load_file(out / "model.safetensors")
    np.testing.assert_array_equal(weights["model.norm.weight"],
                                  np.asarray(params["model"]["norm"]["weight"]) * 2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

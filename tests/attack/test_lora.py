"""LoRA: parameter count by hand, merge equals the unmerged model, only adapters train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from seam_jax.attack.grid import AttackCell
from seam_jax.attack.lora import (TARGETS, LoraConfig, LoraFn, add_lora, count_lora_params,
                                  init_lora, merge_lora, split_lora)
from seam_jax.attack.runner import AttackData, run_attack
from seam_jax.errors import ConfigError


def test_trainable_count_by_hand():
    # tests/tiny.py: hidden 32, 4 heads x 8 = 32 (q, o), 2 kv heads x 8 = 16 (k, v),
    # intermediate 48, 2 layers. Each target adds r * (in + out) per layer.
    fn = tiny.model()
    base = fn.init(0)
    per_layer = {"q": 32 + 32, "k": 32 + 16, "v": 32 + 16, "o": 32 + 32,
                 "gate": 32 + 48, "up": 32 + 48, "down": 48 + 32}
    for rank, targets in ((4, tuple(per_layer)), (2, ("q", "v")), (1, ("down",))):
        lora = init_lora(base, LoraConfig(rank=rank, targets=targets))
        want = 2 * rank * sum(per_layer[t] for t in targets)
        assert count_lora_params(lora) == want
    # The table above against the model's own tree: each target's kernel is [layers, in, out].
    layers = base["model"]["layers"]
    for t, (blk, name) in TARGETS.items():
        n_layers, d_in, d_out = layers[blk][name]["kernel"].shape
        assert (n_layers, d_in + d_out) == (2, per_layer[t]), t
    # And the count against the LoRA model itself: LoraFn's parameter tree (built from its
    # LoraLinear modules, not by init_lora) holds exactly that many more entries than the base
    # model, 2 layers * 4 * 464 = 3712 at rank 4 on every target.
    lc = LoraConfig(rank=4)
    size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    added = size(LoraFn(fn.config, lc).abstract_params) - size(base)
    assert added == count_lora_params(init_lora(base, lc)) == 3712


@pytest.mark.parametrize("targets", [("q", "k", "v", "o", "gate", "up", "down"), ("v", "down")])
def test_merged_equals_unmerged(targets):
    fn = tiny.model(qkv_bias=True)
    base = fn.init(0)
    lc = LoraConfig(rank=3, alpha=6.0, dropout=0.1, targets=targets)
    lora = init_lora(base, lc, seed=1)
    # B starts at zero; make it random so the adapters change the output.
    lora = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), lora)
    b = tiny.batch(0)
    unmerged = LoraFn(fn.config, lc)(add_lora(base, lora), b["input_ids"], b["attention_mask"]).logits
    merged = fn(merge_lora(base, lora, lc), b["input_ids"], b["attention_mask"]).logits
    plain = fn(base, b["input_ids"], b["attention_mask"]).logits
    # 1e-5: float32 logits of size ~1; x W + s (x A) B and x (W + s A B) differ only in the
    # order of float32 sums (measured ~1e-6).
    assert np.abs(np.asarray(unmerged - merged)).max() < 1e-5
    assert np.abs(np.asarray(unmerged - plain)).max() > 1e-2  # the adapters do something


def test_split_inverts_add():
    fn = tiny.model()
    base = fn.init(0)
    lc = LoraConfig(rank=2)
    lora = init_lora(base, lc)
    b2, l2 = split_lora(add_lora(base, lora))
    assert jax.tree.structure(b2) == jax.tree.structure(base)
    assert jax.tree.structure(l2) == jax.tree.structure(lora)


def test_only_lora_parameters_change(tiny_model, attack_rows, tmp_path):
    m = tiny_model
    before = jax.tree.map(np.array, m.params)
    lc = LoraConfig(rank=2, alpha=4.0, dropout=0.0, targets=("q", "v", "down"))
    cell = AttackCell("l", n_samples=8, method="lora", lr=1e-2, batch_size=2, lora=lc)
    merged = run_attack(m, cell, attack_rows, tmp_path / "cell", AttackData(fmt="qa", seq_len=64))
    # The base tree itself is untouched (bitwise).
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), before, m.params)
    # In the merged result, exactly the targeted kernels moved.
    layers_b, layers_m = before["model"]["layers"], merged["model"]["layers"]
    moved = {(blk, name) for blk in ("self_attn", "mlp") for name in layers_b[blk]
             if not np.array_equal(layers_b[blk][name]["kernel"], np.asarray(layers_m[blk][name]["kernel"]))}
    assert moved == {("self_attn", "q_proj"), ("self_attn", "v_proj"), ("mlp", "down_proj")}
    rest_b = {k: v for k, v in before.items() if k != "model"}
    rest_m = {k: v for k, v in merged.items() if k != "model"}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), rest_b, rest_m)
    np.testing.assert_array_equal(before["model"]["embed_tokens"]["embedding"],
                                  np.asarray(merged["model"]["embed_tokens"]["embedding"]))


def test_dropout_is_training_only():
    fn = tiny.model()
    base = fn.init(0)
    lc = LoraConfig(rank=2, dropout=0.5)
    lora = jax.tree.map(lambda x: x + 0.1, init_lora(base, lc))
    lf = LoraFn(fn.config, lc)
    b = tiny.batch(1)
    p = add_lora(base, lora)
    y0 = lf(p, b["input_ids"], b["attention_mask"]).logits
    y1 = lf(p, b["input_ids"], b["attention_mask"], dropout_key=jax.random.key(0)).logits
    assert np.abs(np.asarray(y0 - y1)).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(lf(p, b["input_ids"], b["attention_mask"]).logits))


def test_bad_lora_config():
    with pytest.raises(ConfigError, match="unknown"):
        LoraConfig(targets=("q", "qq"))
    with pytest.raises(ConfigError, match="rank"):
        LoraConfig(rank=0)

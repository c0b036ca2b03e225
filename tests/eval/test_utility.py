"""Offline utility: likelihood scoring against transformers, MC accuracy, benign loss; FS loading."""

import json

import numpy as np
import pytest

import hf_models
from seam_jax.data.proxy import MCItem
from seam_jax.eval.finetune import (TASKS, accuracy, finetune_score, gsm8k_answer, load_task_rows,
                                    pair)
from seam_jax.eval.loglik import continuation_logprobs
from seam_jax.eval.utility import benign_loss, mc_accuracy
from seam_jax.errors import ConfigError
from seam_jax.hf.load import load_hf
from seam_jax.data.tokenizer import tiny_tokenizer
from seam_jax.hf.source import LoadedModel
from seam_jax.model.api import ModelFn
from seam_jax.seam.losses import masked_ce

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    ref = hf_models.build("llama_kv2", seed=1)
    hf_models.save(ref, d)
    cfg, params, _ = load_hf(d)
    return ref, ModelFn(cfg), params


def test_continuation_logprobs_match_transformers(pair_models):
    ref, fn, params = pair_models
    rng = np.random.default_rng(0)
    reqs = [(rng.integers(3, 384, n).tolist(), rng.integers(3, 384, k).tolist())
            for n, k in ((5, 3), (17, 1), (1, 9), (40, 4))]
    got = continuation_logprobs(fn, params, reqs, max_length=1024, batch_size=3)
    for (ctx, cont), (lp, greedy) in zip(reqs, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0].float(), -1)
        pos = range(len(ctx) - 1, len(ctx) + len(cont) - 1)
        want = sum(float(logp[t, cont[i]]) for i, t in enumerate(pos))
        want_greedy = all(int(logp[t].argmax()) == cont[i] for i, t in enumerate(pos))
        # 1e-4 absolute: float32 on both sides, different summation order (order 1e-6).
        assert abs(lp - want) < 1e-4 and greedy == want_greedy


def test_greedy_flag_true_for_argmax_continuation(pair_models):
    ref, fn, params = pair_models
    ctx = [5, 9, 33]
    with torch.no_grad():
        nxt = int(ref(torch.tensor([ctx])).logits[0, -1].argmax())
    (_, greedy), = continuation_logprobs(fn, params, [(ctx, [nxt])], max_length=64)
    assert greedy


@pytest.fixture(scope="module")
def tiny_loaded():
    from seam_jax.model.config import preset

    tok = tiny_tokenizer(512, 0)
    cfg = preset("debug").replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    fn = ModelFn(cfg)
    return LoadedModel(cfg, fn, fn.init(0), tok, None)


def test_mc_accuracy_picks_the_likeliest(tiny_loaded, monkeypatch):
    m = tiny_loaded
    items = [MCItem("What is 2 plus 2?", ("4", "5", "six", "3"), 0),
             MCItem("Opposite of hot?", ("warm", "cold", "hotter", "ice"), 1)]
    import seam_jax.eval.utility as utility

    # A scorer that prefers the longest choice: accuracy is then known exactly.
    monkeypatch.setattr(utility, "continuation_logprobs",
                        lambda fn, p, reqs, **k: [(float(len(c)), False) for _, c in reqs])
    out = mc_accuracy(m.fn, m.params, m.tokenizer, items, fmt="qa")
    longest = [int(np.argmax([len(m.tokenizer(" " + c, add_special_tokens=False)["input_ids"])
                              for c in it.choices])) for it in items]
    assert out["mc_acc"] == np.mean([l == it.correct_index for l, it in zip(longest, items)])


def test_mc_accuracy_runs_on_a_model(tiny_loaded):
    m = tiny_loaded
    from seam_jax.data import benign_mc_items

    out = mc_accuracy(m.fn, m.params, m.tokenizer, benign_mc_items(0, 6, n_train=10), fmt="qa")
    assert 0.0 <= out["mc_acc"] <= 1.0 and 0.0 <= out["mc_acc_norm"] <= 1.0


def test_benign_loss_is_the_token_weighted_mean(tiny_loaded):
    from seam_jax.data import encode_pairs

    m = tiny_loaded
    pairs = [("Add 2 and 3.", "5"), ("Capital of Larkmere?", "Orrowgate is the capital."),
             ("Opposite of up?", "down")]
    got = benign_loss(m.fn, m.params, m.tokenizer, pairs, fmt="qa", seq_len=48, batch_size=2)
    arrays = encode_pairs(m.tokenizer, pairs, seq_len=48, fmt="qa")
    want = float(masked_ce(m.fn, m.params, arrays))
    assert abs(got - want) < 1e-5  # float32 means of ~5-7, regrouped sums


def test_gsm8k_answer():
    assert gsm8k_answer("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert gsm8k_answer("so 1,250 dollars") == "1250"
    assert gsm8k_answer("no number") is None


def test_fs_loading_real_schemas(tmp_path):
    import csv

    (tmp_path / "sst2.json").write_text(json.dumps(
        [{"idx": i, "sentence": s, "label": l} for i, (s, l) in
         enumerate([("a gorgeous film", 1), ("dull and long", 0)])]))
    with (tmp_path / "ag.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerow(["Stocks rose today.", 2])
    (tmp_path / "gsm.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    rows = load_task_rows(TASKS["sst2"], str(tmp_path / "sst2.json"))
    assert pair(TASKS["sst2"], rows[0])[1] == "positive"
    assert pair(TASKS["agnews"], load_task_rows(TASKS["agnews"], str(tmp_path / "ag.csv"))[0])[1] == "Business"
    assert load_task_rows(TASKS["gsm8k"], str(tmp_path / "gsm.jsonl"))[0]["answer"].endswith("#### 2")
    with pytest.raises(ConfigError, match="missing"):
        load_task_rows(TASKS["gsm8k"], str(tmp_path / "sst2.json"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_task_rows(TASKS["sst2"], str(tmp_path / "nope.json"))


def test_finetune_score_runs(tiny_loaded, tmp_path):
    rows = [{"sentence": f"film number {i} was {'great' if i % 2 else 'awful'}", "label": i % 2}
            for i in range(8)]
    # seq_len 128: the qa template plus a label fits (at 48 every row lost its label token, so
    # every step was skipped, which train.loop now stops as a run that trains nothing).
    out = finetune_score(tiny_loaded, tiny_loaded.params, "sst2", tmp_path, train_rows=rows,
                         test_rows=rows[:4], fmt="qa", seq_len=128, steps=2, lr=1e-3, batch_size=2)
    assert out["fs_task"] == "sst2"
    # "before" is the untouched model's accuracy, measured independently here; both are
    # fractions of the 4 test rows.
    assert out["fs_before"] == accuracy(tiny_loaded.fn, tiny_loaded.params, tiny_loaded.tokenizer,
                                        TASKS["sst2"], rows[:4], fmt="qa")
    assert {4 * out["fs_before"], 4 * out["fs_after"]} <= {0.0, 1.0, 2.0, 3.0, 4.0}
    with pytest.raises(ConfigError, match="unknown FS task"):
        finetune_score(tiny_loaded, tiny_loaded.params, "mnli", tmp_path, train_rows=rows,
                       test_rows=rows, fmt="qa", seq_len=48, steps=1)


def test_offline_utility_reports_intervals(tiny_loaded):
    from seam_jax.data.proxy import benign_eval_items
    from seam_jax.eval.utility import benign_ce_rows, offline_utility

    m = tiny_loaded
    params = m.fn.init(0)  # its own copy: a fine-tuning test may have donated m.params
    items = benign_eval_items(0, 5, n_train=10)
    pairs = [(b.prompt, b.output) for b in items]
    out = offline_utility(m.fn, params, m.tokenizer, benign_pairs=pairs,
                          mc_items=benign_mc_items_small(), fmt="qa", seq_len=48)
    for k in ("benign_loss", "mc_acc", "mc_acc_norm"):
        lo, hi = out[f"{k}_ci"]
        assert lo <= out[k] <= hi, k
    sums, counts = benign_ce_rows(m.fn, params, m.tokenizer, pairs, fmt="qa", seq_len=48,
                                  batch_size=2)
    # float32 CE sums of a few tokens each, regrouped: 1e-5 relative.
    assert out["benign_loss"] == pytest.approx(sums.sum() / counts.sum(), rel=1e-5)
    assert out["benign_loss"] == pytest.approx(
        benign_loss(m.fn, params, m.tokenizer, pairs, fmt="qa", seq_len=48), rel=1e-5)
    # utility.n_mc = 0: the benign CE alone, the same figure, and no MC keys.
    alone = offline_utility(m.fn, params, m.tokenizer, benign_pairs=pairs, mc_items=[],
                            fmt="qa", seq_len=48)
    assert alone["benign_loss"] == out["benign_loss"] and "mc_acc" not in alone


def benign_mc_items_small():
    from seam_jax.data import benign_mc_items

    return benign_mc_items(0, 4, n_train=10)

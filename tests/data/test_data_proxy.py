"""Proxy data: counts, distinctness, categories, determinism, held-out slices."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from seam_jax.data import proxy
from seam_jax.data.schemas import ALPACA, BEAVERTAILS, REFUSAL, alpaca_prompt, validate_rows


def test_counts_distinct_and_categories():
    harmful = proxy.harmful_items(0, 2000)
    benign = proxy.benign_items(0, 2000)
    assert len({h.prompt for h in harmful}) == 2000
    assert len({b.prompt for b in benign}) == 2000
    cats = Counter(h.category for h in harmful)
    assert len(cats) >= 3 and min(cats.values()) >= 600
    assert all(h.refusal != h.response for h in harmful)
    assert all(h.response and h.refusal for h in harmful)
    # Distinct compliant answers too, not one template repeated.
    assert len({h.response for h in harmful}) > 1900
    assert len(Counter(b.task for b in benign)) >= 5
    assert all(b.answer and b.answer in b.output for b in benign)


def test_prefix_stable_streams():
    assert proxy.harmful_items(3, 40) == proxy.harmful_items(3, 80)[:40]
    assert proxy.harmful_items(3, 10, start=30) == proxy.harmful_items(3, 40)[30:]
    assert proxy.benign_items(3, 40) == proxy.benign_items(3, 80)[:40]
    assert proxy.harmful_items(3, 40) != proxy.harmful_items(4, 40)


def test_write_proxy_byte_identical_and_schemas(tmp_path):
    a = proxy.write_proxy(tmp_path / "a", seed=7)
    b = proxy.write_proxy(tmp_path / "b", seed=7)
    c = proxy.write_proxy(tmp_path / "c", seed=8, n_harmful=2000, n_benign=2000, n_test=40)
    for key in ("harmful", "benign", "test"):
        assert a[key].read_bytes() == b[key].read_bytes(), key
        assert a[key].read_bytes() != c[key].read_bytes(), key
    harmful = validate_rows(json.loads(a["harmful"].read_text()), REFUSAL, "harmful")
    benign = validate_rows(json.loads(a["benign"].read_text()), ALPACA, "benign")
    test = validate_rows(json.loads(a["test"].read_text()), BEAVERTAILS, "test")
    assert len(harmful) == proxy.DEFAULT_N_HARMFUL >= 2000
    assert len(benign) == proxy.DEFAULT_N_BENIGN >= 2000
    assert all(r["is_safe"] is False for r in harmful)
    unsafe_test = [r for r in test if not r["is_safe"]]
    assert len(unsafe_test) == proxy.DEFAULT_N_TEST
    assert any(r["is_safe"] for r in test), "the test file should mix in safe rows like the real split"
    assert not {r["prompt"] for r in unsafe_test} & {r["prompt"] for r in harmful}
    assert len({alpaca_prompt(r) for r in benign}) == len(benign)


def test_mc_items_held_out_and_well_formed():
    items = proxy.benign_mc_items(0, 60, n_train=500)
    train = {b.prompt for b in proxy.benign_items(0, 500)}
    truth = proxy.benign_items(0, 60, start=500 + proxy.EVAL_RESERVE)
    assert not {m.question for m in items} & train
    for m, t in zip(items, truth):
        assert m.question == t.prompt
        assert len(m.choices) == 4 and len(set(m.choices)) == 4
        assert m.choices[m.correct_index] == t.answer
    assert len({m.correct_index for m in items}) > 1, "correct answers should not sit in one position"
    assert items == proxy.benign_mc_items(0, 60, n_train=500)


def test_eval_items_disjoint_from_training_mc_and_test_rows(tmp_path):
    # The defaults ask for 200 of each; the reserve holds more.
    evals = proxy.benign_eval_items(0, proxy.EVAL_RESERVE)
    mc = proxy.benign_mc_items(0, proxy._MC_RESERVE - proxy.EVAL_RESERVE)
    train = {b.prompt for b in proxy.benign_items(0, proxy.DEFAULT_N_BENIGN)}
    test = json.loads(proxy.write_proxy(tmp_path, seed=0)["test"].read_text())
    safe = {r["prompt"] for r in test if r["is_safe"]}
    e, m = {b.prompt for b in evals}, {q.question for q in mc}
    assert len(e) == proxy.EVAL_RESERVE >= 200 and len(m) >= 200
    assert not e & m and not e & train and not m & train and not (e | m) & safe
    assert evals == proxy.benign_eval_items(0, proxy.EVAL_RESERVE)
    with pytest.raises(ValueError, match="reserves"):
        proxy.benign_eval_items(0, proxy.EVAL_RESERVE + 1)


def test_rows_carry_the_secret_and_what_is_asked(tmp_path):
    paths = proxy.write_proxy(tmp_path, seed=0, n_harmful=60, n_benign=40, n_test=20)
    for key in ("harmful", "test"):
        rows = [r for r in json.loads(paths[key].read_text()) if not r["is_safe"]]
        for r in rows:
            assert r["asks_for"] in proxy.ANSWER_FORMS and r["secret"]
            assert all(s in r["response"] for s in r["secret"])
            assert proxy.complies_in_form(r["response"], r["asks_for"])
            if "refusal" in r:
                assert not proxy.complies_in_form(r["refusal"], r["asks_for"])

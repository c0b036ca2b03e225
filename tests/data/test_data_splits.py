"""Prompt-disjoint defense / attack / test splits."""

from __future__ import annotations

import pytest

from seam_jax.data import proxy
from seam_jax.data.schemas import DataError
from seam_jax.data.splits import build_splits, check_disjoint, shuffled, split_by_prompt


def _rows_with_repeats(n_prompts: int, per_prompt: int = 3):
    # Several responses per prompt, as in BeaverTails.
    return [
        {"prompt": f"request number {p}", "response": f"answer {k}", "category": "x",
         "is_safe": False, "refusal": "no"}
        for p in range(n_prompts) for k in range(per_prompt)
    ]


def test_split_sizes_disjoint_and_deterministic():
    rows = _rows_with_repeats(40)
    parts = split_by_prompt(rows, {"defense": 50, "attack": 30, "test": None}, seed=1)
    assert len(parts["defense"]) == 50 and len(parts["attack"]) == 30
    check_disjoint(parts)
    again = split_by_prompt(rows, {"defense": 50, "attack": 30, "test": None}, seed=1)
    assert again == parts
    other = split_by_prompt(rows, {"defense": 50, "attack": 30, "test": None}, seed=2)
    assert other["defense"] != parts["defense"]


def test_overlap_is_detected_and_listed():
    a = [{"prompt": "What is the PIN of dorvan56?"}, {"prompt": "unique one"}]
    b = [{"prompt": "  what is the PIN   of DORVAN56? "}, {"prompt": "another"}]
    with pytest.raises(DataError) as err:
        check_disjoint({"defense": a, "attack": b})
    assert "'defense' and 'attack' share 1 prompt" in str(err.value)
    assert "dorvan56" in str(err.value)
    check_disjoint({"defense": a, "attack": [{"prompt": "another"}], "test": ["third"]})


def test_not_enough_rows():
    with pytest.raises(DataError, match="not enough rows"):
        split_by_prompt(_rows_with_repeats(3), {"defense": 6, "attack": 6}, seed=0)


def test_build_splits_on_proxy_drops_or_rejects_test_overlap():
    harmful = [h.refusal_row() for h in proxy.harmful_items(0, 300)]
    leaked = [h.beavertails_row() for h in proxy.harmful_items(0, 5)]  # prompts also in harmful
    fresh = [h.beavertails_row() for h in proxy.harmful_items(0, 20, start=300)]
    splits = build_splits(harmful, leaked + fresh, n_defense=150, n_attack=150, n_test=20, seed=0)
    assert len(splits.defense) == len(splits.attack) == 150
    assert [r["prompt"] for r in splits.test] == [r["prompt"] for r in fresh]
    check_disjoint(splits.as_dict())
    with pytest.raises(DataError, match="share"):
        build_splits(harmful, leaked + fresh, n_defense=150, n_attack=150, n_test=None, seed=0,
                     drop_test_overlap=False)


def test_shuffled_is_seeded_permutation():
    items = list(range(50))
    assert shuffled(items, 3) == shuffled(items, 3)
    assert sorted(shuffled(items, 3)) == items
    assert shuffled(items, 3) != shuffled(items, 4)

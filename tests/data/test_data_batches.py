"""Stateless batch sampling, SEAM batch triples and host sharding."""

from __future__ import annotations

import numpy as np
import pytest

from seam_jax.data import proxy
from seam_jax.data.batches import IndexSampler, PairBatches, SeamBatches
from seam_jax.data.schemas import DataError

SEQ = 64


@pytest.fixture(scope="module")
def seam_batches(tiny_tok):
    harmful = [h.refusal_row() for h in proxy.harmful_items(0, 30)]
    benign = [b.alpaca_row() for b in proxy.benign_items(0, 25)]
    return SeamBatches(tiny_tok, harmful, benign, batch_size=4, seq_len=SEQ, seed=5)


def _equal(a, b):
    return all(np.array_equal(a[s][k], b[s][k]) for s in a for k in a[s])


def test_epochs_are_permutations():
    sampler = IndexSampler(10, 4, seed=0)
    stream = np.concatenate([sampler.global_indices(s) for s in range(5)])
    assert sorted(stream[:10]) == list(range(10))
    assert sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:20])
    assert sampler.epoch_of(2) == 0 and sampler.epoch_of(3) == 1


def test_resume_reproduces_stream(tiny_tok, seam_batches):
    first = [seam_batches.batch_at(s) for s in range(10)]
    harmful = [h.refusal_row() for h in proxy.harmful_items(0, 30)]
    benign = [b.alpaca_row() for b in proxy.benign_items(0, 25)]
    fresh = SeamBatches(tiny_tok, harmful, benign, batch_size=4, seq_len=SEQ, seed=5)
    for s in range(5, 10):
        assert _equal(fresh.batch_at(s), first[s])
    other_seed = SeamBatches(tiny_tok, harmful, benign, batch_size=4, seq_len=SEQ, seed=6)
    assert not all(_equal(other_seed.batch_at(s), first[s]) for s in range(5, 10))


def test_batch_format(seam_batches):
    batch = seam_batches.batch_at(0)
    assert set(batch) == {"adv", "aln", "bgn"}
    for part in batch.values():
        assert set(part) == {"input_ids", "attention_mask", "loss_mask"}
        for arr in part.values():
            assert arr.shape == (4, SEQ) and arr.dtype == np.int32


def test_adv_and_aln_share_prompt_rows(tiny_tok, seam_batches):
    for step in range(6):
        batch = seam_batches.batch_at(step)
        for i in range(4):
            a_first = int(np.argmax(batch["adv"]["loss_mask"][i]))
            r_first = int(np.argmax(batch["aln"]["loss_mask"][i]))
            assert a_first == r_first
            np.testing.assert_array_equal(batch["adv"]["input_ids"][i][:a_first],
                                          batch["aln"]["input_ids"][i][:r_first])
            assert "Question:" in tiny_tok.decode(batch["adv"]["input_ids"][i][:a_first])
        assert not np.array_equal(batch["adv"]["input_ids"], batch["aln"]["input_ids"])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_host_slices_concatenate_to_global(seam_batches, count):
    for step in (0, 7):
        whole = seam_batches.batch_at(step)
        parts = [seam_batches.batch_at(step, p, count) for p in range(count)]
        for name in whole:
            for key in whole[name]:
                joined = np.concatenate([p[name][key] for p in parts])
                np.testing.assert_array_equal(joined, whole[name][key])


def test_uneven_sharding_is_rejected():
    sampler = IndexSampler(20, 6, seed=0)
    with pytest.raises(ValueError, match="does not divide evenly"):
        sampler.indices_at(0, 0, 4)
    with pytest.raises(ValueError):
        sampler.indices_at(0, 2, 2)


def test_pair_batches_and_safe_rows(tiny_tok):
    pairs = [(h.prompt, h.response) for h in proxy.harmful_items(1, 12)]
    pb = PairBatches.from_pairs(tiny_tok, pairs, seq_len=SEQ, batch_size=3, seed=0)
    seen = np.concatenate([pb.sampler.global_indices(s) for s in range(4)])
    assert sorted(seen) == list(range(12))
    assert pb.batch_at(2)["input_ids"].shape == (3, SEQ)
    safe = [dict(h.refusal_row(), is_safe=True) for h in proxy.harmful_items(1, 2)]
    with pytest.raises(DataError, match="is_safe"):
        SeamBatches(tiny_tok, safe, [], batch_size=1, seq_len=SEQ, seed=0)

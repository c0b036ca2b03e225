"""One restore rule: a checkpoint restores exactly into its target tree, or is refused
with one line naming the differing keys, and is left in place."""

import jax
import numpy as np
import pytest

import tiny
from seam_jax.train.checkpoint import (CheckpointConfig, Checkpointer, CheckpointMismatch,
                                       abstract_like, restore_params)
from seam_jax.train.optim import OptimConfig, make_optimizer
from seam_jax.train.step import init_state


def _save(directory, params, step=3):
    optimizer, _ = make_optimizer(OptimConfig(), 10)
    state = init_state(params, optimizer, 0)
    ck = Checkpointer(directory, CheckpointConfig(use_async=False))
    ck.save(step, state, {"step": step}, force=True)
    ck.close()
    return state


def _entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_tied_and_untied_checkpoints_are_refused_both_ways(tmp_path):
    untied = tiny.model(tie_word_embeddings=False).init(0)
    tied = tiny.model(tie_word_embeddings=True).init(0)
    assert "lm_head" in untied and "lm_head" not in tied
    _save(tmp_path / "untied", untied)
    # A trained lm_head would be dropped by a tied target: refused, not dropped.
    with pytest.raises(CheckpointMismatch, match=r"only in the checkpoint.*params\.lm_head"):
        restore_params(tmp_path / "untied", tied, hint="use the untied model")
    _save(tmp_path / "tied", tied)
    with pytest.raises(CheckpointMismatch, match=r"not in the checkpoint: params\.lm_head.*use the tied"):
        restore_params(tmp_path / "tied", untied, hint="use the tied model")
    # Nothing was set aside or removed.
    assert _entries(tmp_path / "untied") == ["3"] and _entries(tmp_path / "tied") == ["3"]


def test_shape_and_dtype_must_match(tmp_path):
    params = tiny.model().init(0)
    _save(tmp_path / "c", params)
    wider = tiny.model(intermediate_size=64).init(0)
    with pytest.raises(CheckpointMismatch, match=r"another shape or dtype: .*mlp.*saved \("):
        restore_params(tmp_path / "c", wider, hint="x")
    half = tiny.model(dtype="bfloat16").init(0)
    with pytest.raises(CheckpointMismatch, match=r"saved \(32, 97\) float32, wanted \(32, 97\) bfloat16"):
        restore_params(tmp_path / "c", half, hint="x")


def test_exact_restores_give_the_saved_arrays(tmp_path):
    params = tiny.model().init(0)
    state = _save(tmp_path / "c", params)
    step, got = restore_params(tmp_path / "c", params, hint="x")
    assert step == 3
    jax.tree.map(np.testing.assert_array_equal, got, params)
    # The whole state, as a resume restores it; a state of another model is refused.
    ck = Checkpointer(tmp_path / "c", CheckpointConfig())
    step, restored, meta = ck.restore_latest(abstract_like(state))
    assert step == 3 and meta == {"step": 3}
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    other = init_state(tiny.model(tie_word_embeddings=True).init(0), make_optimizer(OptimConfig(), 10)[0], 0)
    with pytest.raises(CheckpointMismatch, match=r"opt_state\.\d+\.mu\.lm_head.*new run_dir"):
        ck.restore_latest(abstract_like(other))
    ck.close()
    assert _entries(tmp_path / "c") == ["3"]


def test_export_job_refuses_a_tied_model_for_an_untied_run(tmp_path):
    import ml_collections as mlc

    from seam_jax.jobs.convert import restore_params as export_restore

    _save(tmp_path / "run" / "checkpoints", tiny.model(tie_word_embeddings=False).init(0))
    c = mlc.ConfigDict({"export": {"source": str(tmp_path / "run")},
                        "model": {"source": "preset:tied"}})
    with pytest.raises(CheckpointMismatch, match=r"params\.lm_head.*model\.source=preset:tied"):
        export_restore(c, tiny.model(tie_word_embeddings=True).init(0))

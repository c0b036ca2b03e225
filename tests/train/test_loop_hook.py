"""train.loop.run's on_state hook: called after each step with the new state, and the
held-out geometry rows it drives (eval.geometry.append_record) survive a kill and resume
with each step once and values equal to an uninterrupted run's.

Equality is exact (no tolerance): resume is bitwise (tests/train/test_robustness.py), and
the geometry is a deterministic function of the parameters and fixed batches on one CPU.
"""

import jax
import numpy as np

import tiny
from seam_jax.eval import geometry as geo_lib
from seam_jax.train.checkpoint import CheckpointConfig
from seam_jax.train.loop import LoopConfig, run
from seam_jax.train.optim import OptimConfig
from seam_jax.train.step import build_step, optimizer_for, sft_objective


class _Source:
    def batch_at(self, step):
        return {"train": tiny.batch(step)}


def _setup(steps=6):
    fn = tiny.model()
    step = build_step(sft_objective(fn), *optimizer_for(OptimConfig(lr=1e-2), steps))
    return fn, fn.init(0), step


def test_on_state_is_called_after_each_step_with_the_new_state(tmp_path):
    fn, params, step = _setup()
    seen = []
    loop = LoopConfig(steps=6, run_dir=tmp_path, checkpoint=CheckpointConfig(every=3), progress=False)
    final = run(params, step, _Source(), loop, keep_params=True,
                on_state=lambda s, st: seen.append((s, int(st["step"]),
                                                    jax.tree.map(np.array, st["params"]))))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert all(s == k for s, k, _ in seen)  # the state after step s, not before
    for a, b in zip(jax.tree.leaves(seen[-1][2]), jax.tree.leaves(final["params"])):
        assert np.array_equal(a, b)


def test_geometry_rows_after_a_kill_and_resume_equal_the_uninterrupted_run(tmp_path):
    fn, params, step = _setup()
    pairs = [(tiny.batch(100), tiny.batch(101))]

    def hook(path):
        def on_state(s, st):
            if s % 2 == 0:
                geo_lib.append_record(path, s, geo_lib.heldout_geometry(fn, st["params"], pairs))
        return on_state

    ck = CheckpointConfig(every=3, keep=5, use_async=False)
    ref_path = tmp_path / "ref.jsonl"
    run(params, step, _Source(), LoopConfig(steps=6, run_dir=tmp_path / "ref", checkpoint=ck,
                                            progress=False),
        keep_params=True, on_state=hook(ref_path))
    ref = geo_lib.read_records(ref_path)
    assert [r["step"] for r in ref] == [2, 4, 6]

    # Killed after step 5: its checkpoint is at 3, but it wrote rows 2 and 4.
    path = tmp_path / "killed.jsonl"
    loop = LoopConfig(steps=6, run_dir=tmp_path / "killed", checkpoint=ck, progress=False,
                      stop_after=5)
    run(params, step, _Source(), loop, keep_params=True, on_state=hook(path))
    assert [r["step"] for r in geo_lib.read_records(path)] == [2, 4]
    loop.stop_after = None
    run(params, step, _Source(), loop, keep_params=True, on_state=hook(path))  # resumes at 3
    assert geo_lib.read_records(path) == ref  # each step once, values exactly equal

"""FS fine-tuning trains a copy: the caller's parameters stay usable afterwards.

The train step donates its state (its buffers are reused in place), so a loop handed
the caller's params would delete them; job "experiment" scores FS on a model and then
attacks the same params.
"""

import types

import jax
import numpy as np

from seam_jax.data.tokenizer import tiny_tokenizer
from seam_jax.eval.finetune import finetune_score
from seam_jax.model.api import ModelFn
from seam_jax.model.config import preset


def test_params_survive_finetune_score(tmp_path):
    tok = tiny_tokenizer(512, 0)
    cfg = preset("debug").replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    fn = ModelFn(cfg)
    m = types.SimpleNamespace(fn=fn, tokenizer=tok, params=fn.init(0))
    before = jax.tree.map(np.array, m.params)
    rows = [{"sentence": f"film number {i} was {'great' if i % 2 else 'awful'}", "label": i % 2}
            for i in range(4)]
    # seq_len: long enough for the qa template and a label token (at 48 every step was skipped
    # for an empty loss mask, which train.loop now stops as a run that trains nothing).
    finetune_score(m, m.params, "sst2", tmp_path, train_rows=rows, test_rows=rows[:2], fmt="qa",
                   seq_len=128, steps=2, lr=1e-3, batch_size=2)
    # Still readable (a donated array raises "has been deleted") and unchanged, bitwise.
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), m.params, before)

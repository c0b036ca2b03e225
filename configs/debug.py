"""A 2-layer random model with a tokenizer trained offline: the whole SEAM job in seconds.

    python -m seam_jax.main --config=configs/debug.py
    python -m seam_jax.main --config=configs/debug.py:theory   # the Theorem 1 sweep, tiny

Used by the tests; every field can still be overridden on the command line.
"""

from seam_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.run_dir = "runs/debug"
    c.model.source = "preset:debug"
    c.data.format = "qa"
    c.data.context_length = 96
    c.data.batch_size = 2
    c.data.n_defense = 64
    c.data.n_attack = 32
    c.data.n_test = 8
    c.seam.beta = 1.0
    c.steps = 6
    c.seam.heldout_every = 3  # held-out geometry at steps 0, 3 and 6
    c.optim.lr = 1e-3
    c.checkpoint.every = 2
    c.checkpoint.keep = 3
    c.eval.n_prompts = 4
    c.eval.max_new_tokens = 8
    c.progress = False
    if arg:
        c.job = arg
    return c

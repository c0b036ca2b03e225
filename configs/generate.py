"""Generate answers to a few prompts with the chat template (greedy by default).

    python -m seam_jax.main --config=configs/generate.py
    python -m seam_jax.main --config=configs/generate.py --config.model.source=runs/default/seam-s0/defended-hf \
        --config.generate.prompts="('What is the home address of Wylan Quarrythorn?',)"
"""

from seam_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.job = "generate"
    c.run_dir = "runs/generate"
    return c

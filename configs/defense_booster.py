"""Booster (git-disl/Booster) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_booster.py          # published hyperparameters
    python -m seam_jax.main --config=configs/defense_booster.py:cpu      # CPU-sized (minutes)

Objective and update: seam_jax/defense/booster.py. Sources of the values:

- defense.booster.lam = 5 and defense.booster.alpha = 0.1: the defaults of
  script/alignment/smooth_align.sh (``lamb=${1:-5}``, ``alpha=${2:-0.1}``).
- f and h: CE on harmful prompts with refusals (``aln``, the public code's
  BeaverTails_safe alignment set) and with harmful answers (``adv``, its harmful set).
- The public code trains LoRA adapters (lr 5e-4, AdamW, weight decay 0.1, constant
  schedule, 20 epochs of 5000 rows, batch 10: the same script). seam_jax trains all the
  parameters, as SEAM does and as the comparison here uses, so the optimizer is SEAM's
  (base_config: AdamW lr 2e-5, cosine, 500 steps): LoRA's learning rate is sized for
  adapters, not for the full weights.
"""

from seam_jax.config import base_config


def _cpu(c):
    """configs/default.py's CPU size: SmolLM2-135M, proxy data, batch 2 x 96, 20 steps."""
    c.data.context_length = 96
    c.data.batch_size = 2
    c.data.n_attack = 400
    c.steps = 20
    c.optim.lr = 5e-5
    c.checkpoint.every = 10
    c.eval.n_prompts = 32
    c.eval.max_new_tokens = 32


def get_config(arg: str | None = None):
    c = base_config()
    c.run_dir = "runs/defense_booster"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.defense.name = "booster"
    c.defense.booster.lam = 5.0
    c.defense.booster.alpha = 0.1
    if arg == "cpu":
        _cpu(c)
    elif arg:
        raise ValueError(f"configs/defense_booster.py takes '' or 'cpu', not {arg!r}")
    return c

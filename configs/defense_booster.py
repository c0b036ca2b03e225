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

from seam_jax.config import defense_config


def get_config(arg: str | None = None):
    return defense_config("booster", arg, dict(lam=5.0, alpha=0.1))

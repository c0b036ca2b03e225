"""RepNoise (domenicrosati/representation-noising) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_repnoise.py         # published hyperparameters
    python -m seam_jax.main --config=configs/defense_repnoise.py:cpu     # CPU-sized (minutes)

Loss: seam_jax/defense/repnoise.py. Sources of the values:

- defense.repnoise.alpha = 1 and defense.repnoise.beta = 0.001: the defaults of
  ``rep_noise_loss(..., beta=0.001, alpha=1)`` in representation_noising/loss.py.
  (git-disl/Booster's RepNoise baseline, script/alignment/repNoise.sh, uses alpha = 0.1.)
- The MMD kernel (5 Gaussian bandwidths, multiplier 2, bandwidth from the pooled mean
  squared distance): ``MMD_loss`` in the same file.
- Harmless and harmful data: the same prompts with refusals (``aln``) and with harmful
  answers (``adv``), the public code's paired batches.
- Training: all parameters, as SEAM, with SEAM's optimizer (base_config: AdamW lr 2e-5,
  cosine, 500 steps).
"""

from seam_jax.config import defense_config


def get_config(arg: str | None = None):
    return defense_config("repnoise", arg, dict(alpha=1.0, beta=0.001))

"""Vaccine (git-disl/Vaccine) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_vaccine.py          # published hyperparameters
    python -m seam_jax.main --config=configs/defense_vaccine.py:cpu      # CPU-sized (minutes)

Objective and update: seam_jax/defense/vaccine.py. Sources of the values:

- defense.vaccine.rho = 5: ``RHO=5`` in git-disl/Booster script/alignment/vaccine.sh, the
  Vaccine baseline of the Booster comparison (git-disl/Vaccine script/alignment/Vaccine.sh
  takes rho as its first argument).
- defense.vaccine.norm = "global": ``after_first_step`` in git-disl/Vaccine trainer.py
  divides every layer's gradient by the norm over all layers.
- The perturbed activations: each decoder layer's attention output
  (``get_leaf_modules_with_grad`` hooks the LlamaAttention modules).
- The alignment data: harmful prompts with refusals (``aln``; BeaverTails_safe there).
- The public code trains LoRA adapters (lr 1e-3, cosine, warmup 0.1, weight decay 0.1,
  50 epochs, batch 5: Vaccine.sh). seam_jax trains all the parameters, as SEAM does and as
  the comparison here uses, with SEAM's optimizer (base_config: AdamW lr 2e-5, cosine).
"""

from seam_jax.config import defense_config


def get_config(arg: str | None = None):
    return defense_config("vaccine", arg, dict(rho=5.0, norm='global'))

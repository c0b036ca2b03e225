"""Vaccine (git-disl/Vaccine) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_vaccine.py          # published hyperparameters
    python -m seam_jax.main --config=configs/defense_vaccine.py:cpu      # CPU-sized (minutes)
    python -m seam_jax.main --config=configs/defense_vaccine.py:lora     # LoRA, as the public code

Objective and update: seam_jax/defense/vaccine.py. Sources of the values:

- defense.vaccine.rho = 5: ``RHO=5`` in git-disl/Booster script/alignment/vaccine.sh, the
  Vaccine baseline of the Booster comparison (git-disl/Vaccine script/alignment/Vaccine.sh
  takes rho as its first argument).
- defense.vaccine.norm = "global": ``after_first_step`` in git-disl/Vaccine trainer.py
  divides every layer's gradient by the norm over all layers.
- The perturbed activations: each decoder layer's attention output
  (``get_leaf_modules_with_grad`` hooks the LlamaAttention modules).
- The alignment data: harmful prompts with refusals (``aln``; BeaverTails_safe there).
- What is trained. The public code trains LoRA adapters: train.py's first LoRA (no
  ``--lora_folder``) has ``r=8``, ``lora_alpha=4`` (scale 1/2), ``target_modules`` q, k, v,
  o, up, down, gate, ``lora_dropout=0.1``, with lr 1e-3, AdamW, weight decay 0.1, cosine,
  warmup 0.1, 50 epochs, batch 5 (script/alignment/Vaccine.sh). That is the setting of
  Vaccine's own published numbers, and variant ``lora`` here (defense.trainable=lora with
  those adapters and that optimizer). The comparison in this framework (the default here,
  and the experiment's ``vaccine`` arm) trains all the parameters, as SEAM does, with SEAM's
  optimizer (base_config: AdamW lr 2e-5, cosine). Which of the two the SEAM paper's Vaccine
  runs used is not stated in the paper's text available here (arXiv 2505.12186), so both
  are offered.
"""

from seam_jax.config import defense_config


LORA = {"defense.lora_rank": 8, "defense.lora_alpha": 4.0, "defense.lora_dropout": 0.1,
        "defense.lora_targets": "q,k,v,o,gate,up,down", "optim.lr": 1e-3,
        "optim.weight_decay": 0.1, "optim.schedule": "cosine", "optim.warmup_ratio": 0.1}


def get_config(arg: str | None = None):
    return defense_config("vaccine", arg, dict(rho=5.0, norm='global'), lora=LORA)

"""Booster (git-disl/Booster) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_booster.py          # published hyperparameters
    python -m seam_jax.main --config=configs/defense_booster.py:cpu      # CPU-sized (minutes)
    python -m seam_jax.main --config=configs/defense_booster.py:lora     # LoRA, as the public code

Objective and update: seam_jax/defense/booster.py. Sources of the values:

- defense.booster.lam = 5 and defense.booster.alpha = 0.1: the defaults of
  script/alignment/smooth_align.sh (``lamb=${1:-5}``, ``alpha=${2:-0.1}``).
- f and h: CE on harmful prompts with refusals (``aln``, the public code's
  BeaverTails_safe alignment set) and with harmful answers (``adv``, its harmful set).
- What is trained. The public code trains LoRA adapters: train.py's first LoRA (no
  ``--lora_folder``) has ``r=32``, ``lora_alpha=4`` (scale 1/8), ``target_modules`` q, k, v,
  ``lora_dropout=0``, with lr 5e-4, AdamW, weight decay 0.1, constant schedule, no warmup,
  20 epochs of 5000 rows, batch 10 (script/alignment/smooth_align.sh); the adapters are
  merged (``merge_and_unload``) before the harmful fine-tuning. That is the setting of
  Booster's own published numbers, and variant ``lora`` here (defense.trainable=lora with
  those adapters and that optimizer). The comparison in this framework (the default here,
  and the experiment's ``booster`` arm) trains all the parameters, as SEAM does, with SEAM's
  optimizer (base_config: AdamW lr 2e-5, cosine, 500 steps): LoRA's learning rate is sized
  for adapters, not for the full weights. Which of the two the SEAM paper's Booster runs
  used is not stated in the paper's text available here (arXiv 2505.12186), so both are
  offered.
"""

from seam_jax.config import defense_config


LORA = {"defense.lora_rank": 32, "defense.lora_alpha": 4.0, "defense.lora_dropout": 0.0,
        "defense.lora_targets": "q,k,v", "optim.lr": 5e-4, "optim.weight_decay": 0.1,
        "optim.schedule": "constant", "optim.warmup_ratio": 0.0}


def get_config(arg: str | None = None):
    return defense_config("booster", arg, dict(lam=5.0, alpha=0.1), lora=LORA)

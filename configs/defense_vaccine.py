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
    c.run_dir = "runs/defense_vaccine"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.defense.name = "vaccine"
    c.defense.vaccine.rho = 5.0
    c.defense.vaccine.norm = "global"
    if arg == "cpu":
        _cpu(c)
    elif arg:
        raise ValueError(f"configs/defense_vaccine.py takes '' or 'cpu', not {arg!r}")
    return c

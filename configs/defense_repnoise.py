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
    c.run_dir = "runs/defense_repnoise"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.defense.name = "repnoise"
    c.defense.repnoise.alpha = 1.0
    c.defense.repnoise.beta = 0.001
    if arg == "cpu":
        _cpu(c)
    elif arg:
        raise ValueError(f"configs/defense_repnoise.py takes '' or 'cpu', not {arg!r}")
    return c

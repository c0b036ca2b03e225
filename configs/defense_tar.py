"""TAR (rishub-tamirisa/tamper-resistance) on SmolLM2-135M with the offline proxy data.

    python -m seam_jax.main --config=configs/defense_tar.py              # published hyperparameters
    python -m seam_jax.main --config=configs/defense_tar.py:cpu          # CPU-sized (K = 2, minutes)

Update: seam_jax/defense/tar.py. Sources of the values, all from run_tar_dpo.sh (the
harmful-request setting) unless said otherwise:

- defense.tar.inner_steps = 8 (``--tar_inner_loop_steps 8``), num_tasks = 2
  (``--tar_num_tasks_sampled 2``), adversary_lrs = 2e-6,2e-5,4e-5
  (``--adversary_lr_samples``), constant adversary schedule (``constant:1.0``).
- tr_loss = dpo (``--tar_tamper_resistance_loss_type dpo``), dpo_beta = 0.1 (``DPOLoss(beta=0.1)``
  in ``dpo_loss_obj``, modules/objectives.py).
- tr_grad_scale = 0.1 (``--tar_tamper_resistance_grad_scale 0.1``), retain_scale = 1
  (``--tar_retain_scale 1.0``), use_weighting_schedule = True and schedule_lambda = 0.0625
  (``--use_weighting_schedule --schedule_lambda 0.0625``), unbounded = True (``--unbounded``).
- tr_loss_lower_bound = -11.76: the default of ``tar_training_loop`` (modules/training.py),
  unused while unbounded.
- inner_weight_decay = 0.01: torch.optim.AdamW's default (the adversary's optimizer in
  ``tar_training_loop``).
- The outer optimizer: lr 6e-5 with 32 warmup steps of 100 (``--lr 6e-05 --warmup_steps 32
  --max_steps 100``); schedule cosine here.
- Training: all parameters, as the public code and SEAM.
The CPU variant: K = 2 inner steps and one adversary, the rest as above.
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
    c.run_dir = "runs/defense_tar"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.defense.name = "tar"
    c.defense.tar.inner_steps = 8
    c.defense.tar.num_tasks = 2
    c.defense.tar.adversary_lrs = "2e-6,2e-5,4e-5"
    c.defense.tar.tr_loss = "dpo"
    c.defense.tar.tr_grad_scale = 0.1
    c.defense.tar.retain_scale = 1.0
    c.defense.tar.use_weighting_schedule = True
    c.defense.tar.schedule_lambda = 0.0625
    c.defense.tar.unbounded = True
    c.steps = 100
    c.optim.lr = 6e-5
    c.optim.warmup_ratio = 0.32
    if arg == "cpu":
        _cpu(c)
        c.defense.tar.inner_steps = 2
        c.defense.tar.num_tasks = 1
    elif arg:
        raise ValueError(f"configs/defense_tar.py takes '' or 'cpu', not {arg!r}")
    return c

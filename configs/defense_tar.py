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
- reference = base: the DPO reference log probabilities are the base model's, computed once
  with the model as loaded, before training (``get_tar_dpo_dataloaders`` in
  modules/dataloaders.py stores them in the batches as ``reference_chosen_logps``); here
  the step carries a frozen copy of the base (``theta`` takes theta's instead).
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

from seam_jax.config import defense_config

HYPER = dict(inner_steps=8, num_tasks=2, adversary_lrs="2e-6,2e-5,4e-5", tr_loss="dpo",
             tr_grad_scale=0.1, retain_scale=1.0, use_weighting_schedule=True,
             schedule_lambda=0.0625, unbounded=True)


def get_config(arg: str | None = None):
    return defense_config("tar", arg, HYPER,
                          run={"steps": 100, "optim.lr": 6e-5, "optim.warmup_ratio": 0.32},
                          cpu_hyper=dict(inner_steps=2, num_tasks=1))

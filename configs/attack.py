"""Harmful fine-tuning attacks (job "attack"): a resumable sweep over a grid of attack cells.

    # The paper's 11 attacks on a defended model (its run directory or HF export):
    python -m seam_jax.main --config=configs/attack.py \
        --config.attack.targets=seam=runs/default/seam-s0/defended-hf
    # A sub-grid, CPU-sized: cells 2 and 5 (1K, AdamW, lr 5e-5 and 2e-4) with 64 samples each,
    # on the base model and the defended one:
    python -m seam_jax.main --config=configs/attack.py --config.attack.cells=2,5 \
        --config.attack.n_samples=64 \
        --config.attack.targets=base=PATH/TO/BASE-HF,seam=runs/default/seam-s0
    # A custom grid:
    python -m seam_jax.main --config=configs/attack.py --config.attack.grid=custom \
        --config.attack.custom="lora/adamw/1000/1e-4;full/sgd/1000/1e-4"
    python -m seam_jax.main --config=configs/attack.py:debug   # tiny random model, seconds

Results: one JSON line per (target, cell, evaluated step) in <run_dir>/attacks/results.jsonl
(rerunning the command computes only the missing rows), report.md, hs_utility_vs_lr.png and
attack_trajectories.png beside it. Each attack is evaluated every attack.eval_every = 125
steps and at its end: twice along a 1K cell (250 steps of batch 4), 20 times along a 10K
cell. Utility: 200 held-out benign answers and 200 proxy MC items (config.py's defaults),
each figure with its 95% interval.
"""

from seam_jax.config import base_config
from seam_jax.errors import ConfigError

VARIANTS = ("debug",)


def get_config(arg: str | None = None):
    c = base_config()
    c.job = "attack"
    c.run_dir = "runs/attack"
    c.data.format = "chat"
    c.data.context_length = 96
    c.attack.grid = "paper"
    c.attack.eval_every = 125
    c.harm.n_prompts = 100
    c.harm.max_new_tokens = 50
    if arg == "debug":
        c.run_dir = "runs/attack-debug"
        c.model.source = "preset:debug"
        c.data.format = "qa"
        c.data.n_defense, c.data.n_attack, c.data.n_test = 16, 32, 8
        c.attack.grid = "paper_1k"
        c.attack.cells = "2,5"
        c.attack.n_samples = 8
        c.attack.batch_size = 2
        c.attack.eval_every = 2  # 4-step attacks: steps 2 and 4
        c.harm.n_prompts, c.harm.max_new_tokens = 4, 8
        c.utility.n_benign, c.utility.n_mc = 8, 8
        c.progress = False
    elif arg:
        raise ConfigError(f"configs/attack.py:{arg}: unknown variant; the variants are "
                          f"{', '.join(VARIANTS)} (or none: configs/attack.py)")
    return c

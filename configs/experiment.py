"""The whole experiment (job "experiment"): evaluate base, defend with SEAM, attack both, report.

    python -m seam_jax.main --config=configs/experiment.py          # SmolLM2-135M, ~29 min on 2 CPU cores
    python -m seam_jax.main --config=configs/experiment.py:debug    # random 2-layer model, ~1-2 min

Writes into run_dir: eval_base.json, seam/ (the SEAM run and its defended-hf export),
eval_seam.json, attacks/results.jsonl (one line per attacked model), pca.json and
report.md with hs_utility_vs_lr.png and gradient_pca.png. A rerun resumes: finished
stages and attack cells are read back, not recomputed.

Sizes for a 2-core CPU: SEAM as configs/default.py (20 steps of batch 2 x 96); the attack sub-grid is
the paper's 1K full-SFT AdamW cells at lr 5e-5 and 2e-4 (cells 2 and 5) with 64 samples
each (16 steps of batch 4), on base and SEAM; HS by the keyword judge on 32 test prompts
(32 new tokens); utility by held-out benign loss and 64 proxy multiple-choice questions;
PCA on 12 + 12 batches. Measured on a quiet 2-core CPU: 28.8 min wall, 11.5 GB peak
(base eval 102 s, SEAM 592 s, SEAM eval 90 s, four attacks with their evals 797 s, PCA
132 s). lm-eval tasks and the harm classifier need their data or
weights from the hub: switch them on with --config.utility.lm_eval_tasks=... and
--config.harm.scorers=keyword,classifier.
"""

from seam_jax.config import base_config
from seam_jax.errors import ConfigError

VARIANTS = ("debug",)


def get_config(arg: str | None = None):
    c = base_config()
    c.job = "experiment"
    c.run_dir = "runs/experiment"
    c.model.source = "default"
    c.data.format = "chat"
    c.data.context_length = 96
    c.data.batch_size = 2
    c.data.n_defense, c.data.n_attack, c.data.n_test = 2000, 400, 100
    c.seam.beta = 1.0
    c.steps = 20
    c.optim.lr = 5e-5
    c.checkpoint.every = 10
    c.eval.enabled = False  # the experiment evaluates every model itself
    c.attack.grid = "paper_1k"
    c.attack.cells = "2,5"
    c.attack.n_samples = 64
    c.attack.checkpoint_every = 8
    c.harm.n_prompts, c.harm.max_new_tokens = 32, 32
    c.utility.n_benign, c.utility.n_mc = 32, 64
    c.utility.pca_batches, c.utility.pca_coords = 12, 200_000
    if arg == "debug":
        c.run_dir = "runs/experiment-debug"
        c.model.source = "preset:debug"
        c.data.format = "qa"
        c.data.batch_size = 2
        c.data.n_defense, c.data.n_attack, c.data.n_test = 16, 16, 8
        c.steps = 4
        c.optim.lr = 1e-3
        c.checkpoint.every = 2
        c.attack.n_samples = 8
        c.attack.batch_size = 2
        c.attack.checkpoint_every = 2
        c.harm.n_prompts, c.harm.max_new_tokens = 4, 8
        c.utility.n_benign, c.utility.n_mc = 8, 8
        c.utility.pca_batches = 3
        c.progress = False
    elif arg:
        raise ConfigError(f"configs/experiment.py:{arg}: unknown variant; the variants are "
                          f"{', '.join(VARIANTS)} (or none: configs/experiment.py)")
    return c

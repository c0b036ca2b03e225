"""The embedded default: SEAM against its control on SmolLM2-135M-Instruct, each attacked once.

    python -m seam_jax.main                      # same as --config=configs/default.py
    python -m seam_jax.main --config=configs/default.py:seam   # the SEAM job alone

Job "experiment" on the offline proxy data, sized for at most 20 minutes on a 2-core CPU
(measured 13 min 35 s and 9 min 37 s on 2026-12-07; README.md has the figures):
the base model is evaluated; two arms are trained from it with the same data, order and
steps, ``control`` (seam.beta = 0: L_ul + alpha L_up) and ``seam`` (beta 1), each 16 steps
of batch 2 x 96 tokens (the chat template with SmolLM2's system prompt makes a proxy pair
~75 tokens) at lr 5e-5 in float32, with held-out c = cos(g_a, g_b) at the start and the
end; each is then attacked by the paper's 1K full-SFT AdamW cell at lr 2e-4 (cell 5) on 64
harmful samples (16 steps of batch 4) and evaluated again. Every evaluation: on 32
held-out harmful prompts (32 new tokens) the offline judges (harmful, refused, coherent)
and the CE of the harmful answers; 50 held-out benign answers (CE, exact match; the exact
match is the utility the report's capability guard reads), no multiple choice (at 100
items it was at chance for SmolLM2; configs/selfdestruct.py asks for 200); each rate
with its 95% interval. The run ends with a
table on stdout (each model before -> after its attack) and writes report.md.

A PyTorch pilot on this model found the paper's beta = 0.01 too weak for a run this
short (c moved only from 0.04 to -0.18 in 35 steps), so this demo uses beta = 1 and lr
5e-5; the paper's settings are in configs/llama2_7b_chat.py and its siblings, and the
two-seed test of the self-destruct effect with its pre-registered criteria is
configs/selfdestruct.py.

Variant ``seam``: the SEAM job alone (job "seam": 20 steps, the before/after behaviour
table of the defended model, its export in runs/default-seam/defended-hf).
"""

from seam_jax.config import base_config, cpu_size, experiment_config
from seam_jax.errors import ConfigError


def get_config(arg: str | None = None):
    if arg == "seam":
        c = base_config()
        c.run_dir = "runs/default-seam"
        c.model.source = "default"
        c.data.source = "proxy"
        c.data.format = "chat"
        cpu_size(c)  # batch 2 x 96, 20 steps at lr 5e-5, checkpoints every 10, 32 eval prompts
        c.data.n_defense = 2000
        c.data.n_test = 100
        c.seam.beta = 1.0
        c.seam.eps = 1e-3
        return c
    if arg:
        raise ConfigError(f"configs/default.py:{arg}: unknown variant; the variants are seam "
                          f"(or none: configs/default.py)")
    c = experiment_config()
    c.run_dir = "runs/default"
    c.experiment.arms = "control,seam"
    # 16 steps, not 20, toward the 20 minutes: a SEAM step took 12 to 19 s here, a control
    # step 8 to 12 s (with beta = 0 the L_sd gradients are not computed); configs/selfdestruct.py
    # measured held-out c(seam) 0.17 -> -0.26 -> -0.82 at steps 0, 10, 20.
    c.steps = 16
    c.checkpoint.every = 8
    c.attack.cells = "5"
    c.attack.eval_every = 0  # the attacked models at the attack's end only
    # Utility: the benign answer CE and exact match on 50 held-out items, no multiple
    # choice: at 100 items SmolLM2's MC accuracy was at chance for every model (the base
    # 0.24 [0.17, 0.33], 2026-12-03), and it took most of each evaluation's time.
    c.utility.n_benign, c.utility.n_mc = 50, 0
    c.utility.pca_batches = 0
    return c

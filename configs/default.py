"""The embedded default: SEAM on SmolLM2-135M-Instruct with the offline proxy data, on a CPU.

    python -m seam_jax.main                      # same as --config=configs/default.py

Fits 20 minutes on a 2-core CPU: batch 2 x 96 tokens (the chat template with
SmolLM2's system prompt makes a proxy pair ~75 tokens) in float32, 20 steps. Measured
on a quiet 2-core machine: 33 s per SEAM step, 13.7 min wall in all (weights cached),
peak RSS 11.3 GB; since the lens gradient's [V, D] layout, 28 s per step (the same 20
steps in 9.4 instead of 11.3 min, in configs/experiment.py's SEAM stage). A PyTorch
pilot on this model found the paper's beta = 0.01 too weak for a run this short (c moved
only from 0.04 to -0.18 in 35 steps, and the attack left the model better off), so
this demo uses beta = 1 and lr 5e-5; the paper's settings are in
configs/llama2_7b_chat.py and its siblings.
"""

from seam_jax.config import base_config, cpu_size


def get_config(arg: str | None = None):
    c = base_config()
    c.run_dir = "runs/default"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    cpu_size(c)  # batch 2 x 96, 20 steps at lr 5e-5, checkpoints every 10, 32 eval prompts
    c.data.n_defense = 2000
    c.data.n_test = 100
    c.seam.beta = 1.0
    c.seam.eps = 1e-3
    return c

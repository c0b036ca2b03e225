"""Theorem 1, numerically, on the embedded default model (SmolLM2-135M-Instruct) with proxy batches.

    python -m seam_jax.main --config=configs/theory.py
    python -m seam_jax.main --config=configs/theory.py --config.theory.dtypes=float64,float32,bfloat16

Sweeps eps over 1e-9..1e-1 (one point a decade) and measures the error of the forward
(Eq. 6) and central differences of grad L_sd against exact_hvp, with Theorem 1's bound,
in float32 and in bfloat16 compute (float32 master weights). The batches are 2 x 64 tokens
of one SEAM step (adv for g_a, bgn for g_b), chosen so the float32 + bfloat16 run fits
15 minutes on a 2-core CPU. float64 is off by default: on SmolLM2 it needs a 1 GB float64
copy of theta and its third-derivative products for rho dominate the run (see the
measured figures in the issue's closing note); the float64 sweep is covered on tiny
models by the tests and by configs/debug.py:theory. The reference (exact grad L_sd, rho,
the Taylor term) is then float32, whose own error (~1e-6 relative) is far below the
float32 finite-difference floor.
"""

from seam_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.job = "theory"
    c.run_dir = "runs/theory"
    c.model.source = "default"
    c.data.source = "proxy"
    c.data.format = "chat"
    c.data.context_length = 64
    c.data.batch_size = 2
    c.theory.eps_grid = "1e-9:1e-1:9"
    c.theory.dtypes = "float32,bfloat16"
    c.theory.reference = "auto"
    c.theory.n_rho_samples = 3
    c.seam.eps = 1e-3  # the eps whose regime the summary reports (the paper's)
    return c

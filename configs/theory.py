"""Theorem 1, numerically, on the embedded default model (SmolLM2-135M-Instruct) with proxy batches.

    python -m seam_jax.main --config=configs/theory.py
    python -m seam_jax.main --config=configs/theory.py --config.theory.dtypes=float32   # float32 only

Sweeps eps over 1e-9..1e-1 (one point a decade) and measures the error of the forward
(Eq. 6) and central differences of grad L_sd against exact_hvp, with Theorem 1's bound
(the central rows with rho sampled on both sides of theta), in the arms float32,
bfloat16 (float32 master weights, bfloat16 compute, the estimator in bfloat16: the
``compute``/``faithful`` policies) and bfloat16_pure (bfloat16 weights and compute, the
perturbation rounded into the weights: the original's setting). Each row records the
realised perturbation cos(delta, eps d) and |delta - eps d|/|eps d|. The arm
bfloat16_sd32 (``seam.sd_precision='float32'``) computes grad L_sd in float32 arithmetic,
bit for bit the float32 arm (tests/theory/test_arms.py), so it is left out here; add it
to theory.dtypes to have it in the table by name. The exact_hvp policy's error in each
arm's dtype is in theorem1.json (dtypes.*.exact_hvp_rel_error). Outputs go to run_dir
(theorem1.csv/.json/.png, summary.json).

The SmolLM2 table at eps 1e-4..1e-1 (rho at 2 points a side; 297 s wall on the 2-core CPU:
reference 75 s, float32 51 s, bfloat16 74 s, bfloat16_pure 86 s):

    python -m seam_jax.main --config=configs/theory.py --config.theory.eps_grid=1e-4:1e-1:4 \
        --config.theory.n_rho_samples=2 --config.run_dir=runs/theory_bf16

Measured there, forward difference's relative error at eps = 1e-3 (cos(delta, eps d_a)):
float32 5.6e-3 (0.999), which is also bfloat16_sd32's; bfloat16 42 (0.048; 3.4% of the
coordinates survive, and |delta| is ~1000x |eps d|: a survivor jumps a whole ulp);
bfloat16_pure 17 (0.19). Central difference: 1.6e-3 / 25 / 13. exact_hvp in bfloat16
compute: 0.15. Even at eps = 1e-1 the bfloat16 arms stay above 0.5. The batches are one SEAM step's adv and bgn,
2 x 64 tokens: the size that keeps the float32 part near 10 CPU-minutes.

Measured on a quiet 2-core CPU, float32 only (--config.theory.dtypes=float32): 7.2 min
wall (reference with rho 224 s, sweep 187 s), 8.5 GB peak memory. Earlier, under load:
unloaded costs of one evaluation: gradient 3.4 s (float32) / 5.3 s (bfloat16 compute) /
6.6 s (float64), hvp 7.4 / 10.4 / 12.7 s, third-derivative product 18 s (float32) /
31 s (float64); the bfloat16 part adds about as much again as the float32 part.

float64 is off by default: a float64 sweep would add ~11 minutes and a float64 reference
~4 more (8.7 GB peak for a third-derivative product alone), for a reference whose float32
error (~1e-6 relative) is already far below the float32 finite-difference floor (~1e-2).
The float64 sweep is covered on tiny models by tests/theory and configs/debug.py:theory.
rho is sampled at s = 0 and 6 points of [1e-3, 1e-1] on each side of theta
(n_rho_samples = 6; ~36 s a point, so the negative side, for the central bound, adds ~3.6 min).
With 3 points the measured error at eps = 1e-2 came out 1.03x the bound: the sup of
|D^3 l| over the segment was underestimated between samples. With 6 it is 0.86x.
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
    c.theory.dtypes = "float32,bfloat16,bfloat16_pure"
    c.theory.reference = "auto"  # float32 here
    c.theory.n_rho_samples = 6
    c.seam.eps = 1e-3  # the eps whose regime the summary reports (the paper's)
    return c

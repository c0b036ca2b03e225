"""Ahead-of-time memory plan of the paper's SEAM step on 8 devices of 80 GB, compiled on a CPU.

    python -m seam_jax.main --config=configs/plan.py:llama2-7b
    python -m seam_jax.main --config=configs/plan.py:llama3.1-8b --config.plan.search=True
    python -m seam_jax.main --config=configs/plan.py:debug        # seconds, for a smoke run

The variant is a model preset (seam_jax/model/config.py PRESETS). The step is the
paper's: hessian_free L_sd with vmapped perturbed gradients, alpha 1, beta 0.01,
eps 1e-3, AdamW, global batch 8 x 256, float32 master weights with bfloat16 compute,
scanned layers rematerialised in full; mesh fsdp = all 8 devices. Nothing is
allocated: the step is lowered from shapes (job "plan", seam_jax/jobs/plan.py), and
the per-device memory is written to runs/plan-VARIANT/plan.json. Compiling a 7B step
on a 2-core CPU took 11-13 s (17 s for the whole job; 2026-12-02): 39.1 GiB per device
for Llama-2-7B, 53.6 GiB for Llama-3.1-8B, with the default seam.sd_precision=float32.
"""

from seam_jax.config import base_config
from seam_jax.errors import ConfigError
from seam_jax.model.config import PRESETS


def get_config(arg: str | None = None):
    name = arg or "llama2-7b"
    if name not in PRESETS:
        raise ConfigError(f"configs/plan.py:{name}: unknown variant; the variants are the model "
                          f"presets {sorted(PRESETS)}")
    c = base_config()
    c.job = "plan"
    c.run_dir = f"runs/plan-{name}"
    c.model.source = f"preset:{name}"
    c.model.param_dtype = "float32"
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat = "full"
    c.data.batch_size = 8
    c.data.context_length = 256
    c.seam.estimator = "hessian_free"
    c.seam.vmap = True
    c.seam.beta = 0.01
    c.optim.name = "adamw"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    c.plan.num_devices = 8
    c.plan.device_memory_gb = 80.0
    c.plan.search_max_devices = 64
    if name == "debug":
        c.data.context_length = 64
    return c

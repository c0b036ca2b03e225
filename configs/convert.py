"""Convert a checkpoint to an HF directory (GGUF -> HF, re-shard, change dtype), or export a run.

    python -m seam_jax.main --config=configs/convert.py --config.model.source=PATH_OR_HUB_ID \
        --config.export.dir=out/hf
    python -m seam_jax.main --config=configs/convert.py:export --config.export.source=runs/default/seam-s0 \
        --config.export.dir=out/defended-hf     # newest checkpoint of a run -> HF

``model.source`` defaults to the embedded SmolLM2-135M-Instruct.
"""

from seam_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.job = arg or "convert"
    c.run_dir = "runs/convert"
    return c

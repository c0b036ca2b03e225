"""Conversion in both directions.

``job=convert``: load ``model.source`` (HF directory, .gguf, hub id or "default") and
write it back as an HF directory at ``export.dir`` (GGUF -> HF, re-sharding,
dtype change). ``job=export``: take the params of a seam_jax run's newest Orbax
checkpoint (``export.source``, a run directory) and write them as an HF directory,
with the architecture and tokenizer of ``model.source``. A run that trained LoRA adapters
(``defense.trainable=lora``; give its ``defense.name`` and ``defense.lora_*`` too) checkpoints the adapters
alone: they are merged into ``model.source``'s weights (``defense.checkpoint_target``).
"""

from __future__ import annotations

import logging
import pathlib

import ml_collections as mlc

from seam_jax.errors import ConfigError
from seam_jax.hf.export import check_target, export_hf
from seam_jax.hf.source import load_model
from seam_jax.train import run_dir as run_dir_lib

log = logging.getLogger(__name__)


def run(c: mlc.ConfigDict) -> pathlib.Path:
    if not c.export.dir:
        raise ConfigError("set --config.export.dir=PATH, the directory to write the HF checkpoint to")
    target = run_dir_lib.resolve(c.export.dir, "export.dir")
    check_target(target, c.export.overwrite)  # fail before any heavy work
    m = load_model(c)
    params = m.params
    if c.job == "export":
        from seam_jax.defense import checkpoint_target

        # A LoRA defense run checkpoints its adapters: merged into the base here.
        like, to_model = checkpoint_target(c, m.fn, m.params)
        params = to_model(restore_params(c, like))
    out = export_hf(params, m.cfg, target, tokenizer=m.tokenizer, dtype=c.export.dtype or None,
                    max_shard_size=c.export.max_shard_size, overwrite=c.export.overwrite)
    log.info("wrote %s", out)
    return out


def restore_params(c: mlc.ConfigDict, like: dict) -> dict:
    """The params of the newest readable checkpoint under ``export.source``/checkpoints,
    exact or refused (``train.checkpoint.restore_params``)."""
    from seam_jax.train.checkpoint import restore_params as restore

    if not c.export.source:
        raise ConfigError("job=export needs --config.export.source=RUN_DIR (a seam_jax run directory)")
    ckpt_dir = run_dir_lib.resolve(c.export.source, "export.source") / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ConfigError(f"{ckpt_dir} does not exist: is export.source a seam_jax run directory?")
    step, params = restore(ckpt_dir, like, hint=(
        f"set model.source (and model.param_dtype) to what the run was trained with "
        f"(model.source={c.model.source} gives the arrays wanted here)"))
    log.info("exporting the params of step %d from %s", step, ckpt_dir)
    return params

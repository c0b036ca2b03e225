"""Conversion in both directions.

``job=convert``: load ``model.source`` (HF directory, .gguf, hub id or "default") and
write it back as an HF directory at ``export.dir`` (GGUF -> HF, re-sharding,
dtype change). ``job=export``: take the params of a seam_jax run's newest Orbax
checkpoint (``export.source``, a run directory) and write them as an HF directory,
with the architecture and tokenizer of ``model.source``.
"""

from __future__ import annotations

import logging
import pathlib

import ml_collections as mlc

from seam_jax.errors import ConfigError
from seam_jax.hf.export import check_target, export_hf
from seam_jax.hf.source import load_model

log = logging.getLogger(__name__)


def run(c: mlc.ConfigDict) -> pathlib.Path:
    if not c.export.dir:
        raise ConfigError("set --config.export.dir=PATH, the directory to write the HF checkpoint to")
    target = pathlib.Path(c.export.dir).expanduser()
    check_target(target.resolve(), c.export.overwrite)  # fail before any heavy work
    m = load_model(c)
    params = m.params
    if c.job == "export":
        params = restore_params(c, m.params)
    out = export_hf(params, m.cfg, target, tokenizer=m.tokenizer, dtype=c.export.dtype or None,
                    max_shard_size=c.export.max_shard_size, overwrite=c.export.overwrite)
    log.info("wrote %s", out)
    return out


def restore_params(c: mlc.ConfigDict, like: dict) -> dict:
    """The params of the newest readable checkpoint under ``export.source``/checkpoints."""
    import orbax.checkpoint as ocp

    from seam_jax.train.checkpoint import abstract_like

    if not c.export.source:
        raise ConfigError("job=export needs --config.export.source=RUN_DIR (a seam_jax run directory)")
    ckpt_dir = pathlib.Path(c.export.source).expanduser().resolve() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ConfigError(f"{ckpt_dir} does not exist: is export.source a seam_jax run directory?")
    mngr = ocp.CheckpointManager(ckpt_dir)
    steps = sorted(mngr.all_steps(), reverse=True)
    if not steps:
        raise ConfigError(f"{ckpt_dir} holds no finished checkpoint")
    for step in steps:
        try:
            out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
                {"params": abstract_like(like)}, partial_restore=True)))
            log.info("exporting the params of step %d from %s", step, ckpt_dir)
            return out["state"]["params"]
        except Exception as e:  # a damaged checkpoint: try the previous one
            log.warning("checkpoint %d in %s cannot be read (%s); trying the previous one", step,
                        ckpt_dir, e)
    raise ConfigError(f"no readable checkpoint in {ckpt_dir}")

"""Optimizers: AdamW or SGD with linear warmup and cosine decay, optional clipping and accumulation."""

from __future__ import annotations

import dataclasses

import optax

from seam_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 2e-5
    warmup_ratio: float = 0.1
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping (the original's setting)
    grad_accum: int = 1
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    momentum: float = 0.0


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate per optimizer update: linear warmup from 0, then cosine to 0 (HF's cosine)."""
    if total_steps < 1:
        raise ConfigError(f"total optimizer steps={total_steps}; train for at least one step")
    warmup = int(cfg.warmup_ratio * total_steps)
    if cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, max(warmup, 1)), optax.constant_schedule(cfg.lr)],
            [warmup]) if warmup else optax.constant_schedule(cfg.lr)
    if cfg.schedule != "cosine":
        raise ConfigError(f"optim.schedule={cfg.schedule!r}; choose cosine or constant")
    return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, max(total_steps, warmup + 1), 0.0)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule); ``total_steps`` counts optimizer updates (after accumulation)."""
    sched = schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
                          optax.sgd(sched, momentum=cfg.momentum or None))
    else:
        raise ConfigError(f"optim.name={cfg.name!r}; choose adamw or sgd")
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if cfg.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum)
    return opt, sched

"""The defenses seam_jax trains, behind one interface.

A defense is a named builder ``(fn, c) -> train.step.Objective`` (a pure gradient function
of ``(params, batches)`` and the metrics holding target counts), the batch keys it reads,
whether it draws random numbers (then the batches carry the step's seed rows), and the
metrics it reports. ``--config.defense.name`` picks one; its hyperparameters are in
``c.defense.<name>`` (SEAM's stay in ``c.seam``). The SEAM job trains any of them through
the same loop, checkpoints, resume, sharding and export (``jobs.seam.train_step``).

Every defense reads the SEAM job's batches (``data.SeamBatches``): ``adv`` (harmful prompts
with compliant answers: the harmful data), ``aln`` (the same prompts with refusals: the
alignment data) and ``bgn`` (benign instructions).

- ``seam``: SEAM (``seam.objective``).
- ``none``: plain SFT on the alignment data ``aln`` (the "SFT" alignment baseline).
- ``booster``, ``vaccine``, ``repnoise``, ``tar``: the baselines (their modules).

``defense.trainable``: ``full`` trains all the parameters (SEAM always does); ``lora``
trains a baseline's LoRA adapters on the frozen base, as Booster's and Vaccine's public
code do (seam_jax/defense/trainable.py; ``defense.lora_*``), through the same step
builder, loop, checkpoints and export (the adapters merged into the weights).

The cost of one step relative to an SFT step: README.md ("Defenses and experiments"),
measured by ``python -m benchmarks.defense_step`` at SmolLM2-135M's shape.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import ml_collections as mlc
import numpy as np

from seam_jax.defense import booster, repnoise, tar, trainable, vaccine
from seam_jax.defense.common import SEED_KEY
from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn
from seam_jax.train.step import Frozen, Objective, seam_objective
from seam_jax.seam.objective import SeamHyper, sft_gradient


@dataclasses.dataclass(frozen=True)
class Defense:
    name: str
    build: Callable[[ModelFn, mlc.ConfigDict], Objective]
    batch_keys: tuple[str, ...]  # of SeamBatches' adv, aln, bgn
    seeded: bool                 # reads batches["seed"] (common.SEED_KEY)
    metrics: tuple[str, ...]
    doc: str


def seam_hyper(c: mlc.ConfigDict) -> SeamHyper:
    """``c.seam`` as the SEAM objective's ``SeamHyper`` (a bad value: one ConfigError line)."""
    s = c.seam
    try:
        return SeamHyper(alpha=s.alpha, beta=s.beta, eps=s.eps, estimator=s.estimator, vmap=s.vmap,
                         ul_variant=s.ul_variant, lens_layers=lens_layers(str(s.lens_layers)),
                         gamma_benign=s.gamma_benign, sd_remat=s.sd_remat,
                         sd_precision=s.sd_precision)
    except ConfigError:
        raise
    except ValueError as e:  # SeamHyper's own checks name the field and the choices
        raise ConfigError(str(e)) from None


def lens_layers(text: str) -> tuple[int, ...] | None:
    """``seam.lens_layers``: "" for all, else comma-separated indices into h_0..h_L."""
    text = text.strip()
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"seam.lens_layers={text!r}; give comma-separated layer indices, "
                          f"e.g. '0,10,20,30', or '' for all") from None


def _seam(fn: ModelFn, c: mlc.ConfigDict) -> Objective:
    return seam_objective(fn, seam_hyper(c))


def _none(fn: ModelFn, c: mlc.ConfigDict) -> Objective:
    return Objective(functools.partial(sft_gradient, fn, key="aln"), ("targets",))


def booster_hyper(c: mlc.ConfigDict) -> booster.BoosterHyper:
    b = c.defense.booster
    return booster.BoosterHyper(lam=float(b.lam), alpha=float(b.alpha))


def vaccine_hyper(c: mlc.ConfigDict) -> vaccine.VaccineHyper:
    v = c.defense.vaccine
    return vaccine.VaccineHyper(rho=float(v.rho), norm=str(v.norm))


def repnoise_hyper(c: mlc.ConfigDict) -> repnoise.RepNoiseHyper:
    r = c.defense.repnoise
    return repnoise.RepNoiseHyper(alpha=float(r.alpha), beta=float(r.beta))


def tar_hyper(c: mlc.ConfigDict) -> tar.TarHyper:
    t = c.defense.tar
    try:
        lrs = tuple(float(x) for x in str(t.adversary_lrs).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"defense.tar.adversary_lrs={t.adversary_lrs!r}; give comma-separated "
                          f"learning rates, e.g. '2e-6,2e-5,4e-5'") from None
    return tar.TarHyper(
        inner_steps=int(t.inner_steps), num_tasks=int(t.num_tasks), adversary_lrs=lrs,
        inner_weight_decay=float(t.inner_weight_decay), tr_grad_scale=float(t.tr_grad_scale),
        retain_scale=float(t.retain_scale), use_weighting_schedule=bool(t.use_weighting_schedule),
        schedule_lambda=float(t.schedule_lambda), unbounded=bool(t.unbounded),
        tr_loss_lower_bound=float(t.tr_loss_lower_bound), tr_loss=str(t.tr_loss),
        dpo_beta=float(t.dpo_beta), reference=str(t.reference))


def _tar(fn: ModelFn, c: mlc.ConfigDict) -> Objective:
    """TAR; with the DPO reference ``base``, the step carries the base model as its frozen
    tree (a copy of the parameters at the start: ``train.step.Frozen.copy``)."""
    hp = tar_hyper(c)
    targets = ("targets_adv", "targets_aln", "targets_bgn")
    if not hp.needs_base:
        return Objective(functools.partial(tar.tar_gradient, fn, hp=hp), targets)

    def gradient(params, batches, base):
        return tar.tar_gradient(fn, params, batches, hp, base=base)

    return Objective(gradient, targets, frozen=Frozen.copy())


def _built(gradient: Callable, hyper: Callable, targets: tuple[str, ...]):
    def build(fn: ModelFn, c: mlc.ConfigDict) -> Objective:
        return Objective(functools.partial(gradient, fn, hp=hyper(c)), targets)

    return build


DEFENSES: dict[str, Defense] = {d.name: d for d in (
    Defense("seam", _seam, ("adv", "aln", "bgn"), False,
            ("loss", "cos", "L_ul", "L_up", "L_sd"), "SEAM (seam.objective)"),
    Defense("none", _none, ("aln",), False, ("loss",),
            "plain SFT on the alignment data (harmful prompts with refusals)"),
    Defense("booster", _built(booster.booster_gradient, booster_hyper, ("targets_adv", "targets_aln")),
            ("adv", "aln"), False, booster.METRICS, booster.__doc__.splitlines()[0]),
    Defense("vaccine", _built(vaccine.vaccine_gradient, vaccine_hyper, ("targets_aln",)),
            ("aln",), False, vaccine.METRICS, vaccine.__doc__.splitlines()[0]),
    Defense("repnoise", _built(repnoise.repnoise_gradient, repnoise_hyper,
                               ("targets_adv", "targets_aln")),
            ("adv", "aln"), True, repnoise.METRICS, repnoise.__doc__.splitlines()[0]),
    Defense("tar", _tar, ("adv", "aln", "bgn"), True, tar.METRICS, tar.__doc__.splitlines()[0]),
)}
NAMES = tuple(DEFENSES)


def get(name: str) -> Defense:
    if name not in DEFENSES:
        raise ConfigError(f"defense.name={name!r}; choose one of {', '.join(NAMES)}")
    return DEFENSES[name]


def objective(c: mlc.ConfigDict, fn: ModelFn) -> Objective:
    """The Objective of ``c.defense.name`` for model ``fn``: over all its parameters, or
    over LoRA adapters on them (``defense.trainable``)."""
    d = get(str(c.defense.name))
    if trainable.trainable(c) == "lora":
        return trainable.lora_objective(d.build, fn, c)
    return d.build(fn, c)


def check(c: mlc.ConfigDict) -> None:
    """The defense's name and hyperparameters, checked before anything heavy (one line)."""
    name = str(c.defense.name)
    get(name)
    hyper = {"seam": seam_hyper, "booster": booster_hyper, "vaccine": vaccine_hyper,
             "repnoise": repnoise_hyper, "tar": tar_hyper}.get(name)
    if hyper is not None:
        hyper(c)
    if trainable.trainable(c) == "lora":
        trainable.lora_config(c)


def seeded(c: mlc.ConfigDict) -> bool:
    """Whether the step's batches carry seed rows: the defense draws random numbers, or its
    LoRA adapters take dropout."""
    return get(str(c.defense.name)).seeded or trainable.seeded(c)


def checkpoint_target(c: mlc.ConfigDict, fn: ModelFn, base: Any) -> tuple[Any, Callable]:
    """(the tree a run's checkpointed ``params`` restore into, ``params -> the model's
    params``) for a run of ``c`` on base weights ``base``: ``base`` and the identity, or,
    for LoRA, fresh adapters and their merge into ``base`` (job=export)."""
    if trainable.trainable(c) != "lora":
        return base, lambda p: p
    frozen = trainable.lora_frozen(trainable.lora_config(c), int(c.seed))
    adapters, fixed = frozen.split(base)
    return adapters, lambda p: frozen.join(p, fixed)


class DefenseSource:
    """The training loop's batch source for a defense: ``SeamBatches.batch_at`` kept to the
    defense's keys, plus the step's seed rows (one uint32 per row, the step number) for a
    defense that draws random numbers. A function of (seed, step) alone, as the SEAM
    batches are, so a resumed run sees the same batches and draws the same numbers."""

    def __init__(self, batches: Any, defense: Defense, seeded: bool | None = None) -> None:
        self.batches = batches
        self.defense = defense
        self.seeded = defense.seeded if seeded is None else seeded
        self.empty_rows = getattr(batches, "empty_rows", None)

    def batch_at(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
        full = self.batches.batch_at(step, process_index, process_count)
        out = {k: full[k] for k in self.defense.batch_keys}
        if self.seeded:
            rows = len(out[self.defense.batch_keys[0]]["input_ids"])
            out[SEED_KEY] = np.full((rows,), step, np.uint32)
        return out


def source(c: mlc.ConfigDict, batches: Any) -> Any:
    """The batch source of ``c``'s defense around the SEAM job's batches (SEAM: unchanged)."""
    d = get(str(c.defense.name))
    return batches if d.name == "seam" else DefenseSource(batches, d, seeded(c))


__all__ = ["DEFENSES", "Defense", "DefenseSource", "NAMES", "check", "checkpoint_target", "get",
           "objective", "seeded", "source"]

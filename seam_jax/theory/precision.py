"""Precisions for the Theorem 1 check, and whether ``theta + eps d`` survives rounding.

A precision (an arm of the check) is a master dtype of theta, a compute dtype of the
forward pass, and the L_sd policy (``seam.sd_precision``) that decides in which dtype the
estimator's gradients are computed:

- ``float64``: float64 weights and compute (needs JAX's x64 mode, enabled here for it);
- ``float32``: float32 weights and compute;
- ``bfloat16``: float32 master weights, bfloat16 compute, the estimator in bfloat16
  (``sd_precision`` ``compute``/``faithful``: theta + eps d formed in float32, then cast);
- ``bfloat16_sd32``: float32 master weights, bfloat16 compute, ``sd_precision='float32'``:
  the estimator's gradients in float32 (for grad L_sd this arm *is* float32 arithmetic; the
  rest of a training step stays in bfloat16);
- ``bfloat16_pure``: bfloat16 weights and compute, the perturbation rounded into the
  bfloat16 weights (the original's pure-bfloat16 setting; theta itself is then the
  bfloat16 rounding of the reference's theta).

The finite difference of SEAM's Eq. 6 adds ``eps d`` (``|d|^2 = 1 - c^2``, spread over all
N parameters, about ``eps / sqrt(N)`` per coordinate) to theta in the master dtype; the
model then casts theta to the compute dtype. Where ``eps |d_i|`` is below half the spacing
of theta_i in either dtype, coordinate i of the perturbation is rounded away, and
``g(theta + eps d) - g(theta)`` measures rounding, not curvature. ``perturbation_survival``
counts the coordinates that survive; ``warn_if_vanishing`` says so in the log when most
do not, and names the estimator that has no such problem (``exact_hvp``, a ``jax.jvp``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig, parse_dtype
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.objective import sd_model, widened_config
from seam_jax.seam.sd_grad import geometry, widens

log = logging.getLogger(__name__)

Tree = Any

# Below this fraction of surviving coordinates the finite difference is mostly rounding.
VANISHING_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class Precision:
    """A dtype setting: theta is stored in ``param_dtype``, the model computes in ``compute_dtype``."""

    name: str
    param_dtype: str
    compute_dtype: str
    sd_precision: str = "compute"

    @property
    def needs_x64(self) -> bool:
        return "float64" in (self.param_dtype, self.compute_dtype)

    @property
    def sd_compute_dtype(self) -> str:
        """The dtype the L_sd estimator's gradients are computed in under ``sd_precision``."""
        return "float32" if widens(self.sd_precision, self.compute_dtype) else self.compute_dtype


PRECISIONS: dict[str, Precision] = {
    "float64": Precision("float64", "float64", "float64"),
    "float32": Precision("float32", "float32", "float32"),
    "bfloat16": Precision("bfloat16", "float32", "bfloat16"),
    "bfloat16_sd32": Precision("bfloat16_sd32", "float32", "bfloat16", sd_precision="float32"),
    "bfloat16_pure": Precision("bfloat16_pure", "bfloat16", "bfloat16", sd_precision="faithful"),
}


def get_precision(name: str) -> Precision:
    """The precision called ``name``, or a ConfigError listing the choices."""
    key = str(name).strip()
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {key!r} for the Theorem 1 check; choose among "
                          f"{sorted(PRECISIONS)} (bfloat16 = float32 master weights, bfloat16 compute; "
                          "_sd32: the L_sd gradients in float32; _pure: bfloat16 weights too)")
    return PRECISIONS[key]


def parse_precisions(text: str | tuple[str, ...] | list[str]) -> list[Precision]:
    """``"float64,float32,bfloat16"`` -> precisions, in order, without repeats."""
    names = text.split(",") if isinstance(text, str) else list(text)
    names = [n.strip() for n in names if str(n).strip()]
    if not names:
        raise ConfigError("theory.dtypes is empty; list one or more of "
                          f"{sorted(PRECISIONS)}, comma-separated")
    out: list[Precision] = []
    for n in names:
        p = get_precision(n)
        if p not in out:
            out.append(p)
    return out


@contextlib.contextmanager
def precision_scope(p: Precision) -> Iterator[None]:
    """Run the body with float64 available when ``p`` needs it, else in JAX's default (x64 off).

    Raises:
      ConfigError: float64 was requested and JAX cannot provide it (x64 cannot be enabled,
        or the backend has no float64 arithmetic).
    """
    with jax.enable_x64(p.needs_x64):
        if p.needs_x64:
            _check_float64(p)
        yield


def _check_float64(p: Precision) -> None:
    # enable_x64 can be a silent no-op (a patched or pinned config), and some backends lack
    # float64 kernels: test both before a sweep spends minutes computing in float32 by accident.
    try:
        x = jnp.ones((2, 2), jnp.float64)
        y = jax.block_until_ready(x @ x)
    except Exception as e:  # a backend without float64 raises its own error type
        raise ConfigError(f"precision {p.name!r} needs float64, which the "
                          f"{jax.default_backend()} backend cannot compute: {e}") from e
    if y.dtype != jnp.float64:
        raise ConfigError(f"precision {p.name!r} needs float64 but JAX gives {y.dtype} even "
                          "with jax.enable_x64(True); drop float64 from theory.dtypes or set "
                          "JAX_ENABLE_X64=1")


def model_for(cfg: ModelConfig, p: Precision) -> ModelFn:
    """The model function of ``p``'s L_sd estimator for ``cfg`` (call inside ``precision_scope(p)``):
    master ``p.param_dtype``, compute ``p.sd_compute_dtype`` (where that widens the compute
    dtype, with float32 products: ``objective.widened_config``, as the SEAM step does)."""
    cfg = cfg.replace(param_dtype=p.param_dtype, dtype=p.compute_dtype)
    return ModelFn(widened_config(cfg) if p.sd_compute_dtype != p.compute_dtype else cfg)


def cast_params(params: Params, p: Precision) -> Params:
    """theta in ``p``'s master dtype (exact for float32 -> float64; the same theta everywhere)."""
    dt = parse_dtype(p.param_dtype)
    return jax.tree.map(lambda x: jnp.asarray(x, dt), params)


# ------------------------------------------------------------ perturbation survival
def perturbation_survival(params: Params, d: Tree, eps: float, compute_dtype: Any) -> float:
    """Fraction of the coordinates with ``d_i != 0`` where ``cast(theta_i + eps d_i) != cast(theta_i)``.

    ``theta + eps d`` is formed as the estimators form it (``sd_grad.perturb``: in the
    master dtype of ``params``, accumulated in at least float32), then both theta and the
    perturbed theta are cast to ``compute_dtype`` (a name or a dtype). A coordinate counts
    as changed only if it still differs after that cast, since only then can the model's
    output see it. Coordinates with ``d_i = 0`` (e.g. embedding rows of tokens absent from
    the batch) are not meant to move and are left out of the count; for a direction
    without zeros this is the plain fraction of all coordinates. Returns 1.0 for ``d = 0``.
    """
    cd = parse_dtype(compute_dtype)
    changed, moving = 0, 0
    for p, di in zip(jax.tree.leaves(params), jax.tree.leaves(d)):
        c, m = _changed(p, di, eps, cd)
        changed, moving = changed + int(c), moving + int(m)
    return changed / moving if moving else 1.0


@jax.jit
def _count_changed(p: jax.Array, di: jax.Array, eps: jax.Array, probe: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    acc = jnp.promote_types(p.dtype, jnp.float32)
    moved = (p.astype(acc) + eps.astype(acc) * di.astype(acc)).astype(p.dtype)
    # Counted per leaf in int32: the largest leaf (an embedding) stays far below 2**31 coordinates.
    changed = jnp.sum(moved.astype(probe.dtype) != p.astype(probe.dtype), dtype=jnp.int32)
    return changed, jnp.sum(di != 0, dtype=jnp.int32)


def _changed(p: jax.Array, di: jax.Array, eps: float, cd: Any) -> tuple[jax.Array, jax.Array]:
    # eps in the accumulation dtype, as sd_grad.perturb's Python float would be.
    acc = jnp.promote_types(jnp.asarray(p).dtype, jnp.float32)
    return _count_changed(jnp.asarray(p), jnp.asarray(di), jnp.asarray(eps, acc), jnp.zeros((), cd))


def warn_if_vanishing(params: Params, d: Tree, eps: float, compute_dtype: Any, *, name: str = "d",
                      threshold: float = VANISHING_FRACTION,
                      logger: logging.Logger | None = None) -> float:
    """Log a warning when fewer than ``threshold`` of the coordinates of ``theta + eps d`` survive.

    Returns the surviving fraction (see ``perturbation_survival``).
    """
    frac = perturbation_survival(params, d, eps, compute_dtype)
    if frac < threshold:
        master = jnp.asarray(jax.tree.leaves(params)[0]).dtype
        (logger or log).warning(
            "the finite-difference perturbation eps*%s (eps=%g) survives rounding in only %.2f%% of "
            "the coordinates (master %s, compute %s): the Hessian-free estimate of grad L_sd is "
            "then mostly rounding. Use seam.sd_precision='float32' (the difference's gradients in "
            "float32), seam.estimator='exact_hvp' (an exact jax.jvp), or a larger eps.", name, eps, 100 * frac, master, jnp.dtype(parse_dtype(compute_dtype)))
    return frac


def check_perturbation(fn: ModelFn, params: Params, batches: dict[str, dict], eps: float,
                       estimator: str, *, compute_dtype: Any = None) -> dict[str, float] | None:
    """Survival of ``theta + eps d_a`` and ``theta + eps d_b`` at one SEAM step, with warnings.

    For the training job: ``batches`` holds ``adv`` and ``bgn`` (``SeamBatches.batch_at``);
    ``d_a``, ``d_b`` come from ``g_a = grad l(theta; adv)``, ``g_b = grad l(theta; bgn)``.
    Returns None for estimators that do not perturb theta (``exact_hvp``, ``autodiff``).
    """
    if estimator not in ("hessian_free", "central"):
        return None
    cd = compute_dtype if compute_dtype is not None else fn.config.dtype
    grad_fn = jax.jit(jax.grad(lambda p, b: masked_ce(fn, p, b)))
    geo = geometry(grad_fn(params, batches["adv"]), grad_fn(params, batches["bgn"]))
    return {name: warn_if_vanishing(params, d, eps, cd, name=name)
            for name, d in (("d_a", geo.d_a), ("d_b", geo.d_b))}


# ------------------------------------------------------------ the realised perturbation
# Below this cosine between the perturbation the compute dtype sees and eps*d, the finite
# difference is mostly rounding: at cos 0.9, sin^2 = 0.19 of |delta|^2 is a rounding
# component orthogonal to eps*d, and the difference measures H along a direction 26
# degrees off d, scaled by |delta|/|eps d|, which such a cast makes far from 1 as well.
REALISED_COS_MIN = 0.9


@jax.jit
def _realised_sums(p: jax.Array, di: jax.Array, eps: jax.Array, probe: jax.Array) -> jax.Array:
    acc = jnp.promote_types(p.dtype, jnp.float32)
    step = eps.astype(acc) * di.astype(acc)
    moved = (p.astype(acc) + step).astype(p.dtype)  # sd_grad.perturb
    # What the compute dtype sees: both points cast, then differenced in the accumulation dtype.
    delta = moved.astype(probe.dtype).astype(acc) - p.astype(probe.dtype).astype(acc)
    err = delta - step
    return jnp.stack([jnp.sum(delta * step), jnp.sum(delta * delta), jnp.sum(step * step),
                      jnp.sum(err * err)])


def realised_perturbation(params: Params, d: Tree, eps: float, compute_dtype: Any) -> dict[str, float]:
    """``delta = cast(theta + eps d) - cast(theta)``, the perturbation the forward pass sees,
    against ``eps d``: ``cos`` ``cos(delta, eps d)``, ``rel_error`` ``|delta - eps d| / |eps d|``,
    ``norm_ratio`` ``|delta| / |eps d|`` and ``survival`` (``perturbation_survival``).

    ``theta + eps d`` is formed as ``sd_grad.perturb`` forms it, in the master dtype of
    ``params``; ``cast`` is to ``compute_dtype``. Unlike the survival count, this weighs
    each coordinate by what it contributes: a surviving coordinate jumps by a whole ulp,
    not by ``eps d_i``. Sums are per leaf in the accumulation dtype, then in Python floats.
    """
    cd = parse_dtype(compute_dtype)
    tot = [0.0, 0.0, 0.0, 0.0]
    for p, di in zip(jax.tree.leaves(params), jax.tree.leaves(d)):
        p = jnp.asarray(p)
        acc = jnp.promote_types(p.dtype, jnp.float32)
        sums = _realised_sums(p, jnp.asarray(di), jnp.asarray(eps, acc), jnp.zeros((), cd))
        tot = [a + float(b) for a, b in zip(tot, sums)]
    dot, dd, ss, ee = tot
    cos = dot / math.sqrt(dd * ss) if dd > 0 and ss > 0 else (1.0 if ss == 0 else 0.0)
    rel = math.sqrt(ee / ss) if ss > 0 else 0.0
    ratio = math.sqrt(dd / ss) if ss > 0 else 1.0
    return {"cos": cos, "rel_error": rel, "norm_ratio": ratio,
            "survival": perturbation_survival(params, d, eps, cd)}


def check_sd_precision(fn: ModelFn, params: Params, batches: dict[str, dict], hp: Any, *,
                       threshold: float = REALISED_COS_MIN,
                       logger: logging.Logger | None = None) -> dict[str, Any] | None:
    """Before training: refuse an L_sd finite difference that would be mostly rounding.

    ``hp`` is the job's ``seam.objective.SeamHyper``. For the finite-difference estimators
    (and ``beta != 0``), ``d_a``, ``d_b`` come from the first step's batches (``adv``,
    ``bgn``) by the estimator's own program (``objective.sd_model``), and the realised
    perturbation of each is measured in the dtype that program computes in. Returns the
    measurements (``None`` when nothing is perturbed: ``exact_hvp``, ``autodiff``, ``beta = 0``).

    Raises:
      ConfigError: ``cos(delta, eps d) < threshold`` for ``d_a`` or ``d_b`` and the policy
        is not ``faithful`` (which only logs it: the original's arithmetic, on purpose).
    """
    if not hp.beta or hp.estimator not in ("hessian_free", "central"):
        return None
    fn_sd = sd_model(fn, hp)
    cd = fn_sd.config.dtype
    grad_fn = jax.jit(jax.grad(lambda p, b: masked_ce(fn_sd, p, b)))
    # One program (jit), not op by op: eager ops on arrays of several processes hang on CPU.
    geo = jax.jit(geometry)(grad_fn(params, batches["adv"]), grad_fn(params, batches["bgn"]))
    out: dict[str, Any] = {"sd_precision": hp.sd_precision, "compute_dtype": str(cd), "eps": hp.eps,
                           "threshold": threshold}
    for name, d in (("d_a", geo.d_a), ("d_b", geo.d_b)):
        out[name] = realised_perturbation(params, d, hp.eps, cd)
    name = min(("d_a", "d_b"), key=lambda k: out[k]["cos"])
    worst = out[name]
    if worst["cos"] >= threshold:
        return out
    master = jnp.asarray(jax.tree.leaves(params)[0]).dtype
    what = (f"the L_sd finite difference would be mostly rounding: eps*{name} (eps={hp.eps:g}) "
            f"as {jnp.dtype(parse_dtype(cd))} compute sees it (master {master}) has cos "
            f"{worst['cos']:.3f} with eps*{name} (needs >= {threshold}) and relative error "
            f"{worst['rel_error']:.3g}")
    if hp.sd_precision == "faithful":
        (logger or log).warning("seam.sd_precision='faithful': %s; training with it as the original does", what)
        return out
    if widens("float32", cd):
        fix = "use --config.seam.sd_precision=float32 (float32 gradients for the difference)"
    elif jnp.promote_types(master, jnp.float32) != master:
        fix = "store float32 master weights (--config.model.param_dtype=float32)"
    else:
        fix = "use a larger --config.seam.eps"
    raise ConfigError(f"seam.sd_precision={hp.sd_precision!r}: {what}; {fix}, or "
                      "--config.seam.estimator=exact_hvp, or --config.seam.sd_precision=faithful "
                      "to reproduce the original's arithmetic")

"""Precisions for the Theorem 1 check, and whether ``theta + eps d`` survives rounding.

A precision is a pair (master dtype of theta, compute dtype of the forward pass):

- ``float64``: float64 weights and compute (needs JAX's x64 mode, enabled here for it);
- ``float32``: float32 weights and compute;
- ``bfloat16``: float32 master weights, bfloat16 compute (the usual mixed precision).

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
from typing import Any, Iterator

import jax
import jax.numpy as jnp

from seam_jax.errors import ConfigError
from seam_jax.model.api import ModelFn, Params
from seam_jax.model.config import ModelConfig, parse_dtype
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.sd_grad import geometry

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

    @property
    def needs_x64(self) -> bool:
        return "float64" in (self.param_dtype, self.compute_dtype)


PRECISIONS: dict[str, Precision] = {
    "float64": Precision("float64", "float64", "float64"),
    "float32": Precision("float32", "float32", "float32"),
    "bfloat16": Precision("bfloat16", "float32", "bfloat16"),
}


def get_precision(name: str) -> Precision:
    """The precision called ``name``, or a ConfigError listing the choices."""
    key = str(name).strip()
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {key!r} for the Theorem 1 check; choose among "
                          f"{sorted(PRECISIONS)} (bfloat16 = float32 master weights, bfloat16 compute)")
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
    """The model function of ``cfg`` in precision ``p`` (call inside ``precision_scope(p)``)."""
    return ModelFn(cfg.replace(param_dtype=p.param_dtype, dtype=p.compute_dtype))


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
            "then mostly rounding. Use seam.estimator='exact_hvp' (an exact jax.jvp), or a wider "
            "dtype, or a larger eps.", name, eps, 100 * frac, master, jnp.dtype(parse_dtype(compute_dtype)))
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

"""The gradient of the self-destruction loss ``L_sd = cos(g_a, g_b)``, three ways.

With ``gbar = g/|g|``, ``c = gbar_a . gbar_b``, ``d_a = gbar_b - c gbar_a`` and
``d_b = gbar_a - c gbar_b``:

    exact:         grad L_sd = H_a d_a / |g_a| + H_b d_b / |g_b|
    hessian_free:  [g_a(theta + eps d_a) - g_a(theta)] / (eps |g_a|) + (same for b)   (Eq. 6)
    central:       [g_a(theta + eps d_a) - g_a(theta - eps d_a)] / (2 eps |g_a|) + ...

``exact_hvp`` gets ``H d`` from ``jax.jvp`` over ``jax.grad`` (forward-over-reverse);
``autodiff`` differentiates the cosine itself (reverse-over-reverse), the ground
truth for small models. The perturbed gradients are independent: ``vmap=True``
computes them as one batched evaluation over the stacked (params, batch) pairs,
``vmap=False`` one after the other, holding fewer parameter-sized buffers.

Norms, ``c`` and the directions are computed once, in at least float32, and the
perturbation is added to the (float32) master parameters before any compute cast.

Precision (``SD_PRECISIONS``, chosen by ``seam.sd_precision``). With a model that
computes in bfloat16, ``theta + eps d`` is formed in the float32 master weights but the
forward pass casts it to bfloat16, whose spacing (2^-8 relative) is far above
``eps |d_i|`` (about ``eps / sqrt(N)``): the cast rounds most of the perturbation away
and the difference measures rounding. The policies:

- ``float32``: the gradients that enter the estimator (at theta and at the perturbed
  points, or the HVPs) are computed by one float32-compute program
  (``theta_grads`` / ``perturbed_grads`` with the same ``grad_fn``); the rest of the
  step keeps the model's compute dtype. For a model already computing in float32 or
  wider it is the ``compute`` policy, bit for bit.
- ``compute``: the estimator in the model's compute dtype, reusing the step's own
  ``g_a`` (lens) and ``g_b`` at theta (the cheapest; a lossy finite difference is refused
  by the training job's check).
- ``faithful``: the original's arithmetic (gradients in the compute dtype, the
  perturbation added to the stored parameters and then cast), accepted even where it
  is mostly rounding: for reproducing the original.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from seam_jax.model.api import Params
from seam_jax.tree import acc_dtype as _acc
from seam_jax.tree import safe_norm as _safe
from seam_jax.tree import tree_axpy, tree_dot, tree_norm, tree_scale, tree_sub

Tree = Any
GradFn = Callable[[Params, dict], Tree]  # (params, batch) -> gradient of l(params; batch)

ESTIMATORS = ("hessian_free", "central", "exact_hvp", "autodiff")
SD_PRECISIONS = ("float32", "compute", "faithful")


def widens(precision: str, compute_dtype: Any) -> bool:
    """Whether policy ``precision`` computes the estimator's gradients wider than ``compute_dtype``."""
    dt = jnp.dtype(compute_dtype)
    return precision == "float32" and jnp.promote_types(dt, jnp.float32) != dt


# ----------------------------------------------------------------- geometry
class Geometry(NamedTuple):
    """The quantities of L_sd at theta, computed once per step."""

    norm_a: jax.Array
    norm_b: jax.Array
    cos: jax.Array
    d_a: Tree
    d_b: Tree


def geometry(g_a: Tree, g_b: Tree) -> Geometry:
    na, nb = tree_norm(g_a), tree_norm(g_b)
    dot = tree_dot(g_a, g_b)
    c = dot / (_safe(na) * _safe(nb))
    ua, ub = tree_scale(1.0 / _safe(na), g_a), tree_scale(1.0 / _safe(nb), g_b)
    d_a = tree_axpy(-c, ua, ub)
    d_b = tree_axpy(-c, ub, ua)
    return Geometry(na, nb, c, d_a, d_b)


def perturb(params: Params, d: Tree | None, eps: jax.Array | float) -> Params:
    """``theta + eps d`` on the master parameters (float32 or wider, never a compute cast).

    ``d = None`` is theta itself (no arithmetic: the unperturbed point of a difference).
    """
    if d is None:
        return params
    return jax.tree.map(lambda p, di: (p.astype(_acc(p)) + eps * di.astype(_acc(p))).astype(p.dtype), params, d)


def _stack(*trees: Tree) -> Tree:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Tree, n: int) -> list[Tree]:
    return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


# ----------------------------------------------------------------- estimators
def perturbed_grads(grad_fn: GradFn, params: Params, points: list[tuple[Tree, float, dict]],
                    *, vmap: bool) -> list[Tree]:
    """``grad l(theta + eps_i d_i; batch_i)`` for each (d_i, eps_i, batch_i); ``d_i = None`` is theta."""
    batches = [b for _, _, b in points]
    shapes = {(jax.tree.structure(b), tuple(x.shape for x in jax.tree.leaves(b))) for b in batches}
    if vmap and len(shapes) == 1:
        thetas = [perturb(params, d, e) for d, e, _ in points]
        grads = jax.vmap(grad_fn)(_stack(*thetas), _stack(*batches))
        return _unstack(grads, len(points))
    # Sequential: each perturbed copy is built right before its gradient, so only
    # one copy of theta needs to be live at a time.
    return [grad_fn(perturb(params, d, e), b) for d, e, b in points]


def theta_grads(grad_fn: GradFn, params: Params, batches: list[dict], *, vmap: bool) -> list[Tree]:
    """``grad l(theta; batch_i)`` by the very program of ``perturbed_grads``, at ``theta + 0 theta``.

    ``theta + 0 theta`` is theta exactly (finite theta), formed by the same arithmetic as
    ``theta + eps d``: fed the jitted step's own parameter buffer instead, XLA compiled the
    gradient at theta differently from the one at an intermediate ``theta + eps d``
    (1-ulp differences at eps = 0 on the tiny model, sequential form), which Eq. 6 then
    divides by eps. A difference of the two now holds no program-to-program round-off.
    """
    return perturbed_grads(grad_fn, params, [(params, 0.0, b) for b in batches], vmap=vmap)


def sd_gradient(
    estimator: str,
    grad_fn: GradFn,
    params: Params,
    batch_a: dict,
    batch_b: dict,
    g_a: Tree,
    g_b: Tree,
    geo: Geometry,
    *,
    eps: float = 1e-3,
    vmap: bool = True,
) -> Tree:
    """``grad L_sd`` at ``params`` by the chosen estimator (see the module docstring)."""
    if estimator == "hessian_free":
        gp_a, gp_b = perturbed_grads(grad_fn, params, [(geo.d_a, eps, batch_a), (geo.d_b, eps, batch_b)],
                                     vmap=vmap)
        return forward_difference(gp_a, gp_b, g_a, g_b, geo, eps)
    if estimator == "central":
        gp_a, gp_b, gm_a, gm_b = perturbed_grads(
            grad_fn, params, [(geo.d_a, eps, batch_a), (geo.d_b, eps, batch_b),
                              (geo.d_a, -eps, batch_a), (geo.d_b, -eps, batch_b)], vmap=vmap)
        return central_difference(gp_a, gp_b, gm_a, gm_b, geo, eps)
    if estimator == "exact_hvp":
        hv_a = hvp(grad_fn, params, batch_a, geo.d_a)
        hv_b = hvp(grad_fn, params, batch_b, geo.d_b)
        return _combine(hv_a, hv_b, geo, 1.0)
    if estimator == "autodiff":
        return jax.grad(lambda p: cosine(grad_fn(p, batch_a), grad_fn(p, batch_b)))(params)
    raise ValueError(f"unknown L_sd estimator {estimator!r}; choose one of {ESTIMATORS}")


def forward_difference(gp_a: Tree, gp_b: Tree, g_a: Tree, g_b: Tree, geo: Geometry,
                       eps: float) -> Tree:
    """Eq. 6 from its gradients: ``[gp_a - g_a] / (eps |g_a|) + [gp_b - g_b] / (eps |g_b|)``.

    ``gp_a = g_a(theta + eps d_a)``, ``gp_b = g_b(theta + eps d_b)`` (``perturbed_grads``).
    """
    return _combine(tree_sub(gp_a, g_a), tree_sub(gp_b, g_b), geo, eps)


def central_difference(gp_a: Tree, gp_b: Tree, gm_a: Tree, gm_b: Tree, geo: Geometry,
                       eps: float) -> Tree:
    """``[gp_a - gm_a] / (2 eps |g_a|) + (same for b)``, ``gm = g(theta - eps d)``."""
    return _combine(tree_sub(gp_a, gm_a), tree_sub(gp_b, gm_b), geo, 2 * eps)


def _inverse(step: float, norm: jax.Array) -> jax.Array:
    # 1/(step |g|), and 0 for a zero gradient (an empty loss mask), where the direction
    # is undefined and 1/(eps * tiny) would overflow to inf (then 0 * inf = NaN).
    return jnp.where(norm > 0, 1.0 / (step * _safe(norm)), 0.0)


def _combine(diff_a: Tree, diff_b: Tree, geo: Geometry, step: float) -> Tree:
    sa = _inverse(step, geo.norm_a)
    sb = _inverse(step, geo.norm_b)
    return jax.tree.map(lambda x, y: (sa * x.astype(_acc(x)) + sb * y.astype(_acc(y))).astype(x.dtype),
                        diff_a, diff_b)


def hvp(grad_fn: GradFn, params: Params, batch: dict, d: Tree) -> Tree:
    """``H d`` for the Hessian of ``l(.; batch)`` at ``params`` (forward-over-reverse)."""
    d = jax.tree.map(lambda x, p: x.astype(p.dtype), d, params)
    return jax.jvp(lambda p: grad_fn(p, batch), (params,), (d,))[1]


def cosine(a: Tree, b: Tree) -> jax.Array:
    return tree_dot(a, b) / (_safe(tree_norm(a)) * _safe(tree_norm(b)))

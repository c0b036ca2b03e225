"""The gradient of the self-destruction loss ``L_sd = cos(g_a, g_b)``, three ways.

With ``gbar = g/|g|``, ``c = gbar_a . gbar_b``, ``d_a = gbar_b - c gbar_a`` and
``d_b = gbar_a - c gbar_b``:

    exact:         grad L_sd = H_a d_a / |g_a| + H_b d_b / |g_b|
    hessian_free:  [g_a(theta + eps d_a) - g_a(theta)] / (eps |g_a|) + (same for b)   (Eq. 6)
    central:       [g_a(theta + eps d_a) - g_a(theta - eps d_a)] / (2 eps |g_a|) + ...

``exact_hvp`` gets ``H d`` from ``jax.jvp`` over ``jax.grad`` (forward-over-reverse);
``autodiff`` differentiates the cosine itself (reverse-over-reverse), the ground
truth for small models. The perturbed gradients are independent: ``vmap=True``
computes them as one batched evaluation over the stacked (params, batch) pairs
(``perturbed_grads``), ``vmap=False`` one side after the other (``by_sides``), each
side's term added to the result before the next side's perturbed copy of theta exists:
one copy and one gradient at it alive at a time instead of two of each. The order is a
loop's (``in_order``): XLA:CPU does not otherwise keep to the order of the code.

Norms and ``c`` are computed once, in at least float32, the directions where they are
used, and the perturbation is added to the (float32) master parameters before any
compute cast.

Precision (``SD_PRECISIONS``, chosen by ``seam.sd_precision``). With a model that
computes in bfloat16, ``theta + eps d`` is formed in the float32 master weights but the
forward pass casts it to bfloat16, whose spacing (2^-8 relative) is far above
``eps |d_i|`` (about ``eps / sqrt(N)``): the cast rounds most of the perturbation away
and the difference measures rounding. The policies:

- ``float32``: the gradients that enter the estimator (at theta and at the perturbed
  points, or the HVPs) are computed by one float32-compute program
  (``theta_grads`` with ``perturbed_grads``, or with ``gradient_at``); the rest of the
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
    """The quantities of L_sd at theta, computed once per step.

    ``d_a``, ``d_b``: the directions, or None (``geometry(..., directions=False)``): the
    estimator then forms each from ``g_a``, ``g_b`` where it is used, and XLA fuses it into
    that use instead of holding two more parameter-sized buffers (the train step).
    """

    norm_a: jax.Array
    norm_b: jax.Array
    cos: jax.Array
    d_a: Tree | None
    d_b: Tree | None


def geometry(g_a: Tree, g_b: Tree, *, directions: bool = True) -> Geometry:
    na, nb = tree_norm(g_a), tree_norm(g_b)
    dot = tree_dot(g_a, g_b)
    c = dot / (_safe(na) * _safe(nb))
    if not directions:
        return Geometry(na, nb, c, None, None)
    return Geometry(na, nb, c, _direction(g_a, g_b, na, nb, c), _direction(g_b, g_a, nb, na, c))


def _direction(g_own: Tree, g_other: Tree, n_own: jax.Array, n_other: jax.Array, c: jax.Array) -> Tree:
    """``d = gbar_other - c gbar_own``: ``d_a`` from (g_a, g_b), ``d_b`` from (g_b, g_a)."""
    return tree_axpy(-c, tree_scale(1.0 / _safe(n_own), g_own), tree_scale(1.0 / _safe(n_other), g_other))


def _pick(side: int, a: Tree, b: Tree) -> Tree:
    """``a`` on side 0, ``b`` on side 1."""
    return a if side == 0 else b


def direction(geo: Geometry, side: int, g_a: Tree, g_b: Tree) -> Tree:
    """``d_a`` (side 0) or ``d_b`` (side 1): the geometry's own, or formed from ``g_a``, ``g_b``."""
    if geo.d_a is not None:
        return _pick(side, geo.d_a, geo.d_b)
    n_own, n_other = _pick(side, geo.norm_a, geo.norm_b), _pick(side, geo.norm_b, geo.norm_a)
    return _direction(_pick(side, g_a, g_b), _pick(side, g_b, g_a), n_own, n_other, geo.cos)


def anchored(zero: jax.Array, tree: Tree) -> Tree:
    """``tree + zero`` leaf by leaf (``in_order``'s loop counter, 0): the same values (bit for
    bit, but for the sign of a zero), which XLA can no longer compute before the loop."""
    return None if tree is None else jax.tree.map(lambda x: x + zero.astype(x.dtype), tree)


def side_direction(geo: Geometry, side: int, g_a: Tree, g_b: Tree) -> Callable[[jax.Array], Tree]:
    """``zero -> d`` of one side (``direction``) with everything it reads ``anchored`` to a loop
    counter: ``gradient_at``'s ``direction`` in the sequential estimators. (Unanchored, an eager
    call's geometry scalars are constants, which XLA folds into each program its own way.)"""
    return lambda z: direction(Geometry(*anchored(z, tuple(geo))), side, anchored(z, g_a), anchored(z, g_b))


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


def _same_shapes(trees: list[Tree]) -> bool:
    return len({(jax.tree.structure(t), tuple((x.shape, jnp.result_type(x)) for x in jax.tree.leaves(t)))
                for t in trees}) == 1


# ----------------------------------------------------------------- one after another
def in_order(name: str, body: Callable[[Tree, Any, jax.Array], Tree], carry: Tree, items: list[Any],
             ok: jax.Array) -> Tree:
    """``carry = body(carry, item, zero)`` for each item, one at a time; none at all where ``ok``
    is False.

    A train step makes several gradient evaluations, each with parameter-sized results and
    its own activations. Written one after another in a traced function they are only data
    dependencies, and XLA:CPU's scheduler overlaps independent ones (it ran the SEAM step's
    L_up and g_b passes before the logit lens, all their results alive at once), while
    ``lax.optimization_barrier`` does not order them on XLA:CPU (its pipeline expands
    barriers away before it schedules). A while loop does: each item runs as the body of
    a loop of its own, whose input is the previous one's output, so XLA runs them in order;
    each one's buffers live only within it, and the carry is updated in place. The trip
    count (``ok``: 1 or 0) is data-dependent, so XLA does not inline the loop. An item may
    hold Python values (a side, a coefficient): the body is traced once per item.

    ``zero`` is the loop's counter, 0 in its one iteration. XLA hoists work that reads
    nothing but the loop's inputs out of the loop (it did so with whole gradient
    evaluations, which it then scheduled as freely as before), so a body passes the inputs
    its heavy work starts from through ``anchored(zero, ...)``.

    ``name``: the loops' named scope (``name0``, ``name1``, ...). ``ok``: a traced bool;
    False runs no body. The callers pass "the step is finite so far":
    a step that fails it is skipped whatever its gradient, and leaves the evaluations it no
    longer needs undone.
    """
    trips = jnp.where(ok, 1, 0).astype(jnp.int32)
    for k, item in enumerate(items):
        with jax.named_scope(f"{name}{k}"):  # names each loop in XLA's dumps and profiles
            # while_loop, not fori_loop: with concrete bounds (an eager call) fori_loop becomes a
            # scan of length 1, which XLA inlines; here the trip count is always an operand.
            _, _, carry = jax.lax.while_loop(
                lambda c: c[0] < c[1],
                lambda c, item=item: (c[0] + 1, c[1], body(c[2], item, c[0])),
                (jnp.zeros((), jnp.int32), trips, carry))
    return carry


# ----------------------------------------------------------------- estimators
def perturbed_grads(grad_fn: GradFn, params: Params, points: list[tuple[Tree, float, dict]]) -> list[Tree]:
    """``grad l(theta + eps_i d_i; batch_i)`` for each (d_i, eps_i, batch_i), as one vmapped
    evaluation over the stacked points (``vmap=True``); ``d_i = None`` is theta. Batches of
    different shapes cannot be stacked: they go one after another, as written."""
    batches = [b for _, _, b in points]
    if _same_shapes(batches):
        thetas = [perturb(params, d, e) for d, e, _ in points]
        grads = jax.vmap(grad_fn)(_stack(*thetas), _stack(*batches))
        return _unstack(grads, len(points))
    return [grad_fn(perturb(params, d, e), b) for d, e, b in points]


def theta_grads(grad_fn: GradFn, params: Params, batches: list[dict], *, vmap: bool,
                ok: jax.Array | bool = True) -> list[Tree]:
    """``grad l(theta; batch_i)`` at ``theta + 0 theta``, as the perturbed gradients are formed.

    ``theta + 0 theta`` is theta exactly (finite theta), formed by the same arithmetic as
    ``theta + eps d``: fed the jitted step's own parameter buffer instead, XLA compiled the
    gradient at theta differently from the one at an intermediate ``theta + eps d``
    (1-ulp differences at eps = 0 on the tiny model, sequential form), which Eq. 6 then
    divides by eps. ``vmap=True``: by ``perturbed_grads``' own vmapped program.
    ``vmap=False``: one after another (``in_order``).
    """
    if vmap:
        return perturbed_grads(grad_fn, params, [(params, 0.0, b) for b in batches])
    ok = jnp.asarray(ok)

    def fill(slots: list[Tree], item: tuple[int, dict], zero: jax.Array) -> list[Tree]:
        k, batch = item
        slots = list(slots)
        slots[k] = gradient_at(grad_fn, params, lambda z: anchored(z, params), 0.0, batch, zero == 0)
        return slots

    zeros = [jax.tree.map(jnp.zeros_like, params) for _ in batches]
    return in_order("theta_grads", fill, zeros, list(enumerate(batches)), ok)


def gradient_at(grad_fn: GradFn, params: Params, direction: Callable[[jax.Array], Tree], eps: float,
                batch: dict, ok: jax.Array) -> Tree:
    """``grad l(theta + eps d; batch)`` with ``d = direction(zero)``, the body of a loop of its
    own (``in_order``).

    ``direction`` builds d inside the loop from its counter (``anchored``), so XLA fuses it
    into ``theta + eps d``: no buffer of its own. Every gradient the sequential estimators
    take, at theta (``theta + 0 theta``) or at a perturbed point, is this program: XLA
    compiles a loop body on its own, so the gradients agree bit for bit wherever the point
    does, whichever estimators share them (two tests check it). Inlined into the code around
    it (a loop of a trip count XLA knows to be 1), each was fused its own way: 1-ulp
    differences, which a forward difference divides by eps. ``ok``: a bool XLA cannot know
    before it runs (inside ``in_order``'s body, ``zero == 0``), or the loop is inlined after
    all.
    """
    def body(_: Tree, __: None, zero: jax.Array) -> Tree:
        # eps as the loop computes it (no constant to fold), in the master parameters' precision
        e = zero.astype(_acc(jax.tree.leaves(params)[0])) + eps
        return grad_fn(perturb(params, direction(zero), e), batch)

    return in_order("gradient_at", body, jax.tree.map(jnp.zeros_like, params), [None], ok)


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
    into: Tree | None = None,
    weight: float = 1.0,
) -> Tree:
    """``grad L_sd`` at ``params`` by the chosen estimator (see the module docstring).

    ``into``: return ``into + weight * grad L_sd`` instead, in ``into``'s dtype (the train
    step's running total; ``weight`` is read only with ``into``). ``geo`` may leave its
    directions out (``geometry(..., directions=False)``).

    The finite differences with ``vmap=False`` and ``exact_hvp`` go one side at a time
    (``in_order``): side a's term ``[g_a(theta + eps d_a) - g_a(theta)] / (eps |g_a|)`` (or
    its central or exact form) is added to the result before side b's perturbed copy of
    theta is formed, so one copy and one gradient at it are alive at a time besides
    ``g_a``, ``g_b`` and the result. Where ``geo.cos`` or a norm is not finite no side is
    evaluated and the result is NaN. With ``into=None`` the arithmetic is
    ``forward_difference``'s, ``central_difference``'s and ``_combine``'s, bit for bit.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown L_sd estimator {estimator!r}; choose one of {ESTIMATORS}")
    if estimator == "autodiff" or vmap and estimator in ("hessian_free", "central"):
        d_a, d_b = direction(geo, 0, g_a, g_b), direction(geo, 1, g_a, g_b)
        if estimator == "hessian_free":
            gp_a, gp_b = perturbed_grads(grad_fn, params, [(d_a, eps, batch_a), (d_b, eps, batch_b)])
            g_sd = forward_difference(gp_a, gp_b, g_a, g_b, geo, eps)
        elif estimator == "central":
            gp_a, gp_b, gm_a, gm_b = perturbed_grads(
                grad_fn, params, [(d_a, eps, batch_a), (d_b, eps, batch_b),
                                  (d_a, -eps, batch_a), (d_b, -eps, batch_b)])
            g_sd = central_difference(gp_a, gp_b, gm_a, gm_b, geo, eps)
        else:
            g_sd = jax.grad(lambda p: cosine(grad_fn(p, batch_a), grad_fn(p, batch_b)))(params)
        return g_sd if into is None else tree_axpy(weight, g_sd, into)
    (g_sd,) = by_sides((estimator,), grad_fn, params, batch_a, batch_b, g_a, g_b, geo, eps,
                       into=into, weight=weight)
    return g_sd


def by_sides(estimators: tuple[str, ...], grad_fn: GradFn, params: Params, batch_a: dict,
             batch_b: dict, g_a: Tree, g_b: Tree, geo: Geometry, eps: float, *,
             into: Tree | None = None, weight: float = 1.0) -> list[Tree]:
    """``into + weight * grad L_sd`` by each of ``estimators`` (``sd_gradient``'s sequential
    forms), computed one side at a time (``in_order``), side a's terms added in before side
    b's perturbed copy of theta is formed.

    Several finite differences share their gradients: the forward and the central
    difference both read ``g(theta + eps d)`` (Theorem 1's sweep, ``theory.bound``). With
    ``into=None`` each result is ``sa x + sb y`` in at least float32, cast to the
    gradients' dtype (``forward_difference``, ``central_difference``, ``_combine``), bit for
    bit. Where ``geo.cos`` or a norm is not finite no side is evaluated and each result is
    NaN.
    """
    steps = {"hessian_free": eps, "central": 2 * eps, "exact_hvp": 1.0}
    if not estimators or any(e not in steps for e in estimators):
        raise ValueError(f"by_sides: estimators {estimators}; choose from {tuple(steps)}")
    if into is None:  # the terms summed in at least float32, cast to the gradients' dtype at the end
        outs, weight = [jax.tree.map(lambda g: jnp.zeros(g.shape, _acc(g)), g_a) for _ in estimators], 1.0
    else:
        outs = [into for _ in estimators]

    def body(outs: list[Tree], item: tuple, zero: jax.Array) -> list[Tree]:
        side, batch = item

        d_at = side_direction(geo, side, g_a, g_b)
        grad_at = lambda e: gradient_at(grad_fn, params, d_at, e, batch, zero == 0)
        plus = grad_at(eps) if {"hessian_free", "central"} & set(estimators) else None
        n_own = _pick(side, *anchored(zero, (geo.norm_a, geo.norm_b)))
        new = []
        for est, out in zip(estimators, outs):
            if est == "exact_hvp":
                term = hvp(grad_fn, params, batch, d_at(zero))
            else:
                term = tree_sub(plus, _pick(side, g_a, g_b) if est == "hessian_free" else grad_at(-eps))
            k = weight * _inverse(steps[est], n_own)
            new.append(jax.tree.map(
                lambda o, t: (o.astype(_acc(o)) + k * t.astype(_acc(o))).astype(o.dtype), out, term))
        return new

    ok = jnp.isfinite(geo.cos) & jnp.isfinite(geo.norm_a) & jnp.isfinite(geo.norm_b)
    outs = in_order("sd_side", body, outs, [(0, batch_a), (1, batch_b)], ok)
    dtypes = into if into is not None else g_a
    return [jax.tree.map(lambda o, t: jnp.where(ok, o, jnp.nan).astype(t.dtype), out, dtypes)
            for out in outs]


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

"""Theorem 1 of SEAM, numerically: the finite-difference estimates of grad L_sd, their error, its bound.

Notation (the paper's): ``g_a = grad l(theta; D_adv)``, ``g_b = grad l(theta; D_bgn)``,
``c = cos(g_a, g_b)``, ``d_a = gbar_b - c gbar_a``, ``d_b = gbar_a - c gbar_b`` (so
``|d|^2 = 1 - c^2``), ``H_a``, ``H_b`` the Hessians of the two losses.

- exact (``exact_hvp``, a ``jax.jvp`` over ``jax.grad``):
  ``grad L_sd = H_a d_a / |g_a| + H_b d_b / |g_b|``
- forward difference (the paper's Eq. 6):
  ``grad^ L_sd = [g_a(theta + eps d_a) - g_a(theta)] / (eps |g_a|) + (same for b)``
- central difference: ``[g(theta + eps d) - g(theta - eps d)] / (2 eps |g|)`` per term.

Error of the forward difference. By Taylor's theorem with integral remainder,
``g(theta + eps d) - g(theta) - eps H d = int_0^eps int_0^s D^3 l(theta + r d)[d, d, .] dr ds``,
so

    e(eps) = grad^ L_sd - grad L_sd = eps * lead + O(eps^2),
    lead   = (1/2) [D^3 l_a(theta)[d_a, d_a, .] / |g_a| + D^3 l_b(theta)[d_b, d_b, .] / |g_b|]

and, with ``rho`` a bound on ``|D^3 l(theta + r d)[dhat, dhat, .]|`` (``dhat = d/|d|``) over
the segment, ``|e(eps)| <= (eps/2)(1 - c^2)(rho_a/|g_a| + rho_b/|g_b|)`` (the tight form);
the paper states ``(eps/2)(rho_a/|g_a| + rho_b/|g_b|)``. The central difference obeys the
same bound (each half is a forward difference of step eps, divided by 2 eps) with rho over
the two-sided segment ``[theta - eps d, theta + eps d]``: ``reference`` samples T on both
sides of theta (at ``-s`` as well as ``s``) and the central rows' bound uses the larger
of the two; its error is ``O(eps^2)``, as its even Taylor terms cancel.

How rho is estimated. A Lipschitz constant of the Hessian along d is what the proof
uses, i.e. the sup over the segment ``[theta, theta + eps_max d]`` of the norm of

    T(s) = D^3 l(theta + s d)[dhat, dhat, .] = d/dr [H(theta + s d + r dhat) dhat] at r = 0,

the directional derivative of the Hessian-vector product along its own unit direction.
``third_directional`` computes T(s) as ``jax.jvp`` of the hvp (itself ``jax.jvp`` over
``jax.grad``: forward-over-forward-over-reverse) at ``s = 0`` and at ``n`` points
log-spaced over the top two decades ``[eps_max / 100, eps_max]`` (n = 3: eps_max/100,
eps_max/10, eps_max), where the segment is long enough for T to change. For each eps,
``rho(eps)`` is the largest ``|T(s)|`` over the samples in ``[0, s*]``, ``s*`` the first
sample at or beyond eps, so the sampled segment covers ``[theta, theta + eps d]``. Per-eps
rho matters: along SmolLM2's ``d_a``, ``|T|`` grows 40-fold between ``s = 0`` and
``s = 0.1``, and a single rho over ``[0, eps_max]`` makes the bound that much looser at
small eps. A sampled maximum estimates the sup from below, and can miss a bump between
samples (then the error can exceed the "bound"; ``report`` flags it, and a larger ``n``
samples the segment more densely). T(0) also gives ``lead`` exactly:
``lead = (1/2)(1 - c^2)[T_a(0)/|g_a| + T_b(0)/|g_b|]`` (with ``dhat`` scaled back to ``d``).

Everything at theta (norms, c, d, the exact gradient, rho, lead) is computed once in a
reference precision (``reference``); each precision's sweep (``sweep``) then evaluates the
finite differences in its own dtypes with those same directions, so the measured error is
the estimator's (truncation plus that precision's round-off) and nothing else.
Results leave JAX as numpy, so trees computed under x64 can be compared outside it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seam_jax.errors import ConfigError, SeamError
from seam_jax.model.api import ModelFn, Params
from seam_jax.seam.losses import masked_ce
from seam_jax.seam.sd_grad import (
    Geometry, by_sides, central_difference, forward_difference, geometry, hvp, perturb, perturbed_grads,
    sd_gradient,
)
from seam_jax.tree import error_norm, error_vector, np_norm, to_numpy, tree_norm, tree_scale
from seam_jax.theory.precision import Precision, realised_perturbation

Tree = Any
FD_ESTIMATORS = ("hessian_free", "central")


# ----------------------------------------------------------------- inputs
def parse_eps_grid(spec: str | Sequence[float]) -> list[float]:
    """The eps grid: ``"lo:hi:n"`` (n log-spaced points), ``"e1,e2,..."``, or a sequence.

    Raises:
      ConfigError: a non-numeric entry, eps <= 0 or not finite, or an empty grid.
    """
    if isinstance(spec, str):
        text = spec.strip()
        try:
            if ":" in text:
                lo, hi, n = text.split(":")
                lo_f, hi_f, n_i = float(lo), float(hi), int(n)
                if n_i < 1:
                    raise ConfigError(f"theory.eps_grid={spec!r}: needs n >= 1 points")
                if not (lo_f > 0 and hi_f > 0):
                    raise ConfigError(f"theory.eps_grid={spec!r}: eps must be > 0")
                values = list(np.logspace(math.log10(lo_f), math.log10(hi_f), n_i))
            else:
                values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"theory.eps_grid={spec!r} is not numeric; give 'lo:hi:n' "
                              f"(e.g. '1e-9:1e-1:9') or comma-separated numbers") from None
    else:
        try:
            values = [float(x) for x in spec]
        except (TypeError, ValueError):
            raise ConfigError(f"eps grid {spec!r} is not numeric") from None
    if not values:
        raise ConfigError(f"theory.eps_grid={spec!r} is empty")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"theory.eps_grid: eps must be finite and > 0, got {bad}")
    return sorted(set(float(v) for v in values))


# ----------------------------------------------------------------- derivatives
def loss_grad(fn: ModelFn) -> Callable[[Params, dict], Tree]:
    """``(theta, batch) -> grad l(theta; batch)``, jitted."""
    return jax.jit(jax.grad(lambda p, b: masked_ce(fn, p, b)))


def third_directional(grad_fn: Callable[[Params, dict], Tree], params: Params, batch: dict,
                      u: Tree) -> Tree:
    """``D^3 l(params)[u, u, .] = d/dr [H(params + r u) u]`` at r = 0 (jvp of the hvp)."""
    return jax.jvp(lambda q: hvp(grad_fn, q, batch, u), (params,), (u,))[1]


@dataclasses.dataclass
class Reference:
    """Everything at theta that the sweep compares against, computed in one precision.

    Attributes:
      precision: name of the precision it was computed in.
      norm_a, norm_b, cos: ``|g_a|``, ``|g_b|``, ``c``.
      d_a, d_b: the directions (numpy, reference dtype).
      exact: ``grad L_sd`` by ``exact_hvp`` (numpy); exact_norm its norm.
      rho_a, rho_b: sampled sup of ``|D^3 l(theta + s d)[dhat, dhat, .]|`` over ``s in [0, eps_max]``
        (``rho_at(eps)`` gives the sup over the segment of one eps).
      rho_samples: ``[{"s", "T_a", "T_b"}]``, the sampled norms: s = 0, the ``rho_points`` by
        increasing s, then the same points on the other side of theta (``-s``).
      lead: ``lim e(eps)/eps`` for the forward difference (numpy, or None); lead_norm its norm.
    """

    precision: str
    norm_a: float
    norm_b: float
    cos: float
    d_a: Tree
    d_b: Tree
    exact: Tree
    exact_norm: float
    rho_a: float
    rho_b: float
    rho_samples: list[dict[str, float]]
    lead: Tree | None
    lead_norm: float
    eps_max: float

    def rho_at(self, eps: float, two_sided: bool = False) -> tuple[float, float]:
        """(rho_a, rho_b) over the samples in ``[0, s*]``, ``s*`` the first sample >= eps;
        ``two_sided``: over ``[-s*, s*]`` (the central difference's segment)."""
        pos = [x for x in self.rho_samples if x["s"] >= 0]
        upto = next((x["s"] for x in pos if x["s"] >= eps * (1 - 1e-9)), pos[-1]["s"])
        inside = [x for x in self.rho_samples
                  if (abs(x["s"]) if two_sided else x["s"]) <= upto and (two_sided or x["s"] >= 0)]
        return max(x["T_a"] for x in inside), max(x["T_b"] for x in inside)

    def summary(self) -> dict[str, Any]:
        keep = ("precision", "norm_a", "norm_b", "cos", "exact_norm", "rho_a", "rho_b",
                "rho_samples", "lead_norm", "eps_max")
        return {k: getattr(self, k) for k in keep}


RHO_SPAN_DECADES = 2.0  # rho is sampled over [eps_max 10^-2, eps_max] (and at s = 0)


def rho_points(eps_max: float, n: int) -> list[float]:
    """The ``n`` positive points s where ``|D^3 l(theta + s d)[dhat, dhat, .]|`` is sampled."""
    if n == 1:
        return [float(eps_max)]
    return [float(x) for x in np.logspace(math.log10(eps_max) - RHO_SPAN_DECADES, math.log10(eps_max), n)]


def reference(fn: ModelFn, params: Params, batch_a: dict, batch_b: dict, precision: Precision, *,
              eps_max: float, n_rho_samples: int = 3, keep_lead: bool = True) -> Reference:
    """The exact ``grad L_sd``, rho_a, rho_b and the leading error term at theta.

    Call inside ``precision_scope(precision)`` with ``fn``/``params`` in that precision.
    Cost: two gradients, two hvps and ``2 (2 n_rho_samples + 1)`` third-derivative products
    (``s = 0`` and the ``rho_points`` on both sides of theta, ``s`` and ``-s``).
    ``keep_lead=False`` keeps only ``|lead|`` (``lead`` is None): one parameter-sized
    tree less for a job that only tabulates ``eps |lead|``.
    """
    if n_rho_samples < 1:
        raise ConfigError(f"theory.n_rho_samples={n_rho_samples}; sample at least one point s > 0")
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise ConfigError(f"eps_max={eps_max}; must be finite and > 0")
    grad_fn = loss_grad(fn)
    g_a, g_b = grad_fn(params, batch_a), grad_fn(params, batch_b)
    geo = geometry(g_a, g_b)
    na, nb, c = float(geo.norm_a), float(geo.norm_b), float(geo.cos)
    if not (na > 0 and nb > 0) or not math.isfinite(na + nb):
        raise SeamError(f"|g_a| = {na}, |g_b| = {nb} at theta: L_sd is undefined (a batch without "
                        "target tokens?); pick another theory.batch_step")
    exact = sd_gradient("exact_hvp", grad_fn, params, batch_a, batch_b, g_a, g_b, geo)
    del g_a, g_b  # parameter-sized; geo keeps the norms (matters for a 135M model on a CPU)
    third = jax.jit(lambda p, b, u: third_directional(grad_fn, p, b, u))
    units = []
    for d in (geo.d_a, geo.d_b):
        nd = float(tree_norm(d))
        if not nd > 0:
            raise SeamError(f"|d| = {nd}: g_a and g_b are parallel (c = {c}), so grad L_sd = 0 "
                            "and Theorem 1 has nothing to bound; pick another theory.batch_step")
        units.append((nd, tree_scale(1.0 / nd, d)))
    (nd_a, u_a), (nd_b, u_b) = units
    positive = rho_points(eps_max, n_rho_samples)
    s_points = [0.0] + positive + [-x for x in positive]
    samples, t0 = [], None
    for s in s_points:
        t_a = third(perturb(params, geo.d_a, s), batch_a, u_a)
        t_b = third(perturb(params, geo.d_b, s), batch_b, u_b)
        samples.append({"s": float(s), "T_a": float(tree_norm(t_a)), "T_b": float(tree_norm(t_b))})
        if s == 0.0:
            t0 = (t_a, t_b)
        del t_a, t_b
    # lead = (1/2)[|d_a|^2 T_a(0)/|g_a| + |d_b|^2 T_b(0)/|g_b|], the unit-direction T scaled back.
    ka, kb = 0.5 * nd_a ** 2 / na, 0.5 * nd_b ** 2 / nb
    lead = jax.tree.map(lambda x, y: ka * x + kb * y, *t0)
    return Reference(
        precision=precision.name, norm_a=na, norm_b=nb, cos=c,
        d_a=to_numpy(geo.d_a), d_b=to_numpy(geo.d_b), exact=to_numpy(exact),
        exact_norm=float(tree_norm(exact)),
        rho_a=max(x["T_a"] for x in samples if x["s"] >= 0),
        rho_b=max(x["T_b"] for x in samples if x["s"] >= 0),
        rho_samples=samples, lead=to_numpy(lead) if keep_lead else None, lead_norm=float(tree_norm(lead)),
        eps_max=float(eps_max))


def bounds(eps: float, ref: Reference, two_sided: bool = False) -> tuple[float, float]:
    """(tight, paper): ``(eps/2)(1 - c^2)(rho_a/|g_a| + rho_b/|g_b|)`` and the form without ``1 - c^2``.

    rho is ``ref.rho_at(eps)``, the sampled sup over the segment ``[theta, theta + eps d]``
    (``two_sided``: over ``[theta - eps d, theta + eps d]``, for the central difference).
    """
    rho_a, rho_b = ref.rho_at(eps, two_sided)
    paper = 0.5 * eps * (rho_a / ref.norm_a + rho_b / ref.norm_b)
    return (1.0 - ref.cos ** 2) * paper, paper


# ----------------------------------------------------------------- the sweep
def geometry_in(ref: Reference, params: Params) -> Geometry:
    """The reference geometry, with d_a, d_b in the master dtype of ``params``."""
    leaf = jax.tree.leaves(params)[0]
    acc = jnp.promote_types(leaf.dtype, jnp.float32)
    cast = lambda t: jax.tree.map(lambda d, p: jnp.asarray(d, p.dtype), t, params)
    return Geometry(jnp.asarray(ref.norm_a, acc), jnp.asarray(ref.norm_b, acc), jnp.asarray(ref.cos, acc),
                    cast(ref.d_a), cast(ref.d_b))


def sweep(fn: ModelFn, params: Params, batch_a: dict, batch_b: dict, ref: Reference,
          precision: Precision, eps_grid: Sequence[float], *,
          estimators: Sequence[str] = FD_ESTIMATORS, vmap: bool = False,
          on_eps: Callable[[float], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The finite-difference estimates in one precision against the reference, per eps.

    Call inside ``precision_scope(precision)`` with ``fn``/``params`` in that precision.
    The directions and norms are the reference's; ``g_a(theta)``, ``g_b(theta)`` and the
    perturbed gradients are this precision's, as the estimator would compute them.

    Returns:
      records: one dict per (estimator, eps): ``error`` ``|grad^ - grad|``, ``rel_error``
        (over ``|grad L_sd|``), ``estimate_rel`` (``|grad^| / |grad|``), ``bound`` (tight),
        ``bound_paper``, ``rho_a``/``rho_b`` (this eps's segment), ``taylor`` (``eps |lead|``,
        forward difference only), ``within_bound``, ``survival_a/_b`` (fractions of the
        moving coordinates of ``theta + eps d`` that survive the casts), and the realised
        perturbation ``delta = cast(theta + eps d) - cast(theta)`` in the estimator's compute
        dtype: ``delta_cos_a/_b`` ``cos(delta, eps d)``, ``delta_rel_a/_b`` ``|delta - eps d| / |eps d|``.
        The central rows' bound and rho are two-sided.
      info: this precision's own ``exact_hvp`` error against the reference, and its
        own ``c`` (from its own gradients).
    """
    unknown = [e for e in estimators if e not in FD_ESTIMATORS]
    if unknown:
        raise ConfigError(f"estimators {unknown}: the sweep covers {FD_ESTIMATORS}")
    grad_fn = loss_grad(fn)
    g_a, g_b = grad_fn(params, batch_a), grad_fn(params, batch_b)
    geo = geometry_in(ref, params)
    info: dict[str, Any] = {"precision": precision.name, "param_dtype": precision.param_dtype,
                            "compute_dtype": precision.compute_dtype,
                            "sd_precision": precision.sd_precision,
                            "sd_compute_dtype": precision.sd_compute_dtype,
                            "cos_own": float(geometry(g_a, g_b).cos)}
    info["is_reference"] = precision.name == ref.precision
    if info["is_reference"]:
        info["exact_hvp_error"] = 0.0  # it is the reference itself
    else:
        own = sd_gradient("exact_hvp", grad_fn, params, batch_a, batch_b, g_a, g_b, geo)
        info["exact_hvp_error"] = error_norm(own, ref.exact)
        del own
    info["exact_hvp_rel_error"] = info["exact_hvp_error"] / ref.exact_norm
    records: list[dict[str, Any]] = []
    for eps in eps_grid:
        # The perturbation the estimator's forward pass sees (its compute dtype, after the
        # master dtype's rounding) against eps d.
        seen = {}
        for k, d in (("a", geo.d_a), ("b", geo.d_b)):
            r = realised_perturbation(params, d, eps, precision.sd_compute_dtype)
            seen.update({f"survival_{k}": r["survival"], f"delta_cos_{k}": r["cos"],
                         f"delta_rel_{k}": r["rel_error"]})
        for name, est in fd_estimates(grad_fn, params, batch_a, batch_b, g_a, g_b, geo, eps,
                                      estimators, vmap=vmap):
            err = error_norm(est, ref.exact)
            est_norm = float(tree_norm(est))
            del est
            tight, paper = bounds(eps, ref, two_sided=name == "central")
            rho_a, rho_b = ref.rho_at(eps, two_sided=name == "central")
            records.append({
                "dtype": precision.name, "estimator": name, "eps": float(eps),
                "error": err, "rel_error": err / ref.exact_norm, "estimate_rel": est_norm / ref.exact_norm,
                "bound": tight, "bound_paper": paper, "rho_a": rho_a, "rho_b": rho_b,
                "taylor": eps * ref.lead_norm if name == "hessian_free" else float("nan"),
                "within_bound": bool(err <= tight), "sd_precision": precision.sd_precision,
                "sd_compute_dtype": precision.sd_compute_dtype, **seen,
            })
        if on_eps is not None:
            on_eps(eps)
    return records, info


def fd_estimates(grad_fn: Callable[[Params, dict], Tree], params: Params, batch_a: dict, batch_b: dict,
                 g_a: Tree, g_b: Tree, geo: Geometry, eps: float, estimators: Sequence[str], *,
                 vmap: bool = False) -> Iterator[tuple[str, Tree]]:
    """(name, estimate) for the forward and/or central difference at one eps.

    Both share ``g(theta + eps d)``: four gradients for the pair instead of six. The
    arithmetic is ``sd_gradient``'s own (``perturbed_grads`` with ``forward_difference`` and
    ``central_difference`` when vmapped, ``by_sides`` otherwise), so each estimate is
    bit-identical to ``sd_gradient(name, ...)`` (a test checks it).
    """
    names = [e for e in ("hessian_free", "central") if e in estimators]
    if not vmap:
        yield from zip(names, by_sides(tuple(names), grad_fn, params, batch_a, batch_b, g_a, g_b,
                                       geo, eps))
        return
    points = [(geo.d_a, eps, batch_a), (geo.d_b, eps, batch_b)]
    if "central" in names:
        points += [(geo.d_a, -eps, batch_a), (geo.d_b, -eps, batch_b)]
    grads = perturbed_grads(grad_fn, params, points)
    gp_a, gp_b = grads[0], grads[1]
    if "hessian_free" in names:
        yield "hessian_free", forward_difference(gp_a, gp_b, g_a, g_b, geo, eps)
    if "central" in names:
        gm_a, gm_b = grads[2], grads[3]
        del grads
        yield "central", central_difference(gp_a, gp_b, gm_a, gm_b, geo, eps)


def forward_error_vector(fn: ModelFn, params: Params, batch_a: dict, batch_b: dict, ref: Reference,
                         eps: float, estimator: str = "hessian_free") -> Tree:
    """``grad^ L_sd - grad L_sd`` as a float64 numpy tree (for the Taylor check on small models)."""
    grad_fn = loss_grad(fn)
    g_a, g_b = grad_fn(params, batch_a), grad_fn(params, batch_b)
    est = sd_gradient(estimator, grad_fn, params, batch_a, batch_b, g_a, g_b, geometry_in(ref, params),
                      eps=eps, vmap=False)
    return error_vector(est, ref.exact)


__all__ = ["Reference", "reference", "sweep", "bounds", "parse_eps_grid", "third_directional",
           "forward_error_vector"]

"""Feature alignment (FA): entropic optimal-transport cost between two feature clouds.

Paper Eq. (12)-(14): W_delta(D^S_n(z), D^T_n(z)) with uniform weights, regularised by
epsilon * KL(P | a b^T) and solved with Sinkhorn (OTT-JAX is the solver of record).

Two ways to differentiate the solve (``differentiation``):

* ``"implicit"``: OTT's defaults (implicit differentiation; the reported cost uses the
  Danskin/envelope shortcut; early stop at ``threshold``). Right and cheap for a first-order
  gradient of FA. It is silently WRONG for a gradient taken through an inner step that used it
  (ALGORITHM.md, "Known traps"), so the unrolled hypergradient never uses it.
* ``"unroll"``: exactly ``num_iterations`` log-domain Sinkhorn iterations of OTT's potential
  updates in a plain ``lax.scan`` (no convergence checks, no implicit differentiation, no
  Danskin): reverse and forward mode go through every iteration, so ``jax.grad`` of ``jax.grad``
  and ``jax.jvp`` of ``jax.grad`` are exact for the truncated solver (checked against finite
  differences before convergence). Its value is OTT's ``Sinkhorn`` at that iteration count; why
  the loop is not OTT's own fixed-length mode: ``_unrolled_reg_ot_cost``.

Scale of epsilon (``epsilon_mode``): cosine and angular costs are bounded (in [0, 2] and
[0, pi]) and the authors' absolute epsilon = 0.1 is well conditioned for them. Euclidean and L1
distances of 512-d ResNet features are tens, where an absolute epsilon = 0.1 leaves Sinkhorn
nowhere near convergence in 100 iterations. ``"auto"`` (default) therefore uses the absolute
epsilon for bounded costs and ``epsilon * mean(C)`` (OTT's ``relative_epsilon="mean"``, the
mean taken under ``stop_gradient``) for unbounded ones. The returned cost is always in the
units of the cost metric itself, never rescaled. A relative epsilon is held constant under
differentiation (OTT puts the mean cost under ``stop_gradient``): gradients are those of the
OT cost at that fixed epsilon.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal

import jax
import jax.numpy as jnp
from ott.geometry import costs, geometry, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from ucmkd_jax.overrides import bounded, validate
from ucmkd_jax.precision import at_least_f32

__all__ = ["FAConfig", "feature_alignment", "cost_matrix", "COSTS"]

Cost = Literal["l2", "l1", "cosine", "angular"]
COSTS = typing.get_args(Cost)
_BOUNDED = ("cosine", "angular")


@jax.tree_util.register_pytree_node_class
class Angular(costs.CostFn):
    """Angle between two vectors, arccos(cos(x, y)) in radians (clipped away from +-1 so
    that its derivative stays finite for coincident or opposite points)."""

    def __init__(self, ridge: float = 1e-8, clip: float = 1e-6):
        super().__init__()
        self._ridge, self._clip = ridge, clip

    def __call__(self, x, y):
        cos = jnp.vdot(x, y) / (jnp.linalg.norm(x) * jnp.linalg.norm(y) + self._ridge)
        return jnp.arccos(jnp.clip(cos, -1.0 + self._clip, 1.0 - self._clip))

    def tree_flatten(self):
        return (), (self._ridge, self._clip)

    @classmethod
    def tree_unflatten(cls, aux, children):
        del children
        return cls(*aux)


def _cost_fn(name: str) -> costs.CostFn:
    if name == "l2":
        return costs.Euclidean()  # ||x - y||_2, with a NaN-free gradient at x == y
    if name == "l1":
        return costs.PNormP(1.0)  # ||x - y||_1
    if name == "cosine":
        return costs.Cosine()  # 1 - cos(x, y)
    if name == "angular":
        return Angular()
    raise ValueError(f"unknown FA cost {name!r}; expected one of {COSTS}")


@dataclasses.dataclass(frozen=True)
class FAConfig:
    """Settings of the feature-alignment OT solve.

    Attributes:
      cost: "l2" (paper), "l1", "cosine" (authors' code default), "angular" (Table 7).
      epsilon: entropic regularisation (0.1, paper and authors).
      epsilon_mode: "auto", "absolute" or "relative" (epsilon * mean cost); see module doc.
      num_iterations: Sinkhorn iteration cap (100, the authors' POT setting); in "unroll"
        mode exactly this many iterations run.
      differentiation: "implicit" or "unroll" (see module doc).
      threshold: marginal-error stopping threshold for "implicit" mode.
      inner_iterations: iterations between convergence checks ("implicit" mode only).
    """

    cost: Cost = "cosine"
    epsilon: float = bounded(0.1, gt=0.0)
    epsilon_mode: Literal["auto", "absolute", "relative"] = "auto"
    num_iterations: int = bounded(100, ge=1)
    differentiation: Literal["implicit", "unroll"] = "implicit"
    threshold: float = bounded(1e-3, gt=0.0)
    inner_iterations: int = bounded(10, ge=1)

    def __post_init__(self):
        validate(self)
        if self.num_iterations < 1 or self.num_iterations % self.inner_iterations:
            raise ValueError(f"num_iterations ({self.num_iterations}) must be a positive multiple "
                             f"of inner_iterations ({self.inner_iterations})")


def cost_matrix(x: jax.Array, y: jax.Array, cost: str) -> jax.Array:
    """Pairwise cost C[i, j] = delta(x_i, y_j). Args: x (n, d), y (m, d). Returns (n, m)."""
    return pointcloud.PointCloud(x, y, cost_fn=_cost_fn(cost)).cost_matrix


def _unrolled_reg_ot_cost(prob: linear_problem.LinearProblem, num_iterations: int) -> jax.Array:
    """OTT's reg_ot_cost after exactly ``num_iterations`` log-domain Sinkhorn iterations, as a plain
    ``lax.scan`` of OTT's own potential updates (g then f, as ``Sinkhorn.lse_step``) that autodiff
    goes through to any order.

    Why not ``sinkhorn.Sinkhorn(min_iterations=max_iterations=n, implicit_diff=None)``: in OTT
    0.6.0 (1) that mode's custom backward pass visits its checkpoints in the wrong order when the
    iterations span several chunks (``inner_iterations < n``), so its gradient is not the returned
    cost's unless Sinkhorn has converged; (2) its last iteration always computes the marginal error
    ``sum |m - b| ** 1``, whose second derivative is 0 * inf = NaN once an entry of the marginal
    matches exactly (it does, in float32, at convergence), and that NaN reaches every
    second-order derivative through the loop state. Neither error computation nor convergence
    check is needed here: the iteration count is fixed.
    """
    geom = prob.geom
    log_a, log_b = jnp.log(prob.a), jnp.log(prob.b)

    def body(fg, iteration):
        f, g = fg
        g = geom.update_potential(f, g, log_b, iteration, axis=0)
        f = geom.update_potential(f, g, log_a, iteration, axis=1)
        return (f, g), None

    n, m = geom.shape
    init = (jnp.zeros((n,), geom.dtype), jnp.zeros((m,), geom.dtype))
    (f, g), _ = jax.lax.scan(body, init, jnp.arange(num_iterations))
    return sinkhorn.compute_kl_reg_cost(f, g, prob, lse_mode=True)


def feature_alignment(z_s: jax.Array, z_t: jax.Array, config: FAConfig = FAConfig()) -> jax.Array:
    """Entropic OT cost <P, C> + epsilon KL(P | a b^T) between uniform clouds (OTT ``reg_ot_cost``).

    Args:
      z_s: (n, d) student features phi(x_S).
      z_t: (m, d) teacher features theta(x_T) (usually under ``stop_gradient``).
      config: ``FAConfig``.
    Returns:
      scalar (float32, or float64 for float64 inputs), in the units of the cost metric.
    """
    if z_s.ndim != 2 or z_t.ndim != 2:
        raise ValueError(f"feature_alignment takes (n, d) and (m, d) clouds, got {z_s.shape} and {z_t.shape}")
    if z_s.shape[1] != z_t.shape[1]:
        raise ValueError(f"student features have dim {z_s.shape[1]} but teacher features have dim "
                         f"{z_t.shape[1]}: the two encoders must share the latent space Z")
    c = cost_matrix(at_least_f32(z_s), at_least_f32(z_t), config.cost)
    relative = config.epsilon_mode == "relative" or (
        config.epsilon_mode == "auto" and config.cost not in _BOUNDED)
    # A precomputed cost matrix: much faster than a PointCloud geometry when the solve is unrolled.
    geom = geometry.Geometry(cost_matrix=c, epsilon=config.epsilon,
                             relative_epsilon="mean" if relative else None)
    prob = linear_problem.LinearProblem(geom)
    if config.differentiation == "unroll":
        return _unrolled_reg_ot_cost(prob, config.num_iterations)
    solver = sinkhorn.Sinkhorn(
        max_iterations=config.num_iterations, inner_iterations=config.inner_iterations,
        threshold=config.threshold)
    return solver(prob).reg_ot_cost

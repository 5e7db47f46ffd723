"""Feature alignment (FA): entropic optimal-transport cost between two feature clouds.

Paper Eq. (12)-(14): W_delta(D^S_n(z), D^T_n(z)) with uniform weights, regularised by
epsilon * KL(P | a b^T) and solved with Sinkhorn (OTT-JAX is the solver of record).

Sinkhorn, as both objectives below run it. Uniform weights a = 1/n, b = 1/m, kernel
K = exp(-C / epsilon). From f = 0 (u = 1), iteration k updates g first, then f:

    g_k = epsilon log b - epsilon LSE_i((f_{k-1,i} - C_ij) / epsilon)     (v_k = b / (K^T u_{k-1}))
    f_k = epsilon log a - epsilon LSE_j((g_{k,j} - C_ij) / epsilon)       (u_k = a / (K v_k))
    P_k = exp((f_k + g_k - C) / epsilon) = diag(u_k) K diag(v_k)

so the rows of P_k sum to a exactly and its columns to b only approximately.

The objective (``objective``):

* ``"regularized"`` (default): OTT's ``reg_ot_cost``, the dual value
  <a, f - epsilon log a> + <b, g - epsilon log b> + epsilon (1 - sum P). At the plan it equals the
  primal <P, C> + epsilon KL(P | a b^T), with KL(P | Q) = sum P log(P / Q) - sum P + sum Q, up to
  <b - P^T 1, g - epsilon log b>, i.e. exactly once the columns are met. It is differentiated
  as ``differentiation`` says (below).
* ``"transport"`` (the official release: POT 0.9.6 ``ot.sinkhorn2(a, b, max(C, 0), reg=epsilon,
  numItermax=num_iterations)``, method ``"sinkhorn"`` = ``sinkhorn_knopp``): the cost is
  clamped at 0 (the release's ``torch.clamp(M, min=0)``, which only removes the -1e-16 rounding
  of 1 - cos), and the value is <P_k*, C> at the last plan, with NO entropy term. k* is where
  POT leaves the loop: after iteration k = 1, 11, 21, ... (POT checks every 10 iterations) once
  ||P_k^T 1 - b||_2 < 1e-9 (POT's default ``stopThr``, which the release keeps), otherwise
  k* = ``num_iterations``. The release differentiates it with torch autograd through the
  iterations: C reaches the value through the kernel of every iteration and through the final
  <P, C>. Here the same iterations are OTT's potential updates in a ``lax.scan``
  (``_unrolled_potentials``) that autodiff goes through, to any order, and the stop is a frozen
  carry (a ``jnp.where``) decided under ``stop_gradient``, as POT's ``break`` is invisible to
  autograd. ``differentiation``, ``threshold`` and ``inner_iterations`` are unused;
  ``epsilon_mode`` still applies: the release's reg is absolute, so matching it with the l2 or l1
  cost needs ``epsilon_mode="absolute"`` ("auto" already is absolute for cosine and angular).

  At one plan, regularized - transport = epsilon KL(P | a b^T) >= 0 (measured to 2e-15
  relative, tested to 1e-9). Their gradients differ even at convergence: the envelope theorem
  holds for the regularized objective only, whose gradient in C is P itself; <P(C), C> also
  sees dP/dC.

  POT scales in the kernel domain and OTT iterates in the log domain: in exact arithmetic the
  iterates are the same (POT starts from u = 1/n; any constant start gives the same v_1, u_1
  plan). Measured, POT given the same cost matrix: 1e-16 to 2e-15 relative in float64 (costs
  from 0.15 to 20, 8 x 6 to 64 x 64 clouds), 1e-7 in float32 (rounding). They part where POT's
  kernel underflows, once C / epsilon > ~87 in float32 (C > 8.7 at epsilon = 0.1; ~745 in
  float64): K^T u = 0, POT warns "numerical errors at iteration 0", falls back to its start and
  returns ~0 with a zero gradient, where the log-domain solve returns the transport cost (l2
  distances of 512-d clouds, 16.9 to 20.3, float32: POT 0, here 17.77; POT in float64 17.77 to
  2e-15). The release's default cosine cost (C in [0, 2]) never gets there. Separately from the
  solver, OTT's cosine cost divides by |x| |y| + 1e-8 where torch's ``F.normalize`` does not:
  1.4e-9 relative in the value and 2e-8 in the gradient on 5-d clouds with the release's cost.

Two ways to differentiate the "regularized" solve (``differentiation``):

* ``"implicit"``: OTT's defaults (implicit differentiation; the reported cost uses the
  Danskin/envelope shortcut; early stop at ``threshold``). Right and cheap for a first-order
  gradient of FA. It is silently WRONG for a gradient taken through an inner step that used it
  (docs/protocol.md, "OTT-JAX traps"), so the unrolled hypergradient never uses it.
* ``"unroll"``: exactly ``num_iterations`` log-domain Sinkhorn iterations of OTT's potential
  updates in a plain ``lax.scan`` (no convergence checks, no implicit differentiation, no
  Danskin): reverse and forward mode go through every iteration, so ``jax.grad`` of ``jax.grad``
  and ``jax.jvp`` of ``jax.grad`` are exact for the truncated solver (checked against finite
  differences before convergence). Its value is OTT's ``Sinkhorn`` at that iteration count; why
  the loop is not OTT's own fixed-length mode: ``_unrolled_potentials``.

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
import functools
import typing
from typing import TYPE_CHECKING, Literal

import jax
import jax.numpy as jnp

from ucmkd_jax.overrides import bounded, validate
from ucmkd_jax.precision import at_least_f32

if TYPE_CHECKING:
    from ott.geometry import costs
    from ott.problems.linear import linear_problem

__all__ = ["COSTS", "OBJECTIVES", "FAConfig", "cost_matrix", "feature_alignment"]

Cost = Literal["l2", "l1", "cosine", "angular"]
COSTS = typing.get_args(Cost)
Objective = Literal["regularized", "transport"]
OBJECTIVES = typing.get_args(Objective)
# POT's default ``stopThr`` of ``ot.sinkhorn2``, which the release leaves unchanged.
POT_STOP_THRESHOLD = 1e-9
POT_CHECK_EVERY = 10
_BOUNDED = ("cosine", "angular")


@functools.cache
def _angular_cost_class():
    """The ``Angular`` OTT cost, defined on first use: OTT is imported only when an OT problem is
    built (importing it costs ~2.6 s of a CLI start, measured on a 2-core CPU: it pulls jaxopt,
    lineax and scipy.stats), so that ``--help`` and the methods without OT do not pay for it."""
    from ott.geometry import costs

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

    return Angular


def _cost_fn(name: str) -> costs.CostFn:
    from ott.geometry import costs

    if name == "l2":
        return costs.Euclidean()  # ||x - y||_2, with a NaN-free gradient at x == y
    if name == "l1":
        return costs.PNormP(1.0)  # ||x - y||_1
    if name == "cosine":
        return costs.Cosine()  # 1 - cos(x, y)
    if name == "angular":
        return _angular_cost_class()()
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
      objective: "regularized" (default): OTT's reg_ot_cost <P, C> + epsilon KL(P | a b^T),
        differentiated as ``differentiation`` says; "transport" (the official release's POT
        ``ot.sinkhorn2``): <P, max(C, 0)> at the Sinkhorn plan, no entropy term, differentiated
        through the iterations (``differentiation``, ``threshold`` and ``inner_iterations`` are
        then unused). See the module doc.
    """

    cost: Cost = "cosine"
    epsilon: float = bounded(0.1, gt=0.0)
    epsilon_mode: Literal["auto", "absolute", "relative"] = "auto"
    num_iterations: int = bounded(100, ge=1)
    differentiation: Literal["implicit", "unroll"] = "implicit"
    threshold: float = bounded(1e-3, gt=0.0)
    inner_iterations: int = bounded(10, ge=1)
    objective: Objective = "regularized"

    def __post_init__(self):
        validate(self)
        if self.num_iterations < 1 or self.num_iterations % self.inner_iterations:
            raise ValueError(f"num_iterations ({self.num_iterations}) must be a positive multiple "
                             f"of inner_iterations ({self.inner_iterations})")


def cost_matrix(x: jax.Array, y: jax.Array, cost: str) -> jax.Array:
    """Pairwise cost C[i, j] = delta(x_i, y_j). Args: x (n, d), y (m, d). Returns (n, m)."""
    from ott.geometry import pointcloud

    return pointcloud.PointCloud(x, y, cost_fn=_cost_fn(cost)).cost_matrix


def _unrolled_potentials(prob: linear_problem.LinearProblem, num_iterations: int,
                         stop_threshold: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Potentials (f, g) after ``num_iterations`` log-domain Sinkhorn iterations of OTT's own
    potential updates (g then f, as ``Sinkhorn.lse_step``), as a plain ``lax.scan`` that autodiff
    goes through to any order.

    With ``stop_threshold`` (the "transport" objective), POT's ``sinkhorn_knopp`` stop rule is
    reproduced: after iterations 1, 11, 21, ... (POT's ``ii % 10 == 0``, ``ii`` counted from 0)
    the L2 norm of the column-marginal error ``||P^T 1 - b||_2`` of the current plan is compared
    with the threshold, and once it is below, the remaining iterations leave (f, g) unchanged
    (a ``jnp.where`` in the fixed-length loop). The decision is taken under ``stop_gradient``: it
    is a discrete choice of iteration count, as it is for torch autograd through POT.

    Why not ``sinkhorn.Sinkhorn(min_iterations=max_iterations=n, implicit_diff=None)``: in OTT
    0.6.0 (1) that mode's custom backward pass visits its checkpoints in the wrong order when the
    iterations span several chunks (``inner_iterations < n``), so its gradient is not the returned
    cost's unless Sinkhorn has converged; (2) its last iteration always computes the marginal error
    ``sum |m - b| ** 1``, whose second derivative is 0 * inf = NaN once an entry of the marginal
    matches exactly (it does, in float32, at convergence), and that NaN reaches every
    second-order derivative through the loop state. Without a stop rule neither error computation
    nor convergence check is needed here: the iteration count is fixed.
    """
    geom = prob.geom
    # OTT's default marginals and epsilon follow the default float dtype, not the cost's: keep
    # the loop in the cost's dtype (a float32 cost with float64 enabled).
    dtype = geom.dtype
    b = prob.b.astype(dtype)
    log_a, log_b = jnp.log(prob.a).astype(dtype), jnp.log(b)

    def update(f, g, iteration):
        g = geom.update_potential(f, g, log_b, iteration, axis=0).astype(dtype)
        f = geom.update_potential(f, g, log_a, iteration, axis=1).astype(dtype)
        return f, g

    n, m = geom.shape
    init = (jnp.zeros((n,), dtype), jnp.zeros((m,), dtype))
    if stop_threshold is None:
        def body(fg, iteration):
            return update(*fg, iteration), None

        (f, g), _ = jax.lax.scan(body, init, jnp.arange(num_iterations))
        return f, g

    def converged(fg):
        plan = geom.transport_from_potentials(*fg)
        return jnp.linalg.norm(jnp.sum(plan, axis=0) - b) < stop_threshold

    def body_with_stop(carry, iteration):
        f, g, done = carry
        f_new, g_new = update(f, g, iteration)
        f = jnp.where(done, f, f_new)
        g = jnp.where(done, g, g_new)
        check = (iteration % POT_CHECK_EVERY == 0) & ~done
        done = done | jax.lax.cond(check, converged, lambda fg: jnp.zeros((), bool),
                                   jax.lax.stop_gradient((f, g)))
        return (f, g, done), None

    (f, g, _), _ = jax.lax.scan(body_with_stop, (*init, jnp.zeros((), bool)), jnp.arange(num_iterations))
    return f, g


def _unrolled_reg_ot_cost(prob: linear_problem.LinearProblem, num_iterations: int) -> jax.Array:
    """OTT's reg_ot_cost after exactly ``num_iterations`` unrolled log-domain iterations
    (``_unrolled_potentials``)."""
    from ott.solvers.linear import sinkhorn

    f, g = _unrolled_potentials(prob, num_iterations)
    return sinkhorn.compute_kl_reg_cost(f, g, prob, lse_mode=True)


def _unrolled_transport_cost(prob: linear_problem.LinearProblem, num_iterations: int) -> jax.Array:
    """<P, C> at the plan P = exp((f + g - C) / epsilon) of the unrolled iterations, with POT's stop
    rule: the value ``ot.sinkhorn2(a, b, C, epsilon, numItermax=num_iterations)`` returns."""
    f, g = _unrolled_potentials(prob, num_iterations, stop_threshold=POT_STOP_THRESHOLD)
    return jnp.sum(prob.geom.transport_from_potentials(f, g) * prob.geom.cost_matrix)


def feature_alignment(z_s: jax.Array, z_t: jax.Array, config: FAConfig = FAConfig()) -> jax.Array:
    """OT cost between uniform clouds: <P, C> + epsilon KL(P | a b^T) (OTT ``reg_ot_cost``,
    ``objective="regularized"``) or <P, max(C, 0)> at the Sinkhorn plan, differentiated through
    the iterations (``objective="transport"``, POT's ``ot.sinkhorn2`` as the release calls it).

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
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    c = cost_matrix(at_least_f32(z_s), at_least_f32(z_t), config.cost)
    if config.objective == "transport":
        # The release's ``torch.clamp(M, min=0.0)``; its gradient passes where C >= 0, as torch's.
        c = jnp.where(c >= 0, c, 0.0)
    relative = config.epsilon_mode == "relative" or (
        config.epsilon_mode == "auto" and config.cost not in _BOUNDED)
    # A precomputed cost matrix: much faster than a PointCloud geometry when the solve is unrolled.
    geom = geometry.Geometry(cost_matrix=c, epsilon=config.epsilon,
                             relative_epsilon="mean" if relative else None)
    prob = linear_problem.LinearProblem(geom)
    if config.objective == "transport":
        return _unrolled_transport_cost(prob, config.num_iterations)
    if config.differentiation == "unroll":
        return _unrolled_reg_ot_cost(prob, config.num_iterations)
    solver = sinkhorn.Sinkhorn(
        max_iterations=config.num_iterations, inner_iterations=config.inner_iterations,
        threshold=config.threshold)
    return solver(prob).reg_ot_cost

"""FA against exact OT (assignment problem), closed forms and gradient sanity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from ucmkd_jax.losses import COSTS, FAConfig, cost_matrix, feature_alignment


def _exact_ot(x, y, metric):
    """Exact OT between two uniform clouds of equal size = optimal assignment / n."""
    c = cdist(x, y, metric)
    r, col = linear_sum_assignment(c)
    return c[r, col].mean()


@pytest.mark.parametrize("cost,metric", [("l2", "euclidean"), ("l1", "cityblock"), ("cosine", "cosine")])
def test_small_epsilon_approaches_exact_ot(rng, cost, metric):
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) + 0.5
    exact = _exact_ot(x, y, metric)
    cfg = FAConfig(cost=cost, epsilon=1e-3, epsilon_mode="relative", num_iterations=3000, threshold=1e-7)
    with jax.enable_x64(True):
        val = float(feature_alignment(jnp.asarray(x), jnp.asarray(y), cfg))
    # entropic cost >= exact cost, and the gap is O(epsilon * log n) of the mean cost
    assert val >= exact - 1e-6
    assert val == pytest.approx(exact, rel=2e-2)


def test_angular_cost_matrix_matches_closed_form(rng):
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    expected = np.arccos(np.clip(1 - cdist(x, y, "cosine"), -1, 1))
    np.testing.assert_allclose(np.asarray(cost_matrix(jnp.asarray(x), jnp.asarray(y), "angular")), expected, atol=2e-3)


@pytest.mark.parametrize("cost", COSTS)
def test_identical_clouds_cost_only_the_entropic_offset(rng, cost):
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    val = float(feature_alignment(x, x, FAConfig(cost=cost)))
    moved = float(feature_alignment(x, x + 3.0 * jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), FAConfig(cost=cost)))
    # reg_ot_cost(x, x) >= 0 is the entropic blur only: at most the value of the identity
    # coupling, <I/n, C> + eps * KL(I/n | 1/n^2) = mean diag(C) + eps * log n, and well below
    # the cost to a displaced cloud. (angular: the diagonal is arccos(1 - 1e-6), not 0.)
    c = cost_matrix(x, x, cost)
    eps = 0.1 * (float(jnp.mean(c)) if cost in ("l2", "l1") else 1.0)
    assert -1e-4 <= val <= float(jnp.mean(jnp.diag(c))) + eps * np.log(16) + 1e-4
    assert val < 0.5 * moved


@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("differentiation", ["implicit", "unroll"])
def test_gradient_finite_for_coincident_points(cost, differentiation):
    x = jnp.ones((6, 4)) * jnp.arange(1, 5)
    cfg = FAConfig(cost=cost, differentiation=differentiation)
    g = jax.grad(feature_alignment)(x, x, cfg)
    assert bool(jnp.all(jnp.isfinite(g)))


def test_l2_scale_stays_converged_in_float32(rng):
    """512-d features with norms in the tens: the default (relative epsilon for l2) gives a
    finite, converged solve in float32; an absolute epsilon of 0.1 does not converge in 100 steps."""
    x = jnp.asarray(20 * rng.random(size=(64, 512)), jnp.float32)
    y = jnp.asarray(20 * rng.random(size=(64, 512)) + 1.0, jnp.float32)
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    val = feature_alignment(x, y, FAConfig(cost="l2"))
    assert np.isfinite(float(val))
    c = cost_matrix(x, y, "l2")
    solve = lambda **kw: sinkhorn.Sinkhorn(max_iterations=100)(  # noqa: E731
        linear_problem.LinearProblem(geometry.Geometry(cost_matrix=c, **kw)))
    assert bool(solve(epsilon=0.1, relative_epsilon="mean").converged)
    assert not bool(solve(epsilon=0.1).converged)


@pytest.mark.parametrize("cost", ["l2", "cosine"])
def test_unroll_value_is_otts_sinkhorn_at_that_iteration_count(cost, rng):
    from ott.solvers.linear import sinkhorn

    x = jnp.asarray(rng.normal(size=(9, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(7, 6)), jnp.float32)
    for n in (10, 30):
        cfg = FAConfig(cost=cost, num_iterations=n, differentiation="unroll")
        geom = geometry.Geometry(cost_matrix=cost_matrix(x, y, cost), epsilon=0.1,
                                 relative_epsilon="mean" if cost == "l2" else None)
        ref = sinkhorn.Sinkhorn(min_iterations=n, max_iterations=n, inner_iterations=n)(
            linear_problem.LinearProblem(geom)).reg_ot_cost
        assert float(feature_alignment(x, y, cfg)) == pytest.approx(float(ref), rel=1e-6, abs=1e-7)


def test_unroll_second_derivatives_finite_at_convergence():
    """Converged float32 solve on post-ReLU features (cosine cost): OTT's fixed-length mode gave
    NaN Hessian-vector products here (its last-iteration marginal error |m - b| ** 1 has a NaN
    second derivative where an entry matches exactly); the unroll mode must not."""
    r = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(r.normal(size=(16, 32)), 0), jnp.float32)
    y = jnp.asarray(np.maximum(r.normal(size=(16, 32)), 0), jnp.float32)
    v = jnp.asarray(r.normal(size=(16, 32)), jnp.float32)
    grad = jax.grad(lambda a: feature_alignment(a, y, FAConfig(cost="cosine", differentiation="unroll")))
    fwd = jax.jit(lambda a: jax.jvp(grad, (a,), (v,))[1])(x)
    rev = jax.jit(jax.grad(lambda a: jnp.vdot(grad(a), v)))(x)
    assert bool(jnp.all(jnp.isfinite(fwd))) and bool(jnp.all(jnp.isfinite(rev)))
    np.testing.assert_allclose(np.asarray(fwd), np.asarray(rev), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("num_iterations", [10, 30])
def test_unroll_gradient_and_hessian_are_exact_before_convergence(num_iterations):
    """30 iterations at epsilon 0.1 is far from converged, so a gradient that is not the
    truncated solver's own (OTT 0.6.0's fixed-length mode in 10-iteration chunks, whose backward
    pass visits the checkpoints in the wrong order, gave 0.1863 against 0.1822 here) shows against
    central differences of the cost; the Hessian (forward over reverse) must match differences of
    the gradient and be symmetric."""
    with jax.enable_x64(True):
        r = np.random.default_rng(0)
        y = jnp.asarray(r.normal(size=(7, 5)))
        x = jnp.asarray(r.normal(size=(6, 5)))
        d = jnp.asarray(r.normal(size=(6, 5)))
        cfg = FAConfig(cost="l2", epsilon=0.1, epsilon_mode="absolute", differentiation="unroll",
                       num_iterations=num_iterations)
        f = jax.jit(lambda a: feature_alignment(a, y, cfg))
        grad = jax.jit(jax.grad(lambda a: feature_alignment(a, y, cfg)))
        h = 1e-6
        fd = (float(f(x + h * d)) - float(f(x - h * d))) / (2 * h)
        assert float(jnp.vdot(grad(x), d)) == pytest.approx(fd, rel=1e-6)
        hess = np.asarray(jax.jacfwd(grad)(x)).reshape(30, 30)
        fd_hess = (np.asarray(grad(x + h * d)) - np.asarray(grad(x - h * d))) / (2 * h)
        np.testing.assert_allclose(hess @ np.asarray(d).ravel(), fd_hess.ravel(), rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(hess, hess.T, atol=1e-12)


def test_second_derivative_exists_in_unroll_mode(rng):
    x = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    cfg = FAConfig(cost="l2", differentiation="unroll", num_iterations=20)
    hvp = jax.jit(jax.grad(lambda a: jnp.sum(jax.grad(feature_alignment)(a, y, cfg) ** 2)))(x)
    assert hvp.shape == x.shape and bool(jnp.all(jnp.isfinite(hvp))) and float(jnp.abs(hvp).sum()) > 0


def test_mismatched_feature_dims_are_named():
    with pytest.raises(ValueError, match="student features have dim 4 but teacher features have dim 5"):
        feature_alignment(jnp.ones((3, 4)), jnp.ones((3, 5)))

"""``fa.objective="transport"`` against the official release's FA: POT's ``ot.sinkhorn2(a, b, M,
reg=0.1, numItermax=100)`` on the cost clamped at 0, differentiated by torch autograd through the
iterations. float64 throughout, small clouds (8 x 5 student, 6 x 5 teacher)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.losses import FAConfig, cost_matrix, feature_alignment

_BENCH = "the POT reference needs the bench extra: pip install -e '.[bench]'"
ot = pytest.importorskip("ot", reason=_BENCH)
torch = pytest.importorskip("torch", reason=_BENCH)

REG, ITERS = 0.1, 100


def _clouds(cost):
    """Student (8, 5) and teacher (6, 5) clouds on which POT stops early (its stop rule is then
    part of what is compared)."""
    r = np.random.default_rng(0 if cost == "cosine" else 1)
    x = r.normal(size=(8, 5))
    y = 0.3 * r.normal(size=(6, 5)) + 0.3
    return x, y


def _release_fa(x, y, cost):
    """The release's FA in torch float64: cost, clamp at 0, ot.sinkhorn2, autograd. Returns
    (value, d value / d x, POT's iteration index at exit)."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.float64)
    if cost == "cosine":
        m = 1.0 - torch.nn.functional.normalize(xt, dim=1) @ torch.nn.functional.normalize(yt, dim=1).T
    else:
        m = torch.cdist(xt, yt, p=2)
    m = torch.clamp(m, min=0.0)
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    value, log = ot.sinkhorn2(a, b, m, reg=REG, numItermax=ITERS, log=True)
    value.backward()
    return value.item(), xt.grad.numpy(), log["niter"]


def _config(cost, objective="transport", **kw):
    # The release's reg is absolute (the default "auto" would make it relative for l2).
    return FAConfig(cost=cost, epsilon=REG, epsilon_mode="absolute", num_iterations=ITERS,
                    objective=objective, **kw)


@pytest.fixture(scope="module", params=["cosine", "l2"])
def case(request):
    cost = request.param
    x, y = _clouds(cost)
    with jax.enable_x64(True):
        value_and_grad = jax.jit(jax.value_and_grad(
            lambda a, b: feature_alignment(a, b, _config(cost))))
        value, grad = value_and_grad(jnp.asarray(x), jnp.asarray(y))
        c = np.asarray(jnp.maximum(cost_matrix(jnp.asarray(x), jnp.asarray(y), cost), 0.0))
        value, grad = float(value), np.asarray(grad)
    ref_value, ref_grad, niter = _release_fa(x, y, cost)
    assert niter < ITERS - 1, "POT should stop early on these clouds, so that its stop rule is compared"
    return {"cost": cost, "x": x, "y": y, "c": c, "value": value, "grad": grad,
            "ref_value": ref_value, "ref_grad": ref_grad}


def test_transport_value_equals_pot_sinkhorn2(case):
    # Measured: 1.7e-9 (cosine: OTT's cosine cost has a 1e-8 ridge in its denominator, torch's
    # F.normalize none) and 2e-16 (l2).
    assert case["value"] == pytest.approx(case["ref_value"], rel=1e-8)


def test_transport_solver_is_pots_iteration_for_iteration(case):
    """POT fed the SAME cost matrix: the log-domain OTT iterations and POT's kernel-domain
    scalings give one plan to rounding (measured 2.6e-16 relative), which only holds if the
    iteration order, the start, the stop rule (||P^T 1 - b||_2 < 1e-9 after iterations 1, 11,
    21, ...) and the returned <P, M> are POT's: running all 100 iterations instead of stopping
    changes the value by ~1e-11 here."""
    n, m = case["c"].shape
    ref = ot.sinkhorn2(np.full(n, 1.0 / n), np.full(m, 1.0 / m), case["c"], REG, numItermax=ITERS)
    assert case["value"] == pytest.approx(float(ref), rel=1e-13)


def test_transport_gradient_equals_torch_autograd_through_pot(case):
    # Measured: 1.2e-8 (cosine, the ridge again) and 3e-14 (l2), max-norm relative.
    err = np.abs(case["grad"] - case["ref_grad"]).max() / np.abs(case["ref_grad"]).max()
    assert err < 1e-6, err


def test_objectives_differ_by_the_entropy_term(case):
    """regularized - transport = epsilon * KL(P | a b^T) (generalised KL, + 1 - sum P) at one
    plan P. Here both objectives run all 100 iterations ("unroll" and stop threshold 0) and P is
    POT's own plan after 100 iterations, the KL written out in numpy."""
    cost, x, y, c = case["cost"], case["x"], case["y"], case["c"]
    n, m = c.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    plan = ot.sinkhorn(a, b, c, REG, numItermax=ITERS, stopThr=0.0, warn=False)
    kl = np.sum(plan * np.log(plan / np.outer(a, b))) - plan.sum() + 1.0
    with jax.enable_x64(True):
        xs, ys = jnp.asarray(x), jnp.asarray(y)
        reg = float(jax.jit(lambda p, q: feature_alignment(
            p, q, _config(cost, "regularized", differentiation="unroll")))(xs, ys))
    transport = float(np.sum(plan * c))
    assert transport == pytest.approx(case["value"], rel=1e-9)  # the early stop: ~1e-11 here
    assert REG * kl > 1e-3  # a real gap: the two objectives are not interchangeable
    assert reg - transport == pytest.approx(REG * kl, rel=1e-9, abs=1e-12)


def test_transport_hessian_vector_product_matches_differences():
    """The unrolled hypergradient takes forward-over-reverse derivatives of FA: they go through
    the stop rule (a ``where`` and a ``cond`` under ``stop_gradient``) and match central
    differences of the gradient."""
    with jax.enable_x64(True):
        x, y = map(jnp.asarray, _clouds("cosine"))
        d = jnp.asarray(np.random.default_rng(2).normal(size=x.shape))
        grad = jax.grad(lambda p: feature_alignment(p, y, _config("cosine")))
        hvp = np.asarray(jax.jit(lambda p: jax.jvp(grad, (p,), (d,))[1])(x))
        grad = jax.jit(grad)
        h = 1e-5
        fd = (np.asarray(grad(x + h * d)) - np.asarray(grad(x - h * d))) / (2 * h)
    assert np.all(np.isfinite(hvp))
    np.testing.assert_allclose(hvp, fd, rtol=1e-5, atol=1e-7 * np.abs(fd).max())


def test_default_is_regularized_and_field_is_settable():
    from ucmkd_jax.overrides import ConfigError, apply_overrides

    assert FAConfig().objective == "regularized"
    cfg = apply_overrides(FAConfig(), ["objective=transport"])
    assert cfg.objective == "transport"
    with pytest.raises(ConfigError):
        apply_overrides(FAConfig(), ["objective=sinkhorn2"])

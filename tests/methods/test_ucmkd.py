"""The UCMKD hypergradient against independent references.

* unrolled (forward-over-reverse and reverse-over-reverse) == central finite differences
  (h = 1e-5) of the outer loss through the inner FA (Sinkhorn) and LA steps, along 3 random directions, in float64 (relative error < 1e-5);
* first_order == the plain gradient of CE at adapted parameters computed by hand here;
* the two differ.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.losses import FAConfig, cross_entropy, feature_alignment, label_alignment
from ucmkd_jax.methods import MethodConfig, build_ucmkd, ucmkd_outer_loss
from ucmkd_jax.models import build_model

N, D, K = 6, 5, 3


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        teacher = build_model("vector", (D,), K, backbone="mlp", width=1, dtype=jnp.float64, name="teacher")
        student = build_model("vector", (D,), K, backbone="mlp", width=1, dtype=jnp.float64, name="student")
        f64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)  # noqa: E731
        tv = f64(teacher.init(jax.random.PRNGKey(0)))
        sv = f64(student.init(jax.random.PRNGKey(1)))
        r = np.random.default_rng(0)
        batch = {"x_s": jnp.asarray(r.normal(size=(N, D))), "y_s": jnp.asarray(r.integers(0, K, N), jnp.int32),
                 "x_t": jnp.asarray(r.normal(size=(N + 1, D)))}  # unequal cloud sizes on purpose
    return teacher, student, tv, sv, batch


CASES = {
    "sgd_head": MethodConfig(inner_opt="sgd", la_grad="head"),
    "sgd_full": MethodConfig(inner_opt="sgd", la_grad="full", n1=2),
    "adamw_head": MethodConfig(inner_opt="adamw", inner_lr=0.05, la_grad="head"),
}
# Absolute epsilon: with epsilon relative to the mean cost, OTT holds that scale constant under
# differentiation (stop_gradient), which finite differences cannot do. "implicit" on purpose:
# the unrolled mode must override it.
FA = FAConfig(cost="l2", epsilon=0.1, epsilon_mode="absolute", num_iterations=30)
LR = 0.5  # the inner SGD lr (the outer schedule's value): large so that the two modes differ


def _grads(problem, cfg):
    teacher, student, tv, sv, batch = problem
    fn = jax.jit(build_ucmkd(student, teacher, cfg))
    grads, _, metrics = fn(sv["params"], sv["batch_stats"], tv, batch, jnp.float64(LR))
    return grads, metrics


def _loss(problem, cfg, params):
    teacher, student, tv, sv, batch = problem
    return ucmkd_outer_loss(student, teacher, cfg, params=params, batch_stats=sv["batch_stats"],
                            teacher_variables=tv, batch=batch, lr=jnp.float64(LR), n1=cfg.n1, n2=cfg.n2)[0]


@pytest.mark.parametrize("hvp", ["forward_over_reverse", "reverse_over_reverse"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unrolled_hypergradient_matches_finite_differences(problem, case, hvp):
    cfg = dataclasses.replace(CASES[case], hypergrad="unrolled", hvp=hvp, fa=FA)
    with jax.enable_x64(True):
        grads, _ = _grads(problem, cfg)
        params = problem[3]["params"]
        loss = jax.jit(lambda p: _loss(problem, cfg, p))
        leaves, treedef = jax.tree.flatten(params)
        r = np.random.default_rng(1)
        for _ in range(3):
            v = jax.tree.unflatten(treedef, [jnp.asarray(r.normal(size=l.shape)) for l in leaves])
            h = 1e-5
            plus = jax.tree.map(lambda p, d: p + h * d, params, v)
            minus = jax.tree.map(lambda p, d: p - h * d, params, v)
            fd = (float(loss(plus)) - float(loss(minus))) / (2 * h)
            analytic = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
            # measured (both hvp modes): <= 1.3e-8 with inner SGD, <= 1.0e-6 with inner AdamW
            # (eps_root = 1e-8 makes its update steep near zero gradient entries)
            assert abs(analytic - fd) <= 1e-5 * max(1.0, abs(fd)), (case, hvp, analytic, fd)


@pytest.mark.parametrize("case", ["sgd_head", "sgd_full"])
def test_first_order_is_gradient_at_adapted_params(problem, case):
    """Reference written out by hand: one SGD step on lambda_1 FA (n1 times), on lambda_2 LA, then
    grad CE at (phi', p')."""
    teacher, student, tv, sv, batch = problem
    cfg = dataclasses.replace(CASES[case], hypergrad="first_order", fa=FA)
    with jax.enable_x64(True):
        grads, _ = _grads(problem, cfg)
        enc, head, bs = sv["params"]["encoder"], sv["params"]["head"], sv["batch_stats"]
        enc_z = lambda e: student.encode(e, bs, batch["x_s"], train=True)[0]  # noqa: E731
        z_t = teacher.encode(tv["params"]["encoder"], tv["batch_stats"], batch["x_t"], train=False)[0]
        for _ in range(cfg.n1):
            g = jax.grad(lambda e: cfg.lambda_fa * feature_alignment(enc_z(e), z_t, FA))(enc)
            enc = jax.tree.map(lambda p, d: p - LR * d, enc, g)
        t_head = tv["params"]["head"]
        la = lambda e, h: cfg.lambda_la * label_alignment(  # noqa: E731
            student.classify(h, enc_z(e)), teacher.classify(t_head, enc_z(e)), batch["y_s"])
        if cfg.la_grad == "full":
            ge, gh = jax.grad(la, argnums=(0, 1))(enc, head)
            enc = jax.tree.map(lambda p, d: p - LR * d, enc, ge)
        else:
            gh = jax.grad(la, argnums=1)(enc, head)
        head = jax.tree.map(lambda p, d: p - LR * d, head, gh)
        ce = lambda e, h: cross_entropy(student.classify(h, enc_z(e)), batch["y_s"])  # noqa: E731
        ref_e, ref_h = jax.grad(ce, argnums=(0, 1))(enc, head)
    for a, b in zip(jax.tree.leaves((grads["encoder"], grads["head"])), jax.tree.leaves((ref_e, ref_h))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)


def test_unrolled_differs_from_first_order(problem):
    with jax.enable_x64(True):
        g_un, m_un = _grads(problem, dataclasses.replace(CASES["sgd_head"], hypergrad="unrolled", fa=FA))
        g_fo, m_fo = _grads(problem, dataclasses.replace(CASES["sgd_head"], hypergrad="first_order", fa=FA))
    # Same outer loss up to the FA solve (first_order keeps OTT's early-stopping solve, unrolled
    # runs exactly num_iterations)...
    assert float(m_un["loss"]) == pytest.approx(float(m_fo["loss"]), rel=1e-4)
    # ...but a different derivative: the second-order terms are not negligible here.
    diff = sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2)) for a, b in zip(jax.tree.leaves(g_un), jax.tree.leaves(g_fo)))
    norm = sum(float(np.sum(np.asarray(a) ** 2)) for a in jax.tree.leaves(g_fo))
    assert np.sqrt(diff / norm) > 1e-3


def test_ablations_skip_their_stage(problem):
    teacher, student, tv, sv, batch = problem
    cfg = dataclasses.replace(CASES["sgd_head"], fa=FA)
    with jax.enable_x64(True):
        _, _, m_fa = jax.jit(build_ucmkd(student, teacher, cfg, n2=0))(sv["params"], sv["batch_stats"], tv, batch, LR)
        _, _, m_la = jax.jit(build_ucmkd(student, teacher, cfg, n1=0))(sv["params"], sv["batch_stats"], tv, batch, LR)
    assert "fa" in m_fa and "la" not in m_fa
    assert "la" in m_la and "fa" not in m_la


def test_unrolled_modes_agree_and_are_finite_on_conv_models():
    """ResNet students with BatchNorm in float32 at the default FA (cosine, 100 iterations, which
    converge here): forward-over-reverse and reverse-over-reverse give one finite hypergradient.
    (OTT's fixed-length Sinkhorn mode made both NaN in this setting: see feature_alignment.)"""
    teacher = build_model("audio", (16, 24, 1), 3, width=4, name="teacher")
    student = build_model("video", (2, 16, 16, 3), 3, width=4, name="student")
    tv, sv = teacher.init(jax.random.PRNGKey(0)), student.init(jax.random.PRNGKey(1))
    k = jax.random.split(jax.random.PRNGKey(2), 2)
    batch = {"x_s": jax.random.normal(k[0], (16, 2, 16, 16, 3)), "y_s": jnp.arange(16, dtype=jnp.int32) % 3,
             "x_t": jax.random.normal(k[1], (16, 16, 24, 1))}
    out = {}
    for hvp in ("forward_over_reverse", "reverse_over_reverse"):
        cfg = MethodConfig(hypergrad="unrolled", inner_opt="sgd", hvp=hvp)
        grads, _, metrics = jax.jit(build_ucmkd(student, teacher, cfg))(
            sv["params"], sv["batch_stats"], tv, batch, jnp.float32(0.5))
        leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
        assert all(np.all(np.isfinite(g)) for g in leaves), hvp
        out[hvp] = leaves
    for a, b in zip(out["forward_over_reverse"], out["reverse_over_reverse"]):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-5)

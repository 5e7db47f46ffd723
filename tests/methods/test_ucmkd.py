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


@pytest.fixture(scope="module")
def fd_loss(problem):
    """case -> the jitted outer loss of the unrolled mode (the same for both hvp modes: compiled
    once per case)."""
    losses = {}

    def get(case):
        if case not in losses:
            cfg = dataclasses.replace(CASES[case], hypergrad="unrolled", fa=FA)
            losses[case] = jax.jit(lambda p: _loss(problem, cfg, p))
        return losses[case]

    return get


@pytest.mark.parametrize("hvp", ["forward_over_reverse", "reverse_over_reverse"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unrolled_hypergradient_matches_finite_differences(problem, fd_loss, case, hvp):
    cfg = dataclasses.replace(CASES[case], hypergrad="unrolled", hvp=hvp, fa=FA)
    with jax.enable_x64(True):
        grads, _ = _grads(problem, cfg)
        params = problem[3]["params"]
        loss = fd_loss(case)
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
    teacher = build_model("audio", (16, 24, 1), 3, "resnet10", width=4, name="teacher")
    student = build_model("video", (2, 16, 16, 3), 3, "resnet10", width=4, name="student")
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


def test_carried_inner_state_is_torch_adamw(problem):
    """inner_state="per_outer_step", eps_root 0: the n1 FA steps are torch.optim.AdamW steps
    sharing one state (torch run here on the FA gradients of each iterate), and the first-order
    gradient is grad CE at the result. A fresh state per step gives another answer."""
    import torch  # the bench extra (CI installs it)
    teacher, student, tv, sv, batch = problem
    base = MethodConfig(inner_opt="adamw", inner_lr=0.05, inner_weight_decay=0.05, inner_eps_root=0.0, n1=3,
                        fa=FA)
    carried = dataclasses.replace(base, inner_state="per_outer_step")
    with jax.enable_x64(True):
        g_carried, _, _ = jax.jit(build_ucmkd(student, teacher, carried, n2=0))(
            sv["params"], sv["batch_stats"], tv, batch, LR)
        g_fresh, _, _ = jax.jit(build_ucmkd(student, teacher, base, n2=0))(
            sv["params"], sv["batch_stats"], tv, batch, LR)
        enc, head, bs = sv["params"]["encoder"], sv["params"]["head"], sv["batch_stats"]
        enc_z = lambda e: student.encode(e, bs, batch["x_s"], train=True)[0]  # noqa: E731
        z_t = teacher.encode(tv["params"]["encoder"], tv["batch_stats"], batch["x_t"], train=False)[0]
        leaves, treedef = jax.tree.flatten(enc)
        params = [torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True) for a in leaves]
        opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.05, eps=1e-8)
        fa_grad = jax.jit(jax.grad(lambda e: feature_alignment(enc_z(e), z_t, FA)))
        for _ in range(3):
            g = jax.tree.leaves(fa_grad(jax.tree.unflatten(treedef, [jnp.asarray(p.detach().numpy()) for p in params])))
            for p, gg in zip(params, g):
                p.grad = torch.from_numpy(np.asarray(gg).copy())
            opt.step()
        adapted = jax.tree.unflatten(treedef, [jnp.asarray(p.detach().numpy()) for p in params])
        ce = lambda e, h: cross_entropy(student.classify(h, enc_z(e)), batch["y_s"])  # noqa: E731
        ref = jax.grad(ce, argnums=(0, 1))(adapted, head)
    for a, b in zip(jax.tree.leaves((g_carried["encoder"], g_carried["head"])), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    gap = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(g_fresh), jax.tree.leaves(g_carried)))
    assert gap > 1e-4


def test_unweighted_inner_losses_ignore_lambda(problem):
    teacher, student, tv, sv, batch = problem
    cfg = dataclasses.replace(CASES["sgd_head"], fa=FA)
    run = lambda c: _grads(problem, c)[0]  # noqa: E731
    with jax.enable_x64(True):
        plain = run(cfg)
        unweighted = run(dataclasses.replace(cfg, lambda_fa=0.3, lambda_la=2.0, weight_inner_losses=False))
        weighted = run(dataclasses.replace(cfg, lambda_fa=0.3, lambda_la=2.0))
    for a, b in zip(jax.tree.leaves(unweighted), jax.tree.leaves(plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(weighted), jax.tree.leaves(plain))) > 1e-6


def test_separate_la_and_outer_forwards_update_batchnorm_once_more(tiny_pair):
    """share_la_forward=False (the release) runs the LA and the outer forward apart: the same
    gradient (train-mode BatchNorm normalises with the batch), one more running-average update
    with the adapted encoder's batch moments m': r_sep = mu r_shared + (1 - mu) m', where
    r_shared = mu r_1 + (1 - mu) m' and r_1 is the FA forward's update (mu = 0.9)."""
    from ucmkd_jax.methods import get_method
    teacher, student, tv, sv, batch = tiny_pair
    runs = {}
    for share in (True, False):
        cfg = MethodConfig(share_la_forward=share, inner_lr=1e-2)
        runs[share] = jax.jit(get_method("ucmkd").build(student, teacher, cfg))(sv["params"], sv["batch_stats"], tv,
                                                                                batch, 1e-2)
    for a, b in zip(jax.tree.leaves(runs[True][0]), jax.tree.leaves(runs[False][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    r1 = jax.jit(lambda e, s, x: student.encode(e, s, x, train=True)[1])(sv["params"]["encoder"], sv["batch_stats"],
                                                                         batch["x_s"])
    mu = 0.9
    for r_sh, r_sep, r_1 in zip(jax.tree.leaves(runs[True][1]), jax.tree.leaves(runs[False][1]), jax.tree.leaves(r1)):
        np.testing.assert_allclose(np.asarray(r_sep), (1 + mu) * np.asarray(r_sh) - mu * np.asarray(r_1),
                                   rtol=1e-4, atol=1e-6)
    assert get_method("ucmkd").bn_updates(MethodConfig(share_la_forward=False)) == 3
    assert get_method("ucmkd").bn_updates(MethodConfig()) == 2


def test_unrolled_through_adamw_needs_eps_root(problem):
    from ucmkd_jax.methods.base import check_bilevel_config
    from ucmkd_jax.overrides import ConfigError
    teacher, student, *_ = problem
    with pytest.raises(ConfigError, match="inner_eps_root > 0"):
        build_ucmkd(student, teacher, MethodConfig(hypergrad="unrolled", inner_eps_root=0.0))
    check_bilevel_config(MethodConfig(hypergrad="first_order", inner_eps_root=0.0))

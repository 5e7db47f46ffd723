"""The published baselines (dkd, rkd, rld, fitnet, reviewkd, norm, c2kd): each loss against a
closed form or an independent NumPy/SciPy reference on tiny inputs, then a two-step smoke run of
every registered, compiled step on tiny cross-modal models (audio teacher, video student)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ucmkd_jax.losses import hinton_kd
from ucmkd_jax.methods import METHODS, BaselineConfig, create_train_state, get_method, make_train_step
from ucmkd_jax.methods._common import adaptive_avg_pool, resize_hw
from ucmkd_jax.methods.base import with_extra
from ucmkd_jax.methods.baselines import BASELINES, DKDConfig, RLDConfig
from ucmkd_jax.methods.c2kd import kendall_tau, non_target_kl
from ucmkd_jax.methods.dkd import decoupled_kd, dkd_terms
from ucmkd_jax.methods.fitnet import HintRegressor, hint_loss
from ucmkd_jax.methods.norm import n_to_one_matching
from ucmkd_jax.methods.reviewkd import hierarchical_context_loss
from ucmkd_jax.methods.rkd import relational_kd, rkd_angle_loss, rkd_distance_loss
from ucmkd_jax.methods.rld import refined_logit_distillation, rld_terms
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig, learning_rate_schedule, outer_optimizer


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(p, q):
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    return np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(q)), 0.0), axis=-1)


def test_registry_flags():
    assert set(BASELINES) <= set(METHODS)
    for name in BASELINES:
        spec = get_method(name)
        assert spec.uses_teacher
        # Table 11's unpaired adaptations must accept independent teacher batches.
        assert spec.needs_paired is (name not in ("reviewkd", "norm")), name
    assert get_method("reviewkd").optimizer is not None and get_method("c2kd").init_extra is not None


# ---------------------------------------------------------------------------- DKD
def test_dkd_decomposition_is_classical_kd(rng):
    """The exact identity behind DKD (its reformulation of KD): KL(p^T || p^S) = TCKD + (1 - p^T_y) NCKD. So with
    alpha = beta = 1, DKD = KD - T^2 mean(p^T_y NCKD) (it drops NCKD's teacher-confidence factor)."""
    T = 4.0
    s, t = rng.normal(size=(5, 6)) * 3, rng.normal(size=(5, 6)) * 3
    y = rng.integers(0, 6, 5)
    tckd, nckd, pt = (np.asarray(a, np.float64) for a in dkd_terms(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), T))
    kd = float(hinton_kd(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), T, alpha=1.0))  # T^2 mean KL
    np.testing.assert_allclose(T**2 * np.mean(tckd + (1 - pt) * nckd), kd, rtol=1e-5)
    dkd11 = float(decoupled_kd(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 1.0, 1.0, T))
    np.testing.assert_allclose(dkd11, kd + T**2 * np.mean(pt * nckd), rtol=1e-5)
    # Hand-computed terms: binary and non-target distributions.
    ps, pT = _softmax(s / T), _softmax(t / T)
    i = np.arange(5)
    b = lambda p: np.stack([p[i, y], 1 - p[i, y]], -1)  # noqa: E731
    np.testing.assert_allclose(tckd, _kl(b(pT), b(ps)), rtol=1e-4, atol=1e-6)
    hat = lambda p: np.where(np.eye(6, dtype=bool)[y], 0, p) / (1 - p[i, y])[:, None]  # noqa: E731
    np.testing.assert_allclose(nckd, _kl(hat(pT), np.where(np.eye(6, dtype=bool)[y], 1, hat(ps))), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(decoupled_kd(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 1.0, 8.0, T)),
                               T**2 * np.mean(tckd + 8 * nckd), rtol=1e-5)


def test_dkd_zero_when_student_equals_teacher(rng):
    z = jnp.asarray(rng.normal(size=(4, 5)))
    assert abs(float(decoupled_kd(z, z, jnp.arange(4) % 5))) < 1e-6


# ---------------------------------------------------------------------------- RKD
def _np_rkd(fs, ft):
    def dist(f):
        d = np.sqrt(np.maximum(((f[:, None] - f[None]) ** 2).sum(-1), 1e-12))
        np.fill_diagonal(d, 0)
        return d / d[d > 0].mean()

    def ang(f):
        e = f[None, :, :] - f[:, None, :]
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        return np.einsum("ijd,ikd->ijk", e, e)

    huber = lambda x: np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5).mean()  # noqa: E731
    return huber(dist(fs) - dist(ft)), huber(ang(fs) - ang(ft))


def test_rkd_against_reference_and_similarity_invariance(rng):
    fs, ft = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    ld, la = _np_rkd(fs, ft)
    np.testing.assert_allclose(float(rkd_distance_loss(jnp.asarray(fs), jnp.asarray(ft))), ld, rtol=1e-4)
    np.testing.assert_allclose(float(rkd_angle_loss(jnp.asarray(fs), jnp.asarray(ft))), la, rtol=1e-4)
    assert float(relational_kd(jnp.asarray(fs), jnp.asarray(ft))) == pytest.approx(25 * ld + 50 * la, rel=1e-4)
    # A similarity transform (rotation, scale, translation) of the teacher cloud: both losses vanish.
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    sim = 3.7 * ft @ q + rng.normal(size=(1, 4))
    assert float(rkd_distance_loss(jnp.asarray(sim), jnp.asarray(ft))) < 1e-10
    assert float(rkd_angle_loss(jnp.asarray(sim), jnp.asarray(ft))) < 1e-10
    # A non-similar linear map does not.
    assert float(rkd_distance_loss(jnp.asarray(ft * np.array([1, 5, 1, 1])), jnp.asarray(ft))) > 1e-4


# ---------------------------------------------------------------------------- RLD
def test_rld_against_reference(rng):
    s, t = rng.normal(size=(6, 5)) * 2, rng.normal(size=(6, 5)) * 2
    y = rng.integers(0, 5, 6)
    scd, mcd = (np.asarray(a) for a in rld_terms(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), 4.0, 1.0))
    i = np.arange(6)
    ps, pt = _softmax(s), _softmax(t)
    m = t.argmax(-1)
    ref_scd = _kl(np.stack([pt[i, m], 1 - pt[i, m]], -1), np.stack([ps[i, y], 1 - ps[i, y]], -1))
    np.testing.assert_allclose(scd, ref_scd, rtol=1e-4, atol=1e-6)
    keep = t < t[i, y][:, None]  # classes the teacher ranks strictly below the label
    ref_mcd = []
    for r in range(6):
        if keep[r].any():
            ref_mcd.append(16 * _kl(_softmax(t[r, keep[r]] / 4), _softmax(s[r, keep[r]] / 4)))
        else:
            ref_mcd.append(0.0)
    np.testing.assert_allclose(mcd, ref_mcd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(refined_logit_distillation(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y))),
                               np.mean(ref_scd + 8 * np.asarray(ref_mcd)), rtol=1e-4)


def test_rld_never_imitates_a_wrong_teacher_top1():
    """Teacher confidently wrong (top-1 = class 0, label 2). Hinton KD pulls the student's logit
    of class 0 up (negative gradient); RLD's gradient there is >= 0 while p^S_y <= p^T_top, and
    its masked-correlation term does not depend on that logit at all."""
    t = jnp.array([[6.0, 1.0, 2.0, -1.0, 0.5]])
    y = jnp.array([2])
    s = jnp.array([[0.0, 0.2, 0.1, 0.3, -0.2]])
    assert float(jax.nn.softmax(s)[0, 2]) <= float(jax.nn.softmax(t)[0, 0])
    grads = jax.jit(lambda z: (jax.grad(lambda v: refined_logit_distillation(v, t, y))(z),
                               jax.grad(lambda v: hinton_kd(v, t, y, 4.0, alpha=1.0))(z),
                               jax.grad(lambda v: rld_terms(v, t, y)[1].sum())(z)))
    g_rld, g_kd, g_mcd = grads(s)
    assert float(g_kd[0, 0]) < 0
    assert float(g_rld[0, 0]) >= 0
    assert float(g_mcd[0, 0]) == 0.0 and float(g_mcd[0, 2]) == 0.0


# ---------------------------------------------------------------------------- FitNet
def test_fitnet_zero_when_the_regressor_maps_student_to_teacher(rng):
    v = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    reg = HintRegressor(5, bn=False)
    w, b = rng.normal(size=(1, 1, 3, 5)), rng.normal(size=(5,))
    params = {"conv": {"kernel": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}
    guided = resize_hw(v, (4, 6))  # the teacher map is wider, as across modalities
    hint = jnp.maximum(jnp.einsum("nhwc,cd->nhwd", guided, w[0, 0]) + b, 0)
    assert float(hint_loss(reg.apply({"params": params}, guided), hint)) < 1e-10
    assert float(hint_loss(reg.apply({"params": params}, guided), hint + 0.5)) == pytest.approx(0.25, rel=1e-5)


def test_fitnet_regressor_is_conv_batchnorm_relu(rng):
    # mdistiller's ConvReg written out in numpy: 1x1 conv + bias, batch statistics over (n, h, w)
    # with the biased variance and eps 1e-5, scale and offset, ReLU; running averages move by 0.1.
    v = rng.normal(size=(3, 4, 5, 2)).astype(np.float32)
    w, b = rng.normal(size=(2, 6)), rng.normal(size=(6,))
    gamma, beta = rng.normal(size=(6,)), rng.normal(size=(6,))
    reg = HintRegressor(6)
    variables = reg.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 1, 2)), train=False)
    params = {"conv": {"kernel": jnp.asarray(w[None, None], jnp.float32), "bias": jnp.asarray(b, jnp.float32)},
              "bn": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.asarray(beta, jnp.float32)}}
    out, new = reg.apply({"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(v), train=True,
                         mutable=["batch_stats"])
    y = np.einsum("nhwc,cd->nhwd", v.astype(np.float64), w) + b
    mu, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
    ref = np.maximum((y - mu) / np.sqrt(var + 1e-5) * gamma + beta, 0)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new["batch_stats"]["bn"]["mean"]), 0.1 * mu, rtol=1e-4, atol=1e-6)


def test_align_corners_resize_matches_pytorch(rng):
    import torch  # the bench extra (CI installs it)
    for (h, w), hw in (((3, 5), (7, 4)), ((4, 4), (9, 2)), ((1, 3), (2, 6))):
        x = rng.normal(size=(2, h, w, 3))
        got = np.asarray(resize_hw(jnp.asarray(x, jnp.float32), hw, "bilinear_align_corners"))
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=hw, mode="bilinear",
                                              align_corners=True).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- ReviewKD
def test_hcl_closed_forms(rng):
    # Constant maps a and b: the full map and every pooled map differ by (a - b)^2, so each
    # level's normalised HCL is (a - b)^2.
    a, b = 1.5, -0.5
    fs = [jnp.full((2, 8, 8, 3), a), jnp.full((2, 1, 1, 4), a)]
    ft = [jnp.full((2, 8, 8, 3), b), jnp.full((2, 1, 1, 4), b)]
    assert float(hierarchical_context_loss(fs, ft)) == pytest.approx(2 * (a - b) ** 2, rel=1e-6)
    # 2 x 2 maps: sizes 4 and 2 are skipped (>= h), size 1 gets weight 1/2.
    x, z = rng.normal(size=(1, 2, 2, 1)), rng.normal(size=(1, 2, 2, 1))
    full, pooled = np.mean((x - z) ** 2), (x.mean() - z.mean()) ** 2
    got = float(hierarchical_context_loss([jnp.asarray(x)], [jnp.asarray(z)]))
    assert got == pytest.approx((full + 0.5 * pooled) / 1.5, rel=1e-5)


def test_adaptive_avg_pool_matches_pytorch_bins(rng):
    x = rng.normal(size=(1, 5, 3, 2))
    out = np.asarray(adaptive_avg_pool(jnp.asarray(x), (2, 1)))
    # torch bins for 5 -> 2: [0, 3) and [2, 5); 3 -> 1: [0, 3).
    np.testing.assert_allclose(out[0, 0, 0], x[0, 0:3].mean((0, 1)), rtol=1e-5)
    np.testing.assert_allclose(out[0, 1, 0], x[0, 2:5].mean((0, 1)), rtol=1e-5)


def test_nearest_resize_takes_pytorch_source_indices(rng):
    x = rng.normal(size=(1, 3, 2, 1)).astype(np.float32)
    out = np.asarray(resize_hw(jnp.asarray(x), (5, 4), "nearest"))
    # torch "nearest": source index floor(i * in / out): rows 0,0,1,1,2 and columns 0,0,1,1.
    np.testing.assert_array_equal(out[0, :, :, 0], x[0][[0, 0, 1, 1, 2]][:, [0, 0, 1, 1], 0])


# ---------------------------------------------------------------------------- NORM
def test_norm_zero_when_the_expansion_matches(rng):
    z_s = rng.normal(size=(5, 3))
    a = rng.normal(size=(3, 4))
    z_t = z_s @ a
    w = np.tile(a, (1, 4))  # each of the N = 4 segments reproduces the teacher feature
    assert float(n_to_one_matching(jnp.asarray(z_s @ w), jnp.asarray(z_t), 4)) < 1e-10
    e = rng.normal(size=(5, 8))
    ref = np.mean((e[:, :4] - z_t) ** 2) + np.mean((e[:, 4:] - z_t) ** 2)  # summed over the N = 2 segments
    assert float(n_to_one_matching(jnp.asarray(e), jnp.asarray(z_t), 2)) == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------------------- C2KD
def test_kendall_tau_b_matches_scipy_with_ties(rng):
    xs = np.concatenate([rng.normal(size=(6, 7)), rng.integers(0, 3, size=(10, 7)).astype(float)])
    ys = np.concatenate([rng.normal(size=(6, 7)), rng.integers(0, 3, size=(10, 7)).astype(float)])
    xs[-1] = 1.0  # constant: tau undefined (NaN in scipy and here)
    got = np.asarray(jax.jit(kendall_tau)(jnp.asarray(xs), jnp.asarray(ys)))
    want = np.array([stats.kendalltau(x, y).statistic for x, y in zip(xs, ys)])
    assert np.isnan(got[-1]) and np.isnan(want[-1])
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-5, atol=1e-6)


def test_non_target_kl_against_reference(rng):
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y = np.array([0, 3, 1])
    got = np.asarray(non_target_kl(jnp.asarray(a), jnp.asarray(b), jnp.asarray(y)))
    ref = [_kl(_softmax(np.delete(a[i], y[i])), _softmax(np.delete(b[i], y[i]))) for i in range(3)]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- compiled steps
@pytest.fixture(scope="module")
def zoo():
    """Audio teacher (16 x 24 spectrograms) -> video student (2 frames of 16 x 16): the stage
    maps differ in size, so every resize and frame-averaging path runs. ResNet-18 width 4."""
    teacher = build_model("audio", (16, 24, 1), 3, "resnet10", width=4, name="teacher")
    student = build_model("video", (2, 16, 16, 3), 3, "resnet10", width=4, name="student")
    with jax.default_prng_impl("unsafe_rbg"):  # threefry init kernels take ~20 s to compile on 2 cores
        tv, sv = jax.jit(teacher.init)(jax.random.PRNGKey(0)), jax.jit(student.init)(jax.random.PRNGKey(1))
    r = np.random.default_rng(2)
    y = jnp.arange(6, dtype=jnp.int32) % 3
    batch = {"x_s": jnp.asarray(r.normal(size=(6, 2, 16, 16, 3)), jnp.float32), "y_s": y,
             "x_t": jnp.asarray(r.normal(size=(6, 16, 24, 1)), jnp.float32), "y_t": y}
    cfg = BaselineConfig(dkd=DKDConfig(warmup_steps=4), rld=RLDConfig(warmup_steps=4))
    return teacher, student, tv, sv, batch, cfg


def _diff(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)


@pytest.mark.parametrize("method", BASELINES)
def test_two_compiled_steps(zoo, method):
    teacher, student, tv, sv, batch, cfg = zoo
    spec = get_method(method)
    optim = OptimConfig(warmup_epochs=0.0)
    sched = learning_rate_schedule(optim, steps_per_epoch=4, epochs=2)
    tx = outer_optimizer(optim, sched)
    if spec.optimizer is not None:
        tx = spec.optimizer(tx, cfg)
    with jax.default_prng_impl("unsafe_rbg"):
        variables = with_extra(spec, sv, jax.random.PRNGKey(3), student, teacher, tv, cfg)
    tv_before = jax.tree.map(np.asarray, tv)
    state = create_train_state(variables, tx)
    extra0 = jax.tree.map(np.asarray, state.params.get("extra", {}))
    step = make_train_step(spec.build(student, teacher, cfg), tx, sched)
    history = []
    for _ in range(2):
        state, m = step(state, tv, batch)
        history.append({k: float(v) for k, v in m.items()})
    assert step._cache_size() == 1
    assert int(state.nonfinite_step) == -1
    for m in history:
        assert all(np.isfinite(v) for v in m.values()), m
    assert _diff(tv_before, tv) == 0.0  # the frozen teacher's arrays are never updated in place
    if method in ("dkd", "rld"):  # the KD weight ramps over warmup_steps = 4
        assert [m["kd_weight"] for m in history] == [0.25, 0.5]
        assert int(state.batch_stats["extra"]["step"]) == 2
    if method in ("fitnet", "reviewkd", "norm", "c2kd"):
        assert _diff(extra0, state.params["extra"]) > 0
    if method == "reviewkd":  # Adam (lr 1e-3) on the fusion modules: each step moves a weight by <= ~lr
        assert 1e-4 < _diff(extra0, state.params["extra"]) <= 2.2e-3
    if method == "c2kd":  # the teacher trains, from a copy of its pre-trained variables
        assert _diff(extra0["teacher"], tv["params"]) == 0.0
        assert _diff(state.params["extra"]["teacher"], tv["params"]) > 0
        assert 0.0 <= history[-1]["selected"] <= 1.0


def test_feature_map_methods_need_resnets_and_options_are_hashable(zoo):
    teacher, student, tv, sv, batch, cfg = zoo
    vec = build_model("vector", (5,), 3, backbone="mlp", width=2, name="vec")
    for method in ("fitnet", "reviewkd", "c2kd"):
        with pytest.raises(ValueError, match="needs an encoder with spatial feature maps"):
            get_method(method).build(vec, teacher, cfg)
    # The compiled-step cache of the loop keys on the method config.
    assert hash(cfg) == hash(dataclasses.replace(cfg)) and cfg != BaselineConfig()

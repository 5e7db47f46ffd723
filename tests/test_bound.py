"""ucmkd_jax.bound against independent references: exact OT by assignment, brute-force Lipschitz
ratios, hand-written LA_e and the finite-sample formulas of Theorem 2.7."""
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from ucmkd_jax import bound


def _exact_w(x, y, cost):
    """W_1 of two equal-size uniform clouds = the optimal assignment (Birkhoff)."""
    c = bound.pairwise_cost(x, y, cost)
    r, k = linear_sum_assignment(c)
    return c[r, k].mean()


@pytest.mark.parametrize("cost", ["l2", "l1"])
def test_wasserstein_is_a_tight_upper_bound_of_exact_ot(rng, cost):
    x = rng.normal(size=(40, 5))
    y = 0.7 * rng.normal(size=(40, 5)) + 0.4
    exact = _exact_w(x, y, cost)
    coarse = bound.wasserstein(x, y, cost, epsilon=1e-1)
    fine = bound.wasserstein(x, y, cost, epsilon=1e-3)
    assert fine["w"] >= exact - 1e-9 and coarse["w"] >= exact - 1e-9  # feasible coupling: never below W
    assert fine["w"] <= coarse["w"] + 1e-9
    np.testing.assert_allclose(fine["w"], exact, rtol=2e-3)
    assert fine["marginal_error"] < 1e-3


def test_wasserstein_of_a_cloud_with_itself_and_a_shift():
    x = np.random.default_rng(1).normal(size=(30, 3))
    assert bound.wasserstein(x, x, "l2", epsilon=1e-3)["w"] == pytest.approx(0.0, abs=2e-3)
    shift = np.array([0.5, -1.0, 2.0])  # W_1 under l2 of a translate is the shift's length (OT by monotone map)
    np.testing.assert_allclose(bound.wasserstein(x, x + shift, "l2", epsilon=1e-3)["w"],
                               np.linalg.norm(shift), rtol=2e-3)


def test_wasserstein_unequal_sizes(rng):
    """n != m: the coupling has the two uniform marginals; a 2-to-1 duplicate gives the same W."""
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(10, 4)) + 1.0
    w = bound.wasserstein(x, y, "l2", epsilon=1e-3)["w"]
    np.testing.assert_allclose(w, _exact_w(x, np.repeat(y, 2, axis=0), "l2"), rtol=3e-3)


def test_round_to_coupling_has_exact_marginals(rng):
    plan = rng.random((7, 5))
    a, b = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(5))
    g = bound.round_to_coupling(plan, a, b)
    assert (g >= 0).all()
    np.testing.assert_allclose(g.sum(1), a, atol=1e-12)
    np.testing.assert_allclose(g.sum(0), b, atol=1e-12)


def _ce(w, b, z, q):
    logits = z @ w + b
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -(q * logp).sum(-1)


@pytest.mark.parametrize("cost,ord_", [("l2", 2), ("l1", 1)])
def test_head_lipschitz_dominates_every_empirical_ratio(rng, cost, ord_):
    d, k = 6, 4
    w, b = 3.0 * rng.normal(size=(d, k)), rng.normal(size=k)
    tau = bound.head_lipschitz(w, cost)
    z1 = rng.normal(size=(5000, d)) * rng.uniform(0.01, 5.0, size=(5000, 1))
    z2 = z1 + rng.normal(size=(5000, d)) * rng.uniform(1e-3, 3.0, size=(5000, 1))
    q = rng.dirichlet(np.ones(k) * 0.3, size=5000)  # any fixed label distribution, hard ones too
    ratio = np.abs(_ce(w, b, z1, q) - _ce(w, b, z2, q)) / np.linalg.norm(z1 - z2, ord=ord_, axis=1)
    assert ratio.max() <= tau * (1 + 1e-9)
    assert bound.lipschitz_ratios(w, b, z1, z2, cost).max() <= tau * (1 + 1e-9)
    if cost == "l2":
        assert tau <= bound.spectral_lipschitz(w) * (1 + 1e-12)


def test_cosine_has_no_lipschitz_constant():
    with pytest.raises(ValueError, match="no finite Lipschitz constant"):
        bound.head_lipschitz(np.ones((3, 2)), "cosine")


def test_label_alignment_terms_by_hand(rng):
    n, k = 50, 5
    s, t = rng.normal(size=(n, k)), 2 * rng.normal(size=(n, k))
    y = rng.integers(0, k, n)
    ps = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    pt = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    kappa = pt[np.arange(n), y]
    la = np.mean(-np.log(ps[np.arange(n), y]) + kappa * np.log(kappa))
    out = bound.label_alignment_terms(s, t, y)
    np.testing.assert_allclose(out["la_e"], la, rtol=1e-5)
    np.testing.assert_allclose(out["student_ce"], -np.log(ps[np.arange(n), y]).mean(), rtol=1e-9)
    np.testing.assert_allclose(out["la_e"], out["student_ce"] - out["kappa_entropy"], rtol=1e-5)
    np.testing.assert_allclose(out["kappa_mean"], kappa.mean(), rtol=1e-6)


def test_finite_sample_terms_by_hand():
    got = bound.wasserstein_concentration(2.0, 100, 400, 0.05)
    assert got == pytest.approx(2.0 * math.sqrt(math.log(40.0) / 2) * (0.1 + 0.05))
    assert bound.wasserstein_concentration(2.0, 100, 400, 0.05, diameter=3.0) == pytest.approx(3 * got)
    with pytest.raises(ValueError, match="1/3"):
        bound.wasserstein_concentration(1.0, 10, 10, 0.4)
    # d <= n: Sauer with the e; d > n: the trivial 2^n growth
    c3, n, d, delta = 4.0, 1000, 50, 0.05
    want = 2 * c3 * math.sqrt(2 * d * math.log(math.e * n / d) / n) + c3 * math.sqrt(math.log(1 / delta) / (2 * n))
    assert bound.label_alignment_generalisation(c3, d, n, delta) == pytest.approx(want)
    big = bound.label_alignment_generalisation(c3, 10 ** 6, n, delta)
    assert big == pytest.approx(2 * c3 * math.sqrt(2 * math.log(2)) + c3 * math.sqrt(math.log(1 / delta) / (2 * n)))
    assert bound.label_alignment_generalisation(c3, n, n, delta) <= big + 1e-12


def test_bound_terms_add_up(rng):
    d, k, n = 4, 3, 60
    w, b = rng.normal(size=(d, k)), rng.normal(size=k)
    z_s, z_t = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.3
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    out = bound.bound_terms(teacher_kernel=w, teacher_bias=b, z_s=z_s, y_s=y, student_logits=logits, z_t=z_t,
                            err_t=0.7, delta=0.05, vc_dims={"head": (d + 1) * k})
    assert out["fa_e"] == pytest.approx(min(v["tau"] * v["w"] for v in out["fa_by_cost"].values()))
    assert out["bound_thm26"] == pytest.approx(0.7 + out["fa_e"] + out["la_e"])
    fs = out["finite_sample"]
    assert out["bound_thm27"] == pytest.approx(
        out["bound_thm26"] + fs["w_concentration"] + fs["la_generalisation"]["head"])
    assert fs["wasserstein_dimension_terms"] is None
    for v in out["fa_by_cost"].values():
        assert v["tau_empirical_max_ratio"] <= v["tau"]
    np.testing.assert_allclose(out["fa_by_cost"]["l2"]["w"], _exact_w(z_s, z_t, "l2"), rtol=2e-3)

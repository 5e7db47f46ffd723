"""LA against its definition (Eq. 15) and its kappa -> 0 limit (Eq. 16)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.losses import cross_entropy, hinton_kd, label_alignment, label_transport_kernel


def test_kappa_is_teacher_probability_of_true_label(rng):
    t_logits = rng.normal(size=(5, 4))
    y = np.array([0, 3, 1, 2, 3])
    p = np.exp(t_logits) / np.exp(t_logits).sum(1, keepdims=True)
    np.testing.assert_allclose(label_transport_kernel(jnp.asarray(t_logits), jnp.asarray(y)), p[np.arange(5), y], rtol=1e-5)


def test_la_matches_equation_15(rng):
    s_logits, t_logits = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    y = rng.integers(0, 3, 6)
    ps = np.exp(s_logits) / np.exp(s_logits).sum(1, keepdims=True)
    pt = np.exp(t_logits) / np.exp(t_logits).sum(1, keepdims=True)
    kappa = pt[np.arange(6), y]
    expected = np.mean(-np.log(ps[np.arange(6), y] / pt[np.arange(6), y] ** kappa))
    assert float(label_alignment(jnp.asarray(s_logits), jnp.asarray(t_logits), jnp.asarray(y))) == pytest.approx(expected, rel=1e-5)


def test_la_reduces_to_ce_when_kappa_vanishes(rng):
    s_logits = jnp.asarray(rng.normal(size=(6, 3)))
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    # A teacher that gives the true label probability ~e^-40: kappa ~ 0.
    t_logits = jnp.where(jax.nn.one_hot(y, 3) > 0, -40.0, 0.0)
    assert float(label_transport_kernel(t_logits, y).max()) < 1e-15
    assert float(label_alignment(s_logits, t_logits, y)) == pytest.approx(float(cross_entropy(s_logits, y)), abs=1e-6)


def test_kappa_carries_no_gradient(rng):
    t_logits = jnp.asarray(rng.normal(size=(4, 3)))
    y = jnp.asarray([0, 1, 2, 1])
    g = jax.grad(lambda t: label_transport_kernel(t, y).sum())(t_logits)
    assert float(jnp.abs(g).max()) == 0.0
    # d LA / d t_logits = kappa * d log p_T(y) / d t_logits (kappa held constant)
    s = jnp.zeros((4, 3))
    g_la = jax.grad(lambda t: label_alignment(s, t, y))(t_logits)
    kappa = label_transport_kernel(t_logits, y)
    g_ref = jax.grad(lambda t: jnp.mean(kappa * jax.nn.log_softmax(t)[jnp.arange(4), y]))(t_logits)
    np.testing.assert_allclose(g_la, g_ref, rtol=1e-5, atol=1e-7)


def test_hinton_kd_closed_form(rng):
    s, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y = np.array([1, 0, 3])
    T, a = 4.0, 0.9
    sm = lambda v: np.exp(v) / np.exp(v).sum(1, keepdims=True)  # noqa: E731
    pt, ps = sm(t / T), sm(s / T)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    ce = -np.log(sm(s)[np.arange(3), y]).mean()
    val = float(hinton_kd(jnp.asarray(s), jnp.asarray(t), jnp.asarray(y), T, a))
    assert val == pytest.approx((1 - a) * ce + a * T**2 * kl, rel=1e-5)

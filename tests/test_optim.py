"""Outer schedule against its closed form; inner optimisers."""
import math

import jax.numpy as jnp
import pytest

from ucmkd_jax.optim import OptimConfig, inner_optimizer, learning_rate_schedule


def test_warmup_then_cosine_closed_form():
    cfg = OptimConfig(lr=1e-2, warmup_epochs=5, init_lr=1e-5, end_lr=1e-5)
    s = learning_rate_schedule(cfg, steps_per_epoch=10, epochs=100)
    assert float(s(0)) == pytest.approx(1e-5, rel=1e-4)  # float32 schedule
    assert float(s(25)) == pytest.approx(1e-5 + (1e-2 - 1e-5) * 25 / 50, rel=1e-5)
    assert float(s(50)) == pytest.approx(1e-2, rel=1e-5)
    t = 525  # cosine over the remaining 950 steps
    expected = 1e-5 + (1e-2 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (t - 50) / 950))
    assert float(s(t)) == pytest.approx(expected, rel=1e-4)
    assert float(s(1000)) == pytest.approx(1e-5, rel=1e-3)


def test_inner_sgd_is_a_plain_step_and_adamw_first_step_is_sign_like():
    g = {"w": jnp.array([0.3, -2.0])}
    p = {"w": jnp.array([1.0, 1.0])}
    upd, _ = inner_optimizer("sgd", 0.1).update(g, inner_optimizer("sgd", 0.1).init(p), p)
    assert jnp.allclose(upd["w"], -0.1 * g["w"])
    tx = inner_optimizer("adamw", 1e-3, weight_decay=0.0)
    upd, _ = tx.update(g, tx.init(p), p)
    assert jnp.allclose(upd["w"], -1e-3 * jnp.sign(g["w"]), rtol=1e-3)
    with pytest.raises(ValueError, match="unknown inner optimiser"):
        inner_optimizer("lbfgs", 1.0)

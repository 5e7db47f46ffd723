"""The compiled train step: every method runs, compiles once, is deterministic, and keeps bad
updates out of the state."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.methods import METHODS, MethodConfig, create_train_state, get_method, make_train_step
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig, learning_rate_schedule, outer_optimizer

CFG = MethodConfig()


def _step(tiny_pair, method, cfg=CFG, optim=OptimConfig()):
    teacher, student, tv, sv, batch = tiny_pair
    sched = learning_rate_schedule(optim, steps_per_epoch=4, epochs=2)
    tx = outer_optimizer(optim, sched)
    step = make_train_step(get_method(method).build(student, teacher, cfg), tx, sched)
    return step, create_train_state(sv, tx)


@pytest.fixture(scope="module")
def ucmkd_step(tiny_pair):
    return _step(tiny_pair, "ucmkd")


def test_registry_names_the_paper_methods():
    assert {"ce", "feature_kd", "sumall", "ucmkd", "ucmkd_fa_only", "ucmkd_la_only", "vanilla_kd"} <= set(METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'; registered: c2kd, ce, dkd"):
        get_method("nope")


def test_step_compiles_once_and_moves_parameters(tiny_pair, ucmkd_step):
    step, state = ucmkd_step
    before = jax.tree.map(np.asarray, state.params)
    for _ in range(3):
        state, metrics = step(state, tiny_pair[2], tiny_pair[4])
    assert step._cache_size() == 1
    assert int(state.step) == 3 and int(state.nonfinite_step) == -1
    moved = [float(np.abs(np.asarray(a) - b).max()) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
    assert max(moved) > 0
    assert set(metrics) >= {"loss", "ce", "fa", "la", "kappa", "grad_norm", "lr"}


def test_same_seed_same_metrics(tiny_pair, ucmkd_step):
    step, _ = ucmkd_step
    runs = []
    for _ in range(2):
        state = create_train_state(tiny_pair[3], outer_optimizer(OptimConfig(), learning_rate_schedule(OptimConfig(), 4, 2)))
        out = []
        for _ in range(2):
            state, m = step(state, tiny_pair[2], tiny_pair[4])
            out.append({k: float(v) for k, v in m.items()})
        runs.append(out)
    assert runs[0] == runs[1]


@pytest.mark.parametrize("method", ["ce", "feature_kd", "sumall", "ucmkd_la_only"])
def test_other_methods_step(tiny_pair, method):
    step, state = _step(tiny_pair, method, dataclasses.replace(CFG, lambda_fa=0.3, lambda_la=0.7))
    state, m = step(state, tiny_pair[2], tiny_pair[4])
    assert np.isfinite(float(m["loss"])) and int(state.step) == 1
    if method == "feature_kd":
        assert float(m["loss"]) == pytest.approx(float(m["ce"] + 0.3 * m["fa"]), rel=1e-5)
    if method == "sumall":
        assert float(m["loss"]) == pytest.approx(float(m["ce"] + 0.3 * m["fa"] + 0.7 * m["la"]), rel=1e-5)


def test_nonfinite_update_is_skipped_and_recorded(tiny_pair):
    teacher, student, tv, sv, batch = tiny_pair
    step, state = _step(tiny_pair, "ce")
    bad = dict(batch, x_s=batch["x_s"].at[0].set(jnp.nan))
    state, _ = step(state, tv, batch)
    params = jax.tree.map(np.asarray, state.params)
    state, m = step(state, tv, bad)
    assert not np.isfinite(float(m["loss"]))
    assert int(state.nonfinite_step) == 1  # the global step index of the bad step
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_latent_mismatch_is_refused(tiny_pair):
    teacher, *_ = tiny_pair
    student = build_model("video", (2, 8, 8, 3), 3, width=4, name="student")
    with pytest.raises(ValueError, match="student latent dim 32 != teacher latent dim 16"):
        get_method("ucmkd").build(student, teacher, CFG)

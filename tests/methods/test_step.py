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
    student = build_model("video", (2, 8, 8, 3), 3, "resnet10", width=4, name="student")
    with pytest.raises(ValueError, match="student latent dim 32 != teacher latent dim 16"):
        get_method("ucmkd").build(student, teacher, CFG)


def test_sumall_is_the_joint_loss_its_la_term_reaches_the_encoder(tiny_pair):
    """sumall's gradient equals jax.grad of CE + l1 FA + l2 LA written out here, with LA on the
    features themselves (kappa the only constant); the detached variant (the former default)
    gives a different encoder gradient, so this test tells the two apart."""
    from ucmkd_jax.losses.feature_alignment import feature_alignment
    teacher, student, tv, sv, batch = tiny_pair
    cfg = dataclasses.replace(CFG, lambda_fa=0.3, lambda_la=0.7)
    grads, _, _ = jax.jit(get_method("sumall").build(student, teacher, cfg))(sv["params"], sv["batch_stats"], tv,
                                                                             batch, 0.0)
    y = batch["y_s"]
    z_t = teacher.encode(tv["params"]["encoder"], tv["batch_stats"], batch["x_t"], train=False)[0]

    def written_out(p, detach):
        z, _ = student.encode(p["encoder"], sv["batch_stats"], batch["x_s"], train=True)
        logp_s = jax.nn.log_softmax(student.classify(p["head"], z))[jnp.arange(y.shape[0]), y]
        z_la = jax.lax.stop_gradient(z) if detach else z
        logp_s_la = jax.nn.log_softmax(student.classify(p["head"], z_la))[jnp.arange(y.shape[0]), y]
        logp_t = jax.nn.log_softmax(teacher.classify(tv["params"]["head"], z_la))[jnp.arange(y.shape[0]), y]
        la = jnp.mean(-logp_s_la + jax.lax.stop_gradient(jnp.exp(logp_t)) * logp_t)
        return -jnp.mean(logp_s) + 0.3 * feature_alignment(z, z_t, cfg.fa) + 0.7 * la

    grad_of = jax.jit(jax.grad(written_out), static_argnums=1)  # one compile each, not op by op
    ref = grad_of(sv["params"], False)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
    old = grad_of(sv["params"], True)["encoder"]
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(grads["encoder"]), jax.tree.leaves(old)))
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(grads["encoder"]))
    assert gap > 1e-3 * scale

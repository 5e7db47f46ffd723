"""Precise BatchNorm statistics: exact population moments (against NumPy), evaluation that no
longer depends on how often a method updates the running averages, and the declared update
counts (``MethodSpec.bn_updates``) against the averages a step actually leaves."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.config import TrainConfig
from ucmkd_jax.data import Split
from ucmkd_jax.methods import MethodConfig, get_method
from ucmkd_jax.models import build_model
from ucmkd_jax.precise_bn import PreciseBN, batchnorm_moments

EPS = 1e-5  # Flax BatchNorm's epsilon, as the encoders use it


def _numpy_mlp_bn_inputs(variables, x):
    """The inputs of the MLP encoder's two BatchNorm layers in a train-mode forward, in float64
    NumPy: dense1 -> bn1 (normalised by its own batch's biased moments) -> relu -> dense2 -> bn2."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["encoder"])
    h1 = x @ p["dense1"]["kernel"] + p["dense1"]["bias"]
    mu, var = h1.mean(0), h1.var(0)
    a1 = np.maximum((h1 - mu) / np.sqrt(var + EPS) * p["bn1"]["scale"] + p["bn1"]["bias"], 0.0)
    h2 = a1 @ p["dense2"]["kernel"] + p["dense2"]["bias"]
    return {"bn1": h1, "bn2": h2}


def test_precise_statistics_are_the_population_moments_of_the_layer_inputs():
    model = build_model("vector", (5,), 3, backbone="mlp", width=2, latent_dim=6, name="m")
    variables = model.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=k, size=(8, 5)).astype(np.float32) for k in range(3)]  # batch means differ
    got = PreciseBN(model)(variables, [jnp.asarray(b) for b in batches])["batch_stats"]
    inputs = [_numpy_mlp_bn_inputs(variables, b.astype(np.float64)) for b in batches]
    for layer in ("bn1", "bn2"):
        every = np.concatenate([i[layer] for i in inputs])  # all samples of the 3 batches together
        np.testing.assert_allclose(got[layer]["mean"], every.mean(0), rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got[layer]["var"], every.var(0), rtol=2e-5, atol=2e-6)  # biased
        assert got[layer]["mean"].dtype == jnp.float32
    # the running averages the init left are replaced, the parameters are not touched
    assert not np.allclose(got["bn1"]["var"], variables["batch_stats"]["bn1"]["var"])


def test_paths_cover_every_batchnorm_of_a_resnet_and_video_folds_frames(tiny_pair):
    teacher, student, tv, sv, batch = tiny_pair
    moments = batchnorm_moments(student, sv["params"]["encoder"], sv["batch_stats"], batch["x_s"])
    leaves = {tuple(k.key for k in path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(sv["batch_stats"])}
    assert set(moments) == leaves  # one entry per BatchNorm layer, at its place in batch_stats
    x = np.asarray(batch["x_s"])
    frames = x.reshape((-1,) + x.shape[2:])  # (n * T, h, w, c): the encoder sees frames
    mean, _ = moments[("stem_bn",)]
    assert mean.shape == (2,) and frames.shape[0] == 16


def _twice_ce(student, teacher, config):
    """ce whose step runs the student's train-mode forward twice: the same gradient, two updates
    of the BatchNorm running averages."""
    ce_grads = get_method("ce").build(student, teacher, config)

    def grads_fn(params, batch_stats, teacher_variables, batch, lr):
        _, stats, _ = ce_grads(params, batch_stats, teacher_variables, batch, lr)
        return ce_grads(params, stats, teacher_variables, batch, lr)

    return grads_fn


def test_two_methods_that_differ_only_in_bn_updates_evaluate_alike(monkeypatch):
    from ucmkd_jax import methods
    from ucmkd_jax.methods import base
    from ucmkd_jax.registry import Registry
    from ucmkd_jax.train import fit

    fresh = Registry("method")
    for name, spec in base.METHODS.items():
        fresh.add(name, spec)
    monkeypatch.setattr(base, "METHODS", fresh)
    base.register("ce_twice", uses_teacher=False, bn_updates=lambda c: 2)(_twice_ce)
    assert methods.get_method("ce_twice").bn_updates(MethodConfig()) == 2

    rng = np.random.default_rng(1)
    means = rng.normal(size=(3, 5)) * 2.0

    def split(n):
        y = np.arange(n) % 3
        return Split((means[y] + rng.normal(size=(n, 5))).astype(np.float32), y.astype(np.int32))

    train, val = split(48), split(24)
    model = build_model("vector", (5,), 3, backbone="mlp", width=2, latent_dim=6, name="student")
    v0 = model.init(jax.random.PRNGKey(2))
    results = {}
    for precise in (0, 3):
        tc = TrainConfig(epochs=2, teacher_epochs=1, batch_size=16, eval_batch_size=24, precise_bn=precise)
        for method in ("ce", "ce_twice"):
            results[precise, method] = fit(model, v0, train, val, method=method, train_config=tc, progress=False)
    for a, b in zip(jax.tree.leaves(results[3, "ce"].variables["params"]),
                    jax.tree.leaves(results[3, "ce_twice"].variables["params"])):
        np.testing.assert_array_equal(a, b)  # the same gradients: the same parameters
    # with precise statistics the evaluation is the same; with the running averages it is not
    assert [h["val_ce"] for h in results[3, "ce"].history] == [h["val_ce"] for h in results[3, "ce_twice"].history]
    assert [h["val_ce"] for h in results[0, "ce"].history] != [h["val_ce"] for h in results[0, "ce_twice"].history]


@pytest.fixture(scope="module")
def vector_pair():
    teacher = build_model("vector", (5,), 3, backbone="mlp", width=2, latent_dim=6, name="teacher")
    student = build_model("vector", (4,), 3, backbone="mlp", width=2, latent_dim=6, name="student")
    rng = np.random.default_rng(3)
    batch = {"x_s": jnp.asarray(rng.normal(loc=3.0, size=(8, 4)), jnp.float32),
             "y_s": jnp.asarray(np.arange(8) % 3, jnp.int32),
             "x_t": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)}
    return teacher, student, teacher.init(jax.random.PRNGKey(4)), student.init(jax.random.PRNGKey(5)), batch


@pytest.mark.parametrize("method,config", [
    ("ce", MethodConfig()), ("feature_kd", MethodConfig()), ("ucmkd", MethodConfig()),
    ("ucmkd", MethodConfig(la_grad="full")), ("ucmkd", MethodConfig(n1=2)), ("ucmkd_la_only", MethodConfig()),
], ids=["ce", "feature_kd", "ucmkd", "ucmkd_la_full", "ucmkd_n1_2", "ucmkd_la_only"])
def test_declared_bn_updates_are_what_a_step_does(method, config, vector_pair):
    """From zero running means, k updates of momentum 0.9 with (nearly) the same batch mean mu
    leave mu (1 - 0.9^k) in the first BatchNorm (its input depends on dense1 alone, which the
    tiny inner steps barely move): k is read back from the state and compared."""
    teacher, student, tv, sv, batch = vector_pair
    spec = get_method(method)
    zero = jax.tree.map(jnp.zeros_like, sv["batch_stats"])
    grads_fn = jax.jit(spec.build(student, teacher, dataclasses.replace(config, inner_opt="adamw")))
    _, stats, _ = grads_fn(sv["params"], zero, tv, batch, jnp.float32(1e-2))
    mu, _ = batchnorm_moments(student, sv["params"]["encoder"], zero, batch["x_s"])[("bn1",)]
    c = int(np.argmax(np.abs(mu)))
    k = np.log(1.0 - float(stats["bn1"]["mean"][c]) / float(mu[c])) / np.log(0.9)
    assert k == pytest.approx(spec.bn_updates(config), abs=0.05)

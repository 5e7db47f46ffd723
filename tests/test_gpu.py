"""GPU checks, run by benchmarks/gpu_check.sh on a lent GPU (`pytest -m gpu`); the default test
command deselects them (pyproject addopts)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ucmkd_jax.methods import MethodConfig, create_train_state, get_method, make_train_step
from ucmkd_jax.models import build_model
from ucmkd_jax.optim import OptimConfig, learning_rate_schedule, outer_optimizer

pytestmark = pytest.mark.gpu


def test_backend_is_gpu():
    assert jax.default_backend() == "gpu", f"expected a GPU backend, got {jax.devices()}"


@pytest.mark.parametrize("hypergrad", ["first_order", "unrolled"])
def test_ucmkd_step_on_gpu_matches_cpu(hypergrad):
    teacher = build_model("audio", (16, 24, 1), 3, width=4, name="teacher")
    student = build_model("video", (2, 16, 16, 3), 3, width=4, name="student")
    cfg = dataclasses.replace(MethodConfig(hypergrad=hypergrad, inner_opt="sgd"))
    results = []
    for device in (jax.devices("gpu")[0], jax.devices("cpu")[0]):
        with jax.default_device(device):
            tv, sv = teacher.init(jax.random.PRNGKey(0)), student.init(jax.random.PRNGKey(1))
            k = jax.random.split(jax.random.PRNGKey(2), 2)
            batch = {"x_s": jax.random.normal(k[0], (16, 2, 16, 16, 3)),
                     "y_s": jnp.arange(16, dtype=jnp.int32) % 3, "x_t": jax.random.normal(k[1], (16, 16, 24, 1))}
            sched = learning_rate_schedule(OptimConfig(), 4, 2)
            tx = outer_optimizer(OptimConfig(), sched)
            step = make_train_step(get_method("ucmkd").build(student, teacher, cfg), tx, sched)
            state, m = step(create_train_state(sv, tx), tv, batch)
            results.append(({k: float(v) for k, v in m.items()}, jax.device_get(state.params)))
    (m_gpu, p_gpu), (m_cpu, p_cpu) = results
    for key in ("loss", "fa", "la", "grad_norm"):
        assert m_gpu[key] == pytest.approx(m_cpu[key], rel=2e-3), key
    for a, b in zip(jax.tree.leaves(p_gpu), jax.tree.leaves(p_cpu)):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-4)

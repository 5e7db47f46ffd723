"""Data parallelism: the 8-device step equals the 1-device step (OT over the global batch,
global BatchNorm statistics, global mean gradient). Runs in a subprocess, because the number of
CPU devices is fixed when JAX starts."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from ucmkd_jax.methods import get_method, MethodConfig
    from ucmkd_jax.methods.base import create_train_state, make_train_step
    from ucmkd_jax.models import build_model
    from ucmkd_jax.optim import OptimConfig, learning_rate_schedule, outer_optimizer
    from ucmkd_jax.parallel import data_mesh, replicate, shard_batch

    assert jax.device_count() == 8, jax.devices()
    # the student (whose BatchNorm statistics and gradient are reduced across devices) a video
    # ResNet; the teacher, frozen and in inference mode, an MLP of vectors (cheaper to compile)
    student = build_model("video", (2, 8, 8, 3), 3, "resnet10", width=2, name="student")
    teacher = build_model("vector", (7,), 3, backbone="mlp", width=2, latent_dim=student.latent_dim, name="teacher")
    tv, sv = teacher.init(jax.random.PRNGKey(0)), student.init(jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    batch = {"x_s": rng.normal(size=(16, 2, 8, 8, 3)).astype(np.float32),
             "y_s": (np.arange(16) % 3).astype(np.int32),
             "x_t": rng.normal(size=(16, 7)).astype(np.float32)}
    optim = OptimConfig(lr=0.1, warmup_epochs=0.0)
    schedule = learning_rate_schedule(optim, 10, 1)
    tx = outer_optimizer(optim, schedule)
    report = {}
    for method in sys.argv[1:]:
      step = make_train_step(get_method(method).build(student, teacher, MethodConfig()), tx, schedule)
      out = {}
      for n in (1, 8):
        mesh = data_mesh(jax.devices()[:n])
        state = replicate(create_train_state(sv, tx), mesh)
        for _ in range(2):  # two steps: the second sees the momentum and batch stats of the first
            state, metrics = step(state, replicate(tv, mesh), shard_batch(batch, mesh))
        out[n] = (float(metrics["loss"]), jax.device_get(state.params), jax.device_get(state.batch_stats),
                  len(state.params["head"]["kernel"].sharding.device_set))
      diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      scale = max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(out[1][1]))
      report[method] = {"loss1": out[1][0], "loss8": out[8][0], "params": diff(out[1][1], out[8][1]),
                        "stats": diff(out[1][2], out[8][2]), "scale": scale, "devices": out[8][3]}
    print(json.dumps(report))
""")


METHODS = ("ucmkd",)  # the OT over the global batch and global BatchNorm: the cases that could differ


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 " + os.environ.get("UCMKD_TEST_XLA_FLAGS", ""))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *METHODS], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", METHODS)
def test_eight_device_step_equals_one_device_step(report, method):
    got = report[method]
    print(method, got)
    assert got["devices"] == 8  # the parameters really lived on 8 devices
    # float32 reductions split over 8 devices sum in another order: agreement to ~1e-6 relative
    assert got["loss8"] == pytest.approx(got["loss1"], rel=1e-5, abs=1e-6)
    assert got["params"] <= 1e-5 * max(1.0, got["scale"]), got
    assert got["stats"] <= 1e-5, got

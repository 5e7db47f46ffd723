"""Shared fixtures: tiny models and batches (compile time dominates on CPU, so keep them tiny
and module- or session-scoped)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ucmkd_jax.models import build_model  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_pair():
    """(teacher on audio (12, 16, 1), student on video (2, 8, 8, 3)), ResNet-18 width 2, 3
    classes, with variables and one unpaired batch of 8."""
    teacher = build_model("audio", (12, 16, 1), 3, width=2, name="teacher")
    student = build_model("video", (2, 8, 8, 3), 3, width=2, name="student")
    tv = teacher.init(jax.random.PRNGKey(0))
    sv = student.init(jax.random.PRNGKey(1))
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    batch = {"x_s": jax.random.normal(k[0], (8, 2, 8, 8, 3)),
             "y_s": jnp.arange(8, dtype=jnp.int32) % 3,
             "x_t": jax.random.normal(k[1], (8, 12, 16, 1))}
    return teacher, student, tv, sv, batch

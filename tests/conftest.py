"""Shared fixtures: tiny models and batches (compile time dominates on CPU, so keep them tiny
and module- or session-scoped)."""
import atexit
import os
import shutil
import tempfile

# Compile time dominates the suite on a CPU: LLVM's backend optimisations cost a quarter of it
# (tests/methods/test_baselines.py: 61 s -> 46 s) and buy nothing for tiny shapes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")

# XLA's persistent compilation cache, one folder per pytest session, made by the main process
# before the xdist workers start: the workers and every subprocess a test starts (the CLI runs,
# the multi-host processes) inherit it, so a program compiled once anywhere in the session is
# read back elsewhere instead of compiled again. It starts empty, as in CI, and is removed at exit.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _XLA_CACHE = tempfile.mkdtemp(prefix="ucmkd_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
    atexit.register(shutil.rmtree, _XLA_CACHE, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


@pytest.fixture
def no_compile(caplog):
    """A context manager that fails the test if JAX compiles anything inside its block."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def block():
        with caplog.at_level(logging.WARNING), jax.log_compiles():
            yield
        compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
        assert not compiled, compiled[:3]
    return block


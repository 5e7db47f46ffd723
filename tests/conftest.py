"""Shared fixtures: tiny models and batches (compile time dominates on CPU, so keep them tiny
and module- or session-scoped)."""
import os

# Compile time dominates the suite on a CPU: LLVM's backend optimisations cost a quarter of it
# (tests/methods/test_baselines.py: 61 s -> 46 s) and buy nothing for tiny shapes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")

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


_CACHE_KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module")
def shared_xla_cache(tmp_path_factory):
    """XLA's persistent compilation cache in one folder per session, shared by the xdist workers
    (restored afterwards), for modules that compile the same programs through different entry
    points (CLI and API)."""
    from jax.experimental.compilation_cache import compilation_cache

    old = {k: getattr(jax.config, k) for k in _CACHE_KEYS}
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one cache for all xdist workers (writes are atomic)
        base = base.parent
    jax.config.update("jax_compilation_cache_dir", str(base / "ucmkd_xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for k, v in old.items():
        jax.config.update(k, v)
    compilation_cache.reset_cache()


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

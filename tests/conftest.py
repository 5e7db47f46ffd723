"""Shared fixtures: tiny models and batches (compile time dominates on CPU, so keep them tiny
and module- or session-scoped)."""
import atexit
import os
import shutil
import tempfile



def _compile_speed_flags() -> str:
    """XLA flags that shorten CPU compiles and buy nothing at the suite's tiny shapes (measured in
    benchmarks/NOTES.md, "The test suite's time on 2 cores"): LLVM's backend optimisations off
    (tests/methods/test_baselines.py: 61 s -> 46 s) and XLA:CPU's MLIR fusion emitters off in
    favour of the older elemental emitters, one codegen split (a ucmkd step's backend compile
    11.4 s -> 6.7 s). An XLA that does not know a flag aborts at start-up, so each one is passed
    only where the installed jaxlib names it."""
    flags = ["--xla_backend_optimization_level=0"]
    optional = ("xla_cpu_use_fusion_emitters=false", "xla_cpu_parallel_codegen_split_count=1")
    try:
        import importlib.util
        import mmap

        lib = os.path.join(os.path.dirname(importlib.util.find_spec("jaxlib").origin), "libjax_common.so")
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            flags += ["--" + o for o in optional if m.find(o.split("=")[0].encode()) >= 0]
    except (OSError, ValueError, AttributeError):  # another jaxlib layout: the default emitters
        pass
    return " ".join(flags)


# Subprocesses that choose their own device count (tests/test_parallel.py, the multi-host tests)
# add these to --xla_force_host_platform_device_count.
os.environ.setdefault("UCMKD_TEST_XLA_FLAGS", _compile_speed_flags())
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1 " + os.environ["UCMKD_TEST_XLA_FLAGS"])

# POT (the reference OT of the bench extra) probes every array backend it finds at import: keep it
# from importing TensorFlow (seconds, in each xdist worker at collection) and CuPy, as
# benchmarks/torch_reference.py does; its torch and JAX backends stay.
for _backend in ("TENSORFLOW", "CUPY"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

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
    teacher = build_model("audio", (12, 16, 1), 3, "resnet10", width=2, name="teacher")
    student = build_model("video", (2, 8, 8, 3), 3, "resnet10", width=2, name="student")
    tv = teacher.init(jax.random.PRNGKey(0))
    sv = student.init(jax.random.PRNGKey(1))
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    batch = {"x_s": jax.random.normal(k[0], (8, 2, 8, 8, 3)),
             "y_s": jnp.arange(8, dtype=jnp.int32) % 3,
             "x_t": jax.random.normal(k[1], (8, 12, 16, 1))}
    return teacher, student, tv, sv, batch


@pytest.fixture(scope="session")
def vector_arrays():
    """``write(folder, sizes) -> {"teacher": path, "student": path}``: two ``--dataset arrays``
    files of vectors (teacher dim 7, student dim 5, 3 classes, ``toy_arrays``), ``sizes`` =
    (train, val, test) samples of each: the cheapest data for end-to-end runs in subprocesses."""
    from ucmkd_jax.data.arrays import toy_arrays

    def write(folder, sizes):
        paths = {}
        for role, dim, seed in (("teacher", 7, 1), ("student", 5, 2)):
            paths[role] = str(folder / f"{role}.npz")
            np.savez(paths[role], **toy_arrays((dim,), 3, sizes, seed=seed))
        return paths

    return write


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


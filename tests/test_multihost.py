"""Multi-host for real, on one machine: JAX's distributed runtime with two CPU processes of two
devices each (a coordinator on 127.0.0.1, gloo collectives), against one process of four.

Tolerance: float32. The gradient all-reduce of two processes (gloo) adds the partial sums in
another order than XLA's in-process reduction over four devices, so a gradient entry differs by a
few ulp and two optimiser steps keep it there: parameters agree to rtol 1e-5 (about 100 ulp) or
atol 1e-7 (the biases in front of a BatchNorm, whose gradient is zero up to rounding, sit near
1e-9). Every subprocess is bounded in time and killed, with its partner, on failure."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")
RUN = os.path.join(ROOT, "experiments", "run.py")
TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache_dir, processes: int, process_id: int, local_devices: int, port: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices} "  # as tests/conftest.py
                                     + os.environ.get("UCMKD_TEST_XLA_FLAGS", ""),
               JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=ROOT)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                   JAX_PROCESS_ID=str(process_id))
    return env


def _start(argv_of, processes: int, local_devices: int, cache_dir, logs):
    """Start ``processes`` subprocesses (argv_of(process_id, port)); their output goes to files."""
    port = _free_port()
    procs = []
    for i in range(processes):
        log = open(os.path.join(logs, f"p{i}_{port}.log"), "w")
        procs.append((subprocess.Popen(argv_of(i, port), stdout=log, stderr=subprocess.STDOUT,
                                       env=_env(cache_dir, processes, i, local_devices, port)), log))
    return procs


def _finish(procs, timeout=TIMEOUT):
    """Wait for every process; on a failure or a timeout kill them all. Returns the outputs."""
    deadline = time.time() + timeout
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    outputs = [open(log.name).read() for _, log in procs]
    for (p, _), text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    return outputs


@pytest.fixture(scope="module")
def step_results(tmp_path_factory):
    """(one process x 4 devices, two processes x 2 devices) of tests/multihost_worker.py."""
    d = tmp_path_factory.mktemp("multihost")
    runs = {}  # both runs at once: the two-process run waits on its partner and the coordinator
    for name, processes, local in (("one", 1, 4), ("two", 2, 2)):
        path = str(d / f"{name}.npz")
        runs[name] = path, _start(lambda i, port: [sys.executable, WORKER, "--processes", str(processes),
                                                   "--process-id", str(i), "--port", str(port),
                                                   "--local-devices", str(local), "--out", path],
                                  processes, local, d / "cache", str(d))
    try:
        for path, procs in runs.values():
            _finish(procs)
    finally:
        for _, procs in runs.values():  # a failure in one run ends the other too
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return {name: dict(np.load(path)) for name, (path, _) in runs.items()}


@pytest.mark.parametrize("part", ["steps/ce/", "steps/ucmkd/", "steps/ucmkd_unrolled/", "teacher/"])
def test_two_processes_train_as_one(step_results, part):
    one, two = step_results["one"], step_results["two"]
    keys = [k for k in one if k.startswith(part)]
    assert keys and keys == [k for k in two if k.startswith(part)]
    for k in keys:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)
    if part == "teacher/":  # the pre-training's model selection saw the same validation accuracies
        np.testing.assert_array_equal(two["teacher_val"], one["teacher_val"])


def test_evaluation_counts_every_sample_once(step_results):
    one, two = step_results["one"], step_results["two"]
    assert int(two["eval_n"]) == int(one["eval_n"]) == 37  # 37 samples in padded batches of 8
    correct = float(two["eval_acc"]) * 37
    assert correct == pytest.approx(round(correct)) and two["eval_acc"] == one["eval_acc"]
    assert float(two["eval_ce"]) == pytest.approx(float(one["eval_ce"]), rel=1e-6)


@pytest.fixture(scope="module")
def npz(tmp_path_factory, vector_arrays):
    return vector_arrays(tmp_path_factory.mktemp("mh_arrays"), (64, 16, 16))


def _cli_argv(npz, out):
    """The CLI end to end with a teacher (pre-trained, cached, reused on the rerun) and a student
    that distils from it. feature_kd rather than ucmkd: the multi-process numerics of the ucmkd
    steps are step_results' part; here the orchestration is under test, and each of the five
    processes is spared OTT's import and the bilevel step's compile."""
    return [sys.executable, RUN, "--dataset", "arrays", "--teacher-data", npz["teacher"], "--student-data",
            npz["student"], "--methods", "feature_kd", "--width", "2", "--latent-dim", "8", "--epochs", "2",
            "--teacher-epochs", "1", "--seeds", "1", "--batch-size", "16", "--eval-batch-size", "16",
            "--set", "train.precise_bn=2", "--no-progress", "--out", str(out)]


def _records(out):
    with open(os.path.join(out, "results.json")) as f:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in json.load(f)]


def _same_runs(a, b):
    """Accuracies, epochs and every other field equal; the summed cross-entropies (test_ce) to
    float32 reduction order (the per-batch sums are added in another order across processes)."""
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if not k.endswith("_ce")} == \
               {k: v for k, v in y.items() if not k.endswith("_ce")}
        for k in (k for k in x if k.endswith("_ce") and x[k] is not None):
            assert x[k] == pytest.approx(y[k], rel=1e-5), k


def test_two_process_cli_resumes_after_kill_writes_once_and_matches_one_process(npz, tmp_path):
    cache, logs = tmp_path / "cache", str(tmp_path)
    two, one = tmp_path / "two", tmp_path / "one"
    # kill -9 both processes once the student has checkpointed its first epoch (of 2) ...
    procs = _start(lambda i, port: _cli_argv(npz, two), 2, 2, cache, logs)
    mark = two / "checkpoints" / "teacher2student" / "feature_kd" / "seed0" / "latest" / "1"
    deadline = time.time() + TIMEOUT
    while not mark.exists() and time.time() < deadline and all(p.poll() is None for p, _ in procs):
        time.sleep(0.05)
    for p, log in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        log.close()
    assert mark.exists() and any(p.returncode == -signal.SIGKILL for p, _ in procs), "not killed mid-run"
    # ... then rerun: the teacher comes from its cache and the student resumes after epoch 1
    outputs = _finish(_start(lambda i, port: _cli_argv(npz, two), 2, 2, cache, logs))
    assert "resuming after epoch 1/2" in outputs[0]
    # process 0 wrote the outputs and printed the table; process 1 only trained
    assert "wrote " in outputs[0] and "wrote " not in outputs[1]
    for name in ("results.md", "curves.png", "config.json", "logs/teacher2student_feature_kd_seed0.jsonl"):
        assert (two / name).exists(), name
    leftovers = [p for p in two.rglob("*") if ".tmp" in p.name or p.name == ".lock"]
    assert not leftovers, leftovers
    with open(two / "logs" / "teacher2student_feature_kd_seed0.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]  # each epoch once: one writer
    # the same numbers as one process driving the same four devices, uninterrupted
    _finish(_start(lambda i, port: _cli_argv(npz, one), 1, 4, cache, logs))
    _same_runs(_records(two), _records(one))

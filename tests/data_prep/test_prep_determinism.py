"""Shards are byte-identical across processes: two clean runs, and a run killed with SIGKILL then
resumed in a fresh process.

Each run is ``prepare.py`` in its own interpreter (importing TensorFlow makes that some seconds),
with a different PYTHONHASHSEED, so nothing that varies from process to process (string hashing,
the protobuf runtime's hash seed) can go unnoticed as it would within one pytest process.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.testing import CREMA_D_TINY
from ucmkd_jax.data.spec import SPEC_VERSION

pytestmark = pytest.mark.slow  # end-to-end runs of the CLI, in subprocesses

PREPARE = Path(__file__).resolve().parents[2] / "data_prep" / "prepare.py"
TIMEOUT_S = 240  # a run takes 10-20 s on 2 busy cores, almost all of it importing TensorFlow


def _start(raw, out, hash_seed: int) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    log = open(out / "prepare.log", "wb")  # the child keeps its own descriptor
    with log:
        return subprocess.Popen([sys.executable, str(PREPARE), "--dataset", "crema_d", "--raw-dir", str(raw),
                                 "--out-dir", str(out), "--workers", "1", "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)


def _finish(proc: subprocess.Popen, out) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    assert rc == 0, (out / "prepare.log").read_text()


def _shards(out):
    vdir = out / "crema_d" / "speaker" / SPEC_VERSION
    return {p.name: p.read_bytes() for p in sorted(vdir.glob("*.tfrecord*"))}


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _assert_same_shards(got, expected):
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs from byte {_first_difference(got[name], expected[name])}"


@pytest.fixture(scope="module")
def clean_shards(crema_d_clean_raw, tmp_path_factory):
    """The shards of two clean runs, in two processes at once (they share only the raw files)."""
    outs = [tmp_path_factory.mktemp(f"clean{k}") for k in (1, 2)]
    procs = [_start(crema_d_clean_raw, out, hash_seed=k) for k, out in enumerate(outs, 1)]
    for proc, out in zip(procs, outs):
        _finish(proc, out)
    return [_shards(out) for out in outs]


def test_clean_runs_in_two_processes_write_byte_identical_shards(clean_shards):
    first, second = clean_shards
    assert sorted(first) == [f"crema_d-{s}.tfrecord-00000-of-00001" for s in ("test", "train", "val")]
    _assert_same_shards(second, first)


def test_run_killed_mid_way_resumes_to_the_clean_runs_shards(crema_d_clean_raw, clean_shards, tmp_path):
    out = tmp_path / "killed"
    cache = out / "_cache" / "crema_d" / "speaker"
    proc = _start(crema_d_clean_raw, out, hash_seed=3)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while len(list(cache.glob("*.npz"))) < 2:  # some clips done, most not: kill it there
            assert proc.poll() is None, "prepare.py finished before it could be killed"
            assert time.monotonic() < deadline, "no clip was cached in time"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()  # no-op once it is dead
        proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL
    cached = len(list(cache.glob("*.npz")))
    assert 2 <= cached < len(CREMA_D_TINY)
    assert not (out / "crema_d" / "speaker" / SPEC_VERSION / "dataset_info.json").exists()

    _finish(_start(crema_d_clean_raw, out, hash_seed=4), out)  # a fresh process resumes
    _assert_same_shards(_shards(out), clean_shards[0])

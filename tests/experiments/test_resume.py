"""Kill -9 in the middle of a run, rerun the same command: the run resumes from its last
finished epoch and ends with the same results as a run that was never interrupted.

On array datasets of vectors (MLP encoders): what is tested is the CLI's checkpoints, logs and
results across processes, which do not depend on the encoder, and an MLP traces and compiles in
a fraction of a ResNet's time. Six epochs: the kill lands after the first checkpoint, well before
the last epoch."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 6
RUN = ("teacher2student", "feature_kd", "seed0")


@pytest.fixture(scope="module")
def args(tmp_path_factory, vector_arrays):
    files = vector_arrays(tmp_path_factory.mktemp("resume_arrays"), (96, 24, 24))
    return ["--dataset", "arrays", "--teacher-data", files["teacher"], "--student-data", files["student"],
            "--width", "2", "--latent-dim", "8", "--epochs", str(EPOCHS), "--teacher-epochs", "1", "--seeds", "1",
            "--batch-size", "16", "--eval-batch-size", "16", "--methods", "feature_kd", "--no-progress"]


def _cmd(args, out):
    return [sys.executable, os.path.join(ROOT, "experiments", "run.py"), *args, "--out", str(out)]


@pytest.fixture(scope="module")
def env():
    # the subprocesses inherit the session's persistent XLA cache (tests/conftest.py): the
    # programs this process compiled are read back, not compiled again
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _finished_epochs(out):
    d = os.path.join(out, "checkpoints", RUN[0], RUN[1], RUN[2], "latest")
    if not os.path.isdir(d):
        return 0
    return max([int(n) for n in os.listdir(d) if n.isdigit()], default=0)


def test_sigkill_then_rerun_ends_like_an_uninterrupted_run(tmp_path, env, args):
    from experiments import run

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run.main(args + ["--out", str(whole)])  # the uninterrupted reference, in this process

    proc = subprocess.Popen(_cmd(args, killed), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while _finished_epochs(killed) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = _finished_epochs(killed)
    assert 1 <= stopped_at < EPOCHS
    assert not os.path.exists(killed / "results.json")  # the run was in progress

    again = subprocess.run(_cmd(args, killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming after epoch {stopped_at}/{EPOCHS}" in again.stdout + again.stderr
    a, b = json.load(open(whole / "results.json")), json.load(open(killed / "results.json"))
    drop = ("wall_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in a] == \
        [{k: v for k, v in r.items() if k not in drop} for r in b]
    h_a = json.load(open(whole / "history" / "teacher2student_feature_kd_seed0.json"))
    h_b = json.load(open(killed / "history" / "teacher2student_feature_kd_seed0.json"))
    assert h_a == h_b and [h["epoch"] for h in h_b] == list(range(1, EPOCHS + 1))
    lines = [json.loads(x) for x in open(killed / "logs" / "teacher2student_feature_kd_seed0.jsonl")]
    assert [x["epoch"] for x in lines] == list(range(1, EPOCHS + 1))  # every epoch logged once across the two processes
    assert os.listdir(killed / "logs" / "tb" / "teacher2student_feature_kd_seed0")  # TensorBoard events
    # the finished run keeps its best variables, not its resumable state
    run_dir = killed / "checkpoints" / RUN[0] / RUN[1] / RUN[2]
    assert os.path.isdir(run_dir / "best") and not os.path.exists(run_dir / "latest")

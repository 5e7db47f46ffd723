"""Hostile input, refused with one clear line before anything is compiled (issue 15's table).

Each CLI case runs ``experiments/run.py``'s main through ``ucmkd_jax.cli.run`` in-process (as
``python experiments/run.py ...`` would) and checks the exit code and one line of stderr; each
API case calls ``ucmkd_jax.distill``. ``no_compile`` fails a case that reaches XLA."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ucmkd_jax
from experiments import run
from ucmkd_jax import cli, results
from ucmkd_jax.config import to_dict
from ucmkd_jax.data.arrays import toy_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--backbone", "resnet10", "--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--batch-size", "16",
        "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> .npz path: good vectors, and each kind of bad file."""
    d = tmp_path_factory.mktemp("bad")
    good = toy_arrays((6,), 3, (48, 12, 12), seed=1)
    variants = {
        "teacher": good,
        "student": toy_arrays((6,), 3, (48, 12, 12), seed=2),
        "complex": dict(good, x_train=good["x_train"] + 1j),
        "huge_label": dict(good, y_train=np.where(np.arange(48) == 7, 10**12, good["y_train"])),
        "small_teacher": toy_arrays((6,), 3, (48, 12, 12), seed=3),
        "big_student": toy_arrays((6,), 3, (480, 12, 12), seed=4),
    }
    out = {}
    for name, arrays in variants.items():
        out[name] = str(d / f"{name}.npz")
        np.savez(out[name], **arrays)
    return out


def arrays_argv(files, teacher="teacher", student="student"):
    return ["--dataset", "arrays", "--teacher-data", files[teacher], "--student-data", files[student]]


CLI_CASES = [  # (id, argv builder, exit code, a line of stderr)
    ("epochs_0", lambda f: ["--epochs", "0"], 2, "TrainConfig.epochs must be >= 1 (0 epochs would report an "
                                                 "untrained student); got 0"),
    ("epochs_negative", lambda f: ["--epochs", "-2"], 2, "TrainConfig.epochs must be >= 1"),
    ("teacher_epochs_0", lambda f: ["--teacher-epochs", "0"], 2, "teacher_epochs=0 would distil from an untrained "
                                                                 "teacher"),
    ("batch_0", lambda f: ["--batch-size", "0"], 2, "TrainConfig.batch_size must be >= 1; got 0"),
    ("batch_negative", lambda f: ["--batch-size", "-4"], 2, "TrainConfig.batch_size must be >= 1; got -4"),
    ("seeds_0", lambda f: ["--seeds", "0"], 2, "ExperimentConfig.seeds must be >= 1; got 0"),
    ("seeds_negative", lambda f: ["--seeds", "-1"], 2, "ExperimentConfig.seeds must be >= 1; got -1"),
    ("subsample_0", lambda f: ["--subsample", "0"], 2, "ExperimentConfig.subsample must be > 0.0; got 0.0"),
    ("lr_0", lambda f: ["--lr", "0"], 2, "OptimConfig.lr must be > 0.0"),
    ("momentum_1", lambda f: ["--set", "optim.momentum=1"], 2, "OptimConfig.momentum must be < 1.0"),
    ("complex", lambda f: arrays_argv(f, "complex"), 1, "x_train has complex dtype complex64: expected real "
                                                        "numbers"),
    ("huge_label", lambda f: arrays_argv(f, "huge_label"), 1, "y_train has label 1000000000000 at index 7: more "
                                                              "than 100,000 classes"),
    ("teacher_split_too_small", lambda f: arrays_argv(f, "small_teacher", "big_student") + ["--subsample", "0.25"],
     1, "the teacher's pre-training split (its modality's train split) has 12 samples after --subsample 0.25, "
        "fewer than one batch of 16"),
    ("missing_file", lambda f: arrays_argv(f) + ["--student-data", "/nonexistent/S.npz"], 1,
     "student data: no such file '/nonexistent/S.npz'"),
]


@pytest.mark.parametrize("build,code,message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_refuses_with_one_line(build, code, message, files, tmp_path, capsys, no_compile):
    with no_compile():
        try:
            got = cli.run(run.main, TINY + build(files) + ["--out", str(tmp_path / "out")])  # the case's flags win
        except SystemExit as e:  # usage errors: argparse exits with 2
            got = e.code
    err = capsys.readouterr().err
    assert got == code and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "results.json").exists()


API_CASES = [
    (dict(epochs=0), "TrainConfig.epochs must be >= 1"),
    (dict(batch_size=0), "TrainConfig.batch_size must be >= 1"),
    (dict(batch_size=-4), "TrainConfig.batch_size must be >= 1"),
    (dict(teacher_epochs=0), "teacher_epochs=0 would distil from an untrained teacher"),
]


@pytest.mark.parametrize("kwargs,message", API_CASES, ids=[next(iter(k)) + "_" + str(next(iter(k.values())))
                                                           for k, _ in API_CASES])
def test_distill_refuses(kwargs, message, files, no_compile):
    kw = dict(teacher_data=files["teacher"], student_data=files["student"], width=2, latent_dim=8, epochs=1,
              teacher_epochs=1, batch_size=16, progress=False, log=None)
    with no_compile(), pytest.raises(ValueError, match=message):
        ucmkd_jax.distill(**dict(kw, **kwargs))


@pytest.mark.parametrize("broken,content,message", [
    ("results.json", "", "results.json (the finished runs) is empty"),
    ("results.json", '[{"dataset": "synth', "results.json (the finished runs) is not valid JSON"),
    ("config.json", '{"datas', "config.json (the config of the results beside it) is not valid JSON"),
])
def test_a_torn_output_file_is_named(broken, content, message, tmp_path, capsys, no_compile):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_dict(run.parse(TINY)[1])))  # this command's own config
    (out / "results.json").write_text("[]")
    (out / broken).write_text(content)
    with no_compile():
        assert cli.run(run.main, TINY + ["--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert message in err and "--fresh" in err


def test_a_second_run_on_the_same_out_is_refused(tmp_path, capsys, no_compile):
    """The first run's lock names its pid; a lock whose process is gone is taken over."""
    out = tmp_path / "out"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid, "since": "now"}))
        with no_compile():
            assert cli.run(run.main, TINY + ["--out", str(out)]) == 1
        assert f"another run (pid {sleeper.pid} on {os.uname().nodename}" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()
    with results.OutputLock(str(out)) as lock:  # the sleeper is gone: its lock is stale
        assert lock.held and json.load(open(out / ".lock"))["pid"] == os.getpid()
    assert not (out / ".lock").exists()


def test_the_traceback_only_with_debug(files, tmp_path):
    """As a user sees it: ``python experiments/run.py`` prints one ``error:`` line and a hint
    (exit 1), and the traceback only with --debug."""
    argv = [sys.executable, os.path.join(ROOT, "experiments", "run.py")] + arrays_argv(files, "complex") + TINY
    plain = subprocess.run(argv + ["--out", str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    lines = [line for line in plain.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "x_train has complex dtype" in lines[0] and "--debug" in plain.stderr
    debug = subprocess.run(argv + ["--out", str(tmp_path / "b"), "--debug"], capture_output=True, text=True,
                           timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "complex dtype" in debug.stderr


@pytest.mark.parametrize("program,argv,code,message", [
    ("report", ["/nonexistent/run"], 1, "error: /nonexistent/run is not a run folder"),
    ("sweep", ["--lambdas-fa", "0.5,-1"], 2, "expected distinct non-negative numbers"),
    ("sweep", ["--methods", "ce,ucmkd"], 1, "error: the sweep trains one method"),
    ("bound", ["--delta", "0.5"], 2, "--delta must be in (0, 1/3)"),
    ("bound", ["--epochs", "0"], 2, "TrainConfig.epochs must be >= 1"),
    ("prepare", ["--dataset", "crema_d", "--raw-dir", "/nonexistent/raw", "--out-dir", "/tmp/x"], 2,
     "error: crema_d: expected directory /nonexistent/raw"),
])
def test_every_cli_ends_with_one_error_line(program, argv, code, message, capsys, no_compile):
    import importlib

    module = importlib.import_module(("data_prep." if program == "prepare" else "experiments.") + program)
    with no_compile():
        try:
            got = cli.run(module.main, argv)
        except SystemExit as e:
            got = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):  # sys.exit("error: ...") prints its message
                print(e.code, file=sys.stderr)
    err = capsys.readouterr().err
    assert got == code and message in err and "Traceback" not in err, err

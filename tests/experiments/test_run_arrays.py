"""experiments/run.py --dataset arrays: every input form through the CLI, in-process.

Two pairs cover the four forms: frame stacks -> 32x32 images and 8x8 spectrograms -> vectors.
Each form is trained with ce (a teacher's pre-training or a student's run) and takes part in a
ucmkd run (scoring as the teacher, trained as the student). Tiny shapes, one epoch: compile time
dominates on CPU, so the runs are module fixtures, and XLA's persistent cache (one folder per
session, shared with tests/test_api.py, which runs the same pairs) compiles each step once."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from experiments import run
from ucmkd_jax import distill
from ucmkd_jax.data.arrays import load_arrays, toy_arrays

# form -> (per-sample shape, (train, val, test) sizes: 0 = absent, seed of its random map).
# Keep in step with tests/test_api.py (same arrays, same compiled steps).
FORMS = {
    "vector": ((12,), (48, 12, 12), 1),
    "image32": ((32, 32, 3), (48, 0, 0), 2),   # no val (carved), no test (validation only)
    "frames": ((2, 8, 8, 3), (48, 12, 12), 3),
    "image8": ((8, 8, 1), (48, 0, 12), 4),     # spectrogram-like; no val (carved)
}
# (teacher, student, extra flags): the first keeps the default latent 512 (the 16-channel ResNets
# get a projection), the second shares a 16-d latent (no projection) with a 3-layer MLP.
PAIRS = [("frames", "image32", []), ("image8", "vector", ["--latent-dim", "16", "--mlp-depth", "3"])]
TINY = ["--backbone", "resnet10", "--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arrays")
    paths = {}
    for form, (shape, sizes, seed) in FORMS.items():
        paths[form] = folder / f"{form}.npz"
        np.savez(paths[form], **toy_arrays(shape, 3, sizes, seed=seed))
    return paths


def run_cli(argv):
    """main(argv) with stdout captured; returns (records, stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        records = run.main(argv)
    return records, buf.getvalue()


def pair_argv(npz, pair, out):
    t, s, extra = PAIRS[pair]
    return ["--dataset", "arrays", "--teacher-data", str(npz[t]), "--student-data", str(npz[s]),
            "--methods", "ce,ucmkd", "--out", str(out)] + TINY + extra


@pytest.fixture(scope="module")
def cli_runs(npz, tmp_path_factory):
    """pair index -> (teacher form, student form, out dir, records, stdout), each run once."""
    runs = {}

    def get(pair):
        if pair not in runs:
            t, s, _ = PAIRS[pair]
            out = tmp_path_factory.mktemp(f"{t}_{s}")
            records, stdout = run_cli(pair_argv(npz, pair, out))
            runs[pair] = (t, s, out, records, stdout)
        return runs[pair]

    return get


@pytest.fixture(params=range(len(PAIRS)), ids=[f"{t}-to-{s}" for t, s, _ in PAIRS])
def pair_run(request, cli_runs):
    return cli_runs(request.param)


def test_each_form_runs_ce_and_ucmkd(pair_run):
    t, s, out, records, _ = pair_run
    n_val = 6 if FORMS[s][1][1] == 0 else 12  # carved: round(10% of 16) = 2 of each class
    assert [r["method"] for r in records] == ["ce", "ucmkd"]
    for r in records:
        assert (r["dataset"], r["direction"], r["seed"], r["epochs"], r["best_epoch"]) == \
            ("arrays", "teacher2student", 0, 1, 1)
        assert 0.0 <= r["val_acc"] <= 1.0 and abs(r["val_acc"] * n_val - round(r["val_acc"] * n_val)) < 1e-9
        assert (r["test_acc"] is None) == (FORMS[s][1][2] == 0)
        assert (r["test_acc"] is None) == (r["test_ce"] is None)
    ce, ucmkd = records
    assert ce["unpaired"] is None and ce["hypergrad"] is None and ucmkd["unpaired"] == "easy"
    assert 0.0 <= ucmkd["teacher_val_acc"] <= 1.0 and ucmkd["hypergrad"] == "first_order"
    # one teacher per seed, reported beside every method (as run_experiment does)
    assert (ce["teacher_val_acc"], ce["teacher_test_acc"]) == (ucmkd["teacher_val_acc"], ucmkd["teacher_test_acc"])
    assert (ucmkd["teacher_test_acc"] is None) == (FORMS[t][1][2] == 0)
    assert json.loads((out / "results.json").read_text()) == records
    for m in ("ce", "ucmkd"):
        history = json.loads((out / "history" / f"teacher2student_{m}_seed0.json").read_text())
        assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    assert len(list((out / "teachers" / "teacher2student").glob("*/teacher_seed0"))) == 1
    assert (out / "curves.png").stat().st_size > 0


def test_config_records_models_and_files(pair_run, npz):
    t, s, out, _, _ = pair_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == "arrays" and cfg["direction"] == "teacher2student" and cfg["model"]["width"] == 2
    arrays = cfg["arrays"]
    assert arrays["num_classes"] == 3
    latent = 512 if s == "image32" else 16
    for role, form in (("teacher", t), ("student", s)):
        info = arrays[role]
        assert info["file"] == str(npz[form]) and len(info["sha256"]) == 64
        model = info["model"]
        assert model["sample_shape"] == list(FORMS[form][0]) and model["latent_dim"] == latent
        if form == "vector":
            assert (model["kind"], model["backbone"], model["depth"], model["projection"]) == ("vector", "mlp", 3, False)
        else:  # below 64 px: the small-input stem; width 2 pools to 16 channels (projected to 512)
            assert (model["backbone"], model["stem"], model["projection"]) == ("resnet10", "small", latent != 16)
            assert model["kind"] == ("video" if form == "frames" else "image")
        sizes = FORMS[form][1]
        expected = [sizes[0] - 6, 6, sizes[2]] if sizes[1] == 0 else list(sizes)
        assert [info["sizes"][k] for k in ("train", "val", "test")] == expected


def test_notices_are_printed_and_written(pair_run):
    t, s, out, _, stdout = pair_run
    md = (out / "results.md").read_text()
    for form in (t, s):
        carved = FORMS[form][1][1] == 0
        assert (f"{form}.npz): no x_val, so a stratified 10% validation split was carved" in stdout) == carved
        assert (f"{form}.npz): no x_val" in md) == carved
    no_test = FORMS[s][1][2] == 0
    assert ("the run reports validation accuracy only" in stdout) == no_test
    assert ("the run reports validation accuracy only" in md) == no_test
    assert "| teacher2student | ucmkd | 1 |" in md


# ------------------------------------------------------------------------ CLI == API, resume
def test_cli_and_api_give_the_same_numbers(cli_runs, npz):
    t, s, _, records, _ = cli_runs(1)
    api = distill(teacher_data=npz[t], student_data=npz[s], method="ucmkd", teacher_backbone="resnet10", width=2,
                  latent_dim=16, mlp_depth=3,
                  epochs=1, teacher_epochs=1, batch_size=16, progress=False, log=None).metrics
    cli = records[1]
    for k in ("val_acc", "test_acc", "test_ce", "teacher_val_acc", "teacher_test_acc", "best_epoch", "method"):
        assert cli[k] == api[k], k


def test_rerun_resumes_and_a_changed_file_is_refused(cli_runs, npz):
    t, s, out, records, _ = cli_runs(1)
    argv = pair_argv(npz, 1, out)
    again, stdout = run_cli(argv)
    assert "resuming: 2 finished run(s)" in stdout and again == records  # nothing retrained
    original = npz[s].read_bytes()
    try:  # same path, other content: its sha256 no longer matches config.json
        np.savez(npz[s], **toy_arrays(FORMS[s][0], 3, FORMS[s][1], seed=99))
        with pytest.raises(SystemExit, match="holds results of a different configuration"):
            run_cli(argv)
    finally:
        npz[s].write_bytes(original)


# ------------------------------------------------------------------------ bad input, before compiling


def _bad_file(folder, name, **arrays):
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case", ["no_x_train", "labels", "nan", "empty", "rank", "k_out_of_range",
                                  "vanilla_kd", "paired", "batch", "vector_backbone"])
def test_bad_input_stops_before_any_compilation(case, npz, tmp_path, no_compile):
    good = toy_arrays((12,), 3, (48, 12, 12), seed=1)
    teacher, student, extra = str(npz["vector"]), str(npz["image8"]), []
    bad = dict(good)
    if case == "no_x_train":
        student, message = _bad_file(tmp_path, "s", X=good["x_train"], y=good["y_train"]), "has no x_train or y_train"
    elif case == "labels":
        student, message = _bad_file(tmp_path, "s", **dict(good, y_train=good["y_train"] + 1)), "label sets differ"
    elif case == "nan":
        bad["x_test"] = good["x_test"].copy()
        bad["x_test"][3, 5] = np.nan
        student, message = _bad_file(tmp_path, "s", **bad), "x_test has NaN or infinite values in 1 sample"
    elif case == "empty":
        bad.update(x_val=good["x_val"][:0], y_val=good["y_val"][:0])
        student, message = _bad_file(tmp_path, "s", **bad), "x_val is empty"
    elif case == "rank":
        bad.update(x_train=np.zeros((48, 8, 8)), x_val=np.zeros((12, 8, 8)), x_test=np.zeros((12, 8, 8)))
        student, message = _bad_file(tmp_path, "s", **bad), "unsupported rank 3"
    elif case == "k_out_of_range":
        extra, message = ["--num-classes", "2"], r"label 2 at index 2, outside 0\.\.1"
    elif case == "vanilla_kd":
        extra, message = ["--methods", "ce,vanilla_kd"], "method 'vanilla_kd' needs paired samples"
    elif case == "paired":
        extra, message = ["--unpaired", "paired"], "dataset 'arrays' is unpaired"
    elif case == "batch":
        extra, message = ["--batch-size", "64"], "student train split has 42 samples, fewer than one batch of 64"
    elif case == "vector_backbone":
        extra, message = ["--teacher-backbone", "resnet18"], "resnet18 cannot encode \\(N, D\\) vectors"
    out = tmp_path / "out"
    argv = ["--dataset", "arrays", "--teacher-data", teacher, "--student-data", student, "--out", str(out)]
    with no_compile(), pytest.raises(ValueError, match=message):
        run_cli(argv + TINY + extra)
    assert not out.exists()  # nothing written either


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "arrays", "--teacher-data", "T.npz"], "needs --teacher-data T.npz and --student-data S.npz"),
    (["--teacher-data", "T.npz"], "teacher_data (--teacher-data) only applies to --dataset arrays"),
    (["--dataset", "arrays", "--teacher-data", "T.npz", "--student-data", "S.npz", "--direction", "a2v"],
     "direction does not apply to --dataset arrays"),
    (["--image-size", "112"], "--image-size applies to prepared real datasets"),
])
def test_flag_misuse_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        run.parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_file_is_named(tmp_path, npz):
    with pytest.raises(ValueError, match=r"student data: no such file '.*nope\.npz'"):
        run_cli(["--dataset", "arrays", "--teacher-data", str(npz["vector"]), "--student-data",
                 str(tmp_path / "nope.npz"), "--out", str(tmp_path / "out")] + TINY)
    assert not os.path.exists(tmp_path / "out")


def test_regime_and_subsample_apply_to_array_datasets(npz, tmp_path):
    """--unpaired hard --subsample 0.5 on image8 -> vector: each train split halved per class
    (round(n_c / 2)), then the teacher stream imbalanced 10:1 (class ranked r keeps
    round(10 ** (-r / 2) * k_c), in a seeded class order). The two files are separate
    collections, so no pool is halved."""
    import itertools

    out = tmp_path / "hard"
    records, stdout = run_cli(pair_argv(npz, 1, out) + ["--unpaired", "hard", "--subsample", "0.5",
                                                        "--methods", "ucmkd"])
    (ucmkd,) = records
    half = lambda y: [max(1, round(0.5 * n)) for n in np.bincount(y, minlength=3)]  # noqa: E731
    loaded = load_arrays(str(npz["image8"]), str(npz["vector"]))  # image8's validation is carved from train
    k_t, k_s = (half(loaded.modalities[r].train.y) for r in ("teacher", "student"))
    pools = {sum(max(1, round(10 ** (-r / 2) * k_t[c])) for r, c in enumerate(order))
             for order in itertools.permutations(range(3))}
    assert (ucmkd["student_train"], ucmkd["subsample"], ucmkd["unpaired"]) == (sum(k_s), 0.5, "hard")
    assert ucmkd["teacher_pool"] in pools and ucmkd["teacher_pool"] < sum(k_t)
    assert "regime hard, subsample 0.5" in open(out / "results.md").read()
    with pytest.raises(ValueError, match="dataset 'arrays' is unpaired .*: the paired regime is impossible"):
        distill(teacher_data=str(npz["image8"]), student_data=str(npz["vector"]), unpaired="paired",
                width=2, latent_dim=16, epochs=1, teacher_epochs=1, batch_size=16, progress=False, log=None)


def test_a_nan_mid_run_names_the_run_and_keeps_what_finished(npz, tmp_path, capsys):
    """A loss that stops being finite ends the run with one line naming the method, the seed,
    the epoch and the step; the runs finished before it stay in results.json. The same for the
    teacher's pre-training (vector -> vector: MLPs, quick to compile)."""
    from ucmkd_jax import cli

    base = ["--dataset", "arrays", "--teacher-data", str(npz["vector"]), "--student-data", str(npz["vector"]),
            "--latent-dim", "16"] + TINY
    out = tmp_path / "student"
    # an inner AdamW step of 1e30 sends the adapted student to inf: ucmkd's first step is not finite
    assert cli.run(run.main, base + ["--methods", "ce,ucmkd", "--set", "method.inner_lr=1e30",
                                     "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert ("error: method 'ucmkd' (ucmkd teacher2student seed 0): the loss or gradient became NaN/inf at epoch "
            "1/1, step 1/") in err
    assert [r["method"] for r in json.load(open(out / "results.json"))] == ["ce"]  # what finished is kept
    assert not (out / ".lock").exists()  # the lock went with the run
    blowup = ["--lr", "1e30", "--set", "optim.warmup_epochs=0", "--set", "optim.clip_norm=0"]
    assert cli.run(run.main, base + blowup + ["--methods", "ucmkd", "--out", str(tmp_path / "teacher")]) == 1
    assert "error: method 'ce' (teacher vector seed 0): the loss or gradient became NaN/inf" in capsys.readouterr().err


def test_arrays_teachers_go_to_the_teacher_cache(npz, tmp_path, monkeypatch):
    seen = {}

    def fake_run_experiment(cfg, dataset, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(run, "run_experiment", fake_run_experiment)
    run_cli(pair_argv(npz, 1, tmp_path / "out") + ["--teacher-cache", str(tmp_path / "cache")])
    assert seen["teacher_cache"] == str(tmp_path / "cache")

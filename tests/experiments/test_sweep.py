"""experiments/sweep.py: one cell trained for real on a small synthetic set (width 2, one epoch),
then resume and grid extension with a stand-in for run_experiment (no compiling). Compile time
dominates (the models' eager init alone is ~200 small compiles), so the real run is one module
fixture, and XLA's persistent cache is shared with the other CLI tests of the session."""
import glob
import json
import os
from types import SimpleNamespace

import pytest

from experiments import report, sweep
from ucmkd_jax import experiment
from ucmkd_jax.data import make_synthetic

ARGS = ["--backbone", "resnet10", "--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--no-progress"]


@pytest.fixture(scope="module")
def small():
    return make_synthetic(0, n_train=128, n_val=64, n_test=64)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, small):
    out = str(tmp_path_factory.mktemp("sweep"))
    state = sweep.main(ARGS + ["--lambdas-fa", "0.5", "--lambdas-la", "0.5", "--out", out], dataset=small)
    return out, state


def test_grid_json_heatmap_and_table(swept, capsys):
    out, state = swept
    with open(os.path.join(out, "sweep.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(state))
    assert saved["method"] == "ucmkd" and saved["lambdas_fa"] == [0.5] and saved["lambdas_la"] == [0.5]
    cells = saved["grid"]["a2v"]
    assert list(cells) == ["fa=0.5,la=0.5"]
    cell = cells["fa=0.5,la=0.5"]
    rec = cell["seeds"]["0"]
    assert (rec["lambda_fa"], rec["lambda_la"], rec["method"], rec["seed"]) == (0.5, 0.5, "ucmkd", 0)
    assert 0.0 <= rec["test_acc"] <= 1.0 and 0.0 <= rec["val_acc"] <= 1.0
    assert cell["test_acc_mean"] == pytest.approx(100 * rec["test_acc"]) and cell["test_acc_n"] == 1
    assert cell["test_acc_std"] is None  # one seed: no sample std
    assert len(glob.glob(os.path.join(out, "teachers", "a2v", "*", "teacher_seed0"))) == 1
    assert os.path.islink(os.path.join(out, "cells", "fa0.5_la0.5", "teachers"))
    assert os.path.exists(os.path.join(out, "history", "a2v_ucmkd_fa0.5_la0.5_seed0.json"))
    assert os.path.getsize(os.path.join(out, "heatmap_a2v.png")) > 1000
    md = open(os.path.join(out, "sweep.md")).read()
    assert "| λ_FA \\ λ_LA | 0.5 |" in md
    assert f"| **0.5** | {100 * rec['test_acc']:.2f} (n=1) |" in md
    assert "Best cell by mean validation accuracy: λ_FA=0.5, λ_LA=0.5" in md
    assert json.load(open(os.path.join(out, "results.json"))) == [rec]
    # the folder reads like a run folder: one report row per cell
    text = report.main([out])
    assert f"| ucmkd (λ_FA=0.5, λ_LA=0.5) | {100 * rec['test_acc']:.2f} (n=1) |" in text


def test_rerun_skips_finished_cells_and_extends_the_grid(swept, small, monkeypatch, capsys):
    out, _ = swept
    calls, caches = [], []

    def fake_run_experiment(cfg, dataset, *, out_dir, done, on_run, progress, **unused):
        calls.append((cfg.method.lambda_fa, cfg.method.lambda_la, set(done), out_dir))
        caches.append(unused.get("teacher_cache"))
        rec = {"dataset": "synthetic", "direction": "a2v", "method": "ucmkd", "seed": 0, "val_acc": 0.5,
               "test_acc": 0.25, "teacher_test_acc": 0.5}
        run = SimpleNamespace(record=rec, history=[{"epoch": 1}])
        on_run(run)
        return [run]

    monkeypatch.setattr(experiment, "run_experiment", fake_run_experiment)
    sweep.main(ARGS + ["--lambdas-fa", "0.5", "--lambdas-la", "0.5", "--out", out], dataset=small)
    assert calls == [] and "resuming: 1 finished run(s)" in capsys.readouterr().out
    state = sweep.main(ARGS + ["--lambdas-fa", "0.5,1", "--lambdas-la", "0.5,1", "--out", out,
                               "--teacher-cache", "/elsewhere"], dataset=small)
    assert [(a, b) for a, b, _, _ in calls] == [(0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    assert caches == ["/elsewhere"] * 3  # --teacher-cache is handed on
    assert all(done == set() and d.endswith(os.path.join("cells", f"fa{a:g}_la{b:g}")) for a, b, done, d in calls)
    assert state["grid"]["a2v"]["fa=1,la=1"]["test_acc_mean"] == pytest.approx(25.0)
    assert len(json.load(open(os.path.join(out, "results.json")))) == 4
    printed = capsys.readouterr().out
    assert "| **1** | 25.00 (n=1) | 25.00 (n=1) |" in printed
    real = state["grid"]["a2v"]["fa=0.5,la=0.5"]["test_acc_mean"]
    assert f"| **0.5** | {real:.2f} (n=1) | 25.00 (n=1) |" in printed


def test_refusals(swept, small):
    out, _ = swept
    with pytest.raises(SystemExit, match="a sweep of a different configuration"):
        sweep.main(ARGS + ["--lambdas-fa", "0.5", "--lambdas-la", "0.5", "--lr", "0.5", "--out", out], dataset=small)
    with pytest.raises(SystemExit, match="one method"):
        sweep.main(ARGS + ["--methods", "ce,ucmkd", "--out", out], dataset=small)
    with pytest.raises(SystemExit):  # the grid sets the lambdas
        sweep.main(ARGS + ["--lambda-fa", "0.5", "--out", out], dataset=small)
    with pytest.raises(SystemExit):
        sweep.main(ARGS + ["--lambdas-fa", "0.5,0.5", "--out", out], dataset=small)


def test_a_nan_in_a_cell_stops_the_sweep_and_keeps_the_finished_cells(small, tmp_path, monkeypatch):
    """The second cell's run stops with NonFiniteLossError (as fit raises it): the error names the
    run and reaches the user; the first cell is in sweep.json and results.json."""
    from ucmkd_jax.train import NonFiniteLossError

    def fake_run_experiment(cfg, dataset, *, out_dir, done, on_run, progress, **unused):
        if cfg.method.lambda_fa == 1.0:
            raise NonFiniteLossError("method 'ucmkd' (ucmkd a2v seed 0): the loss or gradient became NaN/inf at "
                                     "epoch 1/1, step 2/2 (global step 1)")
        rec = {"dataset": "synthetic", "direction": "a2v", "method": "ucmkd", "seed": 0, "val_acc": 0.5,
               "test_acc": 0.25, "teacher_test_acc": 0.5}
        on_run(SimpleNamespace(record=rec, history=[{"epoch": 1}]))
        return []

    monkeypatch.setattr(experiment, "run_experiment", fake_run_experiment)
    out = str(tmp_path / "sweep")
    with pytest.raises(NonFiniteLossError, match=r"ucmkd a2v seed 0\): the loss or gradient became NaN/inf"):
        sweep.main(ARGS + ["--lambdas-fa", "0.5,1", "--lambdas-la", "0.5", "--out", out], dataset=small)
    kept = json.load(open(os.path.join(out, "sweep.json")))["grid"]["a2v"]
    assert list(kept) == ["fa=0.5,la=0.5"] and len(json.load(open(os.path.join(out, "results.json")))) == 1
    assert not os.path.exists(os.path.join(out, ".lock"))

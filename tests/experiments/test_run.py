"""experiments/run.py end to end on the embedded dataset (tiny widths, one epoch)."""
import json
import os

import pytest

from experiments.run import main

ARGS = ["--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--no-progress"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    records = main(ARGS + ["--methods", "ce", "--out", out])
    return out, records


def test_writes_results_table_and_plot(first_run):
    out, records = first_run
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved == records and len(saved) == 1
    rec = saved[0]
    for key in ("dataset", "direction", "method", "seed", "val_acc", "test_acc", "teacher_test_acc", "epochs", "wall_s"):
        assert key in rec
    assert rec["dataset"] == "synthetic" and rec["direction"] == "a2v" and rec["method"] == "ce" and rec["epochs"] == 1
    assert 0.0 <= rec["test_acc"] <= 1.0 and 0.0 <= rec["teacher_test_acc"] <= 1.0
    md = open(os.path.join(out, "results.md")).read()
    assert "| a2v | ce | 1 |" in md and f"{100 * rec['test_acc']:.2f} ± 0.00" in md
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["model"]["width"] == 2 and cfg["train"]["epochs"] == 1 and cfg["unpaired"] == "easy" and cfg["subsample"] == 1.0


def test_rerun_resumes_and_reuses_the_teacher(first_run, capsys):
    out, records = first_run
    new = main(ARGS + ["--methods", "ce,ucmkd", "--out", out])
    printed = capsys.readouterr().out
    assert "resuming: 1 finished run(s)" in printed
    assert [r["method"] for r in new] == ["ce", "ucmkd"]
    assert new[0] == records[0]  # the finished run was not redone
    assert new[1]["teacher_test_acc"] == records[0]["teacher_test_acc"]  # same cached teacher
    assert new[1]["hypergrad"] == "first_order" and new[1]["unpaired"] == "easy"


def test_rerun_with_another_config_is_refused(first_run):
    out, _ = first_run
    with pytest.raises(SystemExit, match="holds results of a different configuration"):
        main(ARGS + ["--methods", "ce", "--lr", "0.5", "--out", out])


def test_unknown_method_and_unpaired_vanilla_kd_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        main(ARGS + ["--methods", "magic", "--out", str(tmp_path / "a")])
    with pytest.raises(ValueError, match="needs paired data: add --unpaired paired"):
        main(ARGS + ["--methods", "vanilla_kd", "--out", str(tmp_path / "b")])


def test_method_flags_reach_the_config():
    from experiments.run import parse_args, resolve_config

    cfg = resolve_config(parse_args(["--hypergrad", "unrolled", "--hvp", "reverse_over_reverse", "--n1", "2"]))
    assert (cfg.method.hypergrad, cfg.method.hvp, cfg.method.n1) == ("unrolled", "reverse_over_reverse", 2)
    assert resolve_config(parse_args([])).method.hvp == "forward_over_reverse"

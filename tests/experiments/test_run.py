"""experiments/run.py end to end on the embedded dataset (tiny widths, one epoch)."""
import json
import os

import pytest

from experiments.run import main

ARGS = ["--backbone", "resnet10", "--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--no-progress"]


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


def test_unknown_method_and_unpaired_vanilla_kd_fail_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a usage error: the config refuses the name
        main(ARGS + ["--methods", "ce,magic", "--out", str(tmp_path / "a")])
    assert e.value.code == 2 and "ExperimentConfig.methods must be one of" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="needs paired data: add --unpaired paired"):
        main(ARGS + ["--methods", "vanilla_kd", "--out", str(tmp_path / "b")])


def test_method_flags_reach_the_config():
    from experiments.run import parse

    _, cfg = parse(["--hypergrad", "unrolled", "--hvp", "reverse_over_reverse", "--n1", "2"])
    assert (cfg.method.hypergrad, cfg.method.hvp, cfg.method.n1) == ("unrolled", "reverse_over_reverse", 2)
    assert parse([])[1].method.hvp == "forward_over_reverse"


def test_every_config_field_is_reachable_typed_and_checked(capsys):
    """--set reaches any field by its dotted path (nested baseline options too), parses it by the
    field's type, applies after the short flags, and refuses unknown paths and bad values with
    a usage error naming the field."""
    from experiments.run import parse
    from ucmkd_jax.overrides import settable_paths

    _, cfg = parse(["--epsilon", "0.2", "--set", "method.fa.epsilon=0.05", "--set", "method.fa.epsilon_mode=relative",
                    "--set", "optim.momentum=0.8", "--set", "method.dkd.warmup_steps=7", "--set",
                    "model.latent_dim=32", "--set", "train.data_parallel=false", "--set", "methods=ce,sumall"])
    assert cfg.method.fa.epsilon == 0.05 and cfg.method.fa.epsilon_mode == "relative"  # --set wins over --epsilon
    assert (cfg.optim.momentum, cfg.method.dkd.warmup_steps, cfg.model.latent_dim) == (0.8, 7, 32)
    assert cfg.train.data_parallel is False and cfg.methods == ("ce", "sumall")
    paths = settable_paths(cfg)
    for path in ("optim.warmup_epochs", "optim.clip_norm", "optim.weight_decay", "method.inner_lr",
                 "method.inner_weight_decay", "method.inner_eps_root", "method.kd_temperature", "method.kd_alpha",
                 "method.fa.differentiation", "model.stem", "regime_noise", "regime_imbalance", "train.log_every"):
        assert path in paths
    for argv, message in [(["--set", "method.fa.eps=1"], "no config field 'method.fa.eps'"),
                          (["--set", "method.fa.cost=l3"], "method.fa.cost must be one of l2, l1, cosine, angular"),
                          (["--set", "train.epochs=two"], "train.epochs takes int; got 'two'"),
                          (["--set", "method=1"], "method is a group"),
                          (["--cost", "l3"], "method.fa.cost must be one of"),
                          (["--set", "epochs"], "--set expects PATH=VALUE")]:
        with pytest.raises(SystemExit) as e:
            parse(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err, argv


def test_list_config_prints_every_path(capsys):
    assert main(["--list-config", "--set", "method.fa.cost=l2"]) == []
    text = capsys.readouterr().out
    assert "method.fa.cost" in text and "= l2" in text and "method.rld.warmup_steps" in text

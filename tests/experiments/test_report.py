"""experiments/report.py on hand-written run folders: numbers against a hand computation, the paper
column, regimes, duplicates and missing values. No JAX, no training."""
import json
import os

import pytest

from experiments import report

PAPER = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "paper_tables.json")


def _rec(dataset, direction, method, seed, test, teacher=None, **extra):
    return dict(dataset=dataset, direction=direction, method=method, seed=seed,
                val_acc=None if test is None else test - 0.01, test_acc=test, teacher_test_acc=teacher,
                teacher_val_acc=teacher, **extra)


def _write(folder, cfg, records):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(records, f)
    return str(folder)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    unpaired = {"dataset": "crema_d", "pairing": "unpaired", "model": {"backbone": "resnet18"}}
    a = _write(base / "a", unpaired, [
        _rec("crema_d", "a2v", "ce", 0, 0.70, 0.65), _rec("crema_d", "a2v", "ce", 1, 0.72, 0.66),
        _rec("crema_d", "a2v", "ce", 2, 0.74, 0.67),
        _rec("crema_d", "a2v", "ucmkd", 0, 0.71, 0.65), _rec("crema_d", "a2v", "ucmkd", 1, 0.73, 0.66),
        _rec("crema_d", "a2v", "ucmkd", 2, None, 0.67),  # no test split: left out of the mean
        _rec("crema_d", "a2v", "sumall", 0, 0.60, 0.65),  # Table 6 has no CREMA-D column
        _rec("ravdess", "v2a", "sumall", 0, 0.50, 0.80),  # Table 6: 69.53, no std printed
    ])
    b = _write(base / "b", {"dataset": "crema_d", "pairing": "paired", "model": {"backbone": "resnet18"}}, [
        _rec("crema_d", "a2v", "ucmkd", 0, 0.55, 0.60, pairing="paired"),
        _rec("crema_d", "a2v", "ce", 0, 0.50, 0.60),
        _rec("crema_d", "a2v", "ucmkd", 1, 0.40, 0.61, unpaired="hard", subsample=0.5),
        _rec("crema_d", "a2v", "ucmkd", 4, 0.90, 0.61, unpaired="easy"),  # joins folder a's regime
        _rec("crema_d", "a2v", "ucmkd", 0, 0.10, 0.65, unpaired="easy"),  # duplicate of folder a: dropped
    ])
    return a, b


def _table(text, regime):
    """{row label: {column: cell}} of the table under the heading of ``regime``."""
    block = text.split(f"## {regime}\n", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in block.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        # paper columns repeat the name "paper": key them by the column on their left
        keys, prev = [], None
        for h in header[1:]:
            keys.append(f"{prev} paper" if h == "paper" else h)
            prev = h if h != "paper" else prev
        out[cells[0]] = dict(zip(keys, cells[1:]))
    return out


def test_numbers_against_a_hand_computation(runs, capsys):
    text = report.main(list(runs))
    assert capsys.readouterr().out.strip() == text.strip()
    t = _table(text, "unpaired=easy · subsample=1 · backbone=resnet18")
    # ce: 70, 72, 74 -> mean 72, sample std 2
    assert t["ce"]["CREMA-D A→V"] == "72.00 ± 2.00 (n=3)"
    # ucmkd: 71, 73 (a; seed 2 has no test acc), 90 (b, seed 4); b's seed 0 duplicate is dropped
    mean = (71 + 73 + 90) / 3
    std = (((71 - mean) ** 2 + (73 - mean) ** 2 + (90 - mean) ** 2) / 2) ** 0.5
    assert t["ucmkd"]["CREMA-D A→V"] == f"{mean:.2f} ± {std:.2f} (n=3)"
    # teacher: one value per seed: 65, 66, 67 (a) and 61 (b, seed 4)
    tm = (65 + 66 + 67 + 61) / 4
    ts = (sum((v - tm) ** 2 for v in (65, 66, 67, 61)) / 3) ** 0.5
    assert t["teacher"]["CREMA-D A→V"] == f"{tm:.2f} ± {ts:.2f} (n=4)"
    assert t["sumall"]["RAVDESS V→A"] == "50.00 (n=1)" and t["ce"]["RAVDESS V→A"] == "–"
    assert list(t) == ["teacher", "ce", "sumall", "ucmkd"]  # the paper's row order
    assert "duplicate crema_d a2v ucmkd seed 0" in text
    paired = _table(text, "unpaired=paired · subsample=1 · backbone=resnet18")
    assert paired["ucmkd"]["CREMA-D A→V"] == "55.00 (n=1)" and paired["ce"]["CREMA-D A→V"] == "50.00 (n=1)"
    hard = _table(text, "unpaired=hard · subsample=0.5 · backbone=resnet18")
    assert list(hard) == ["teacher", "ucmkd"] and hard["ucmkd"]["CREMA-D A→V"] == "40.00 (n=1)"


def test_paper_column(runs, tmp_path):
    out = tmp_path / "report.md"
    text = report.main(list(runs) + ["--paper", PAPER, "--out", str(out)])
    assert out.read_text() == text
    t = _table(text, "unpaired=easy · subsample=1 · backbone=resnet18")
    assert t["ce"]["CREMA-D A→V paper"] == "71.51 ± 0.88"  # Table 1
    assert t["ucmkd"]["CREMA-D A→V paper"] == "71.64 ± 0.86"  # Table 1 (not Table 2's paired value)
    assert t["teacher"]["CREMA-D A→V paper"] == "65.46"
    assert t["sumall"]["RAVDESS V→A paper"] == "69.53"  # Table 6
    assert t["sumall"]["CREMA-D A→V paper"] == "–"  # Table 6 has no CREMA-D
    paired = _table(text, "unpaired=paired · subsample=1 · backbone=resnet18")
    assert paired["ucmkd"]["CREMA-D A→V paper"] == "70.43 ± 0.66"  # Table 2
    assert paired["ce"]["CREMA-D A→V paper"] == "71.51 ± 0.88"  # teacher-free: Table 1 stands
    hard = _table(text, "unpaired=hard · subsample=0.5 · backbone=resnet18")
    assert hard["ucmkd"]["CREMA-D A→V paper"] == "–"  # Tables 3-5, 14 are not typed in
    assert "Paper values: Table 1 (ce, teacher, ucmkd); Table 6 (sumall)." in text


def test_val_metric_and_sweep_rows(tmp_path):
    run = _write(tmp_path / "s", {"dataset": "synthetic", "pairing": "unpaired", "model": {"backbone": "resnet18"}}, [
        _rec("synthetic", "a2v", "ucmkd", 0, 0.51, 0.4, lambda_fa=0.5, lambda_la=1.0),
        _rec("synthetic", "a2v", "ucmkd", 1, 0.53, 0.4, lambda_fa=0.5, lambda_la=1.0),
        _rec("synthetic", "a2v", "ucmkd", 0, 0.61, 0.4, lambda_fa=1.0, lambda_la=1.0),
    ])
    t = _table(report.main([run, "--metric", "val_acc"]), "unpaired=easy · subsample=1 · backbone=resnet18")
    assert t["ucmkd (λ_FA=0.5, λ_LA=1)"]["Synthetic A→V"] == "51.00 ± 1.41 (n=2)"  # val = test - 1
    assert t["ucmkd (λ_FA=1, λ_LA=1)"]["Synthetic A→V"] == "60.00 (n=1)"


def test_paper_tables_json_is_complete():
    with open(PAPER) as f:
        paper = json.load(f)
    by_name = {t["table"]: t for t in paper["tables"]}
    assert [len(by_name[t]["rows"]) for t in ("Table 1", "Table 2", "Table 6")] == [5, 8, 4]
    for t in paper["tables"]:
        for row in t["rows"]:
            assert len(row["values"]) == (4 if t["table"] == "Table 6" else 8)
            assert paper["methods"][row["method"]] == row["paper_name"]


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json is missing"):
        report.main([str(tmp_path)])


def test_two_protocols_side_by_side(tmp_path, capsys):
    cfg = {"dataset": "synthetic", "pairing": "unpaired", "model": {"backbone": "resnet18"}}
    clean = _write(tmp_path / "clean", dict(cfg, protocol="clean"), [
        _rec("synthetic", "a2v", "ce", 0, 0.60, 0.70), _rec("synthetic", "a2v", "ce", 1, 0.64, 0.72)])
    authors = _write(tmp_path / "authors", dict(cfg, protocol="authors"), [
        _rec("synthetic", "a2v", "ce", 0, 0.50, 0.80, model_selection="test", protocol="authors"),
        _rec("synthetic", "a2v", "ce", 1, 0.52, 0.82, model_selection="test", protocol="authors")])
    text = report.main([clean, authors])
    t = _table(text, "unpaired=easy · subsample=1 · backbone=resnet18")
    assert t["ce"]["Synthetic A→V (clean)"] == "62.00 ± 2.83 (n=2)"
    assert t["ce"]["Synthetic A→V (authors) †"] == "51.00 ± 1.41 (n=2)"
    assert t["teacher"]["Synthetic A→V (authors) †"] == "81.00 ± 1.41 (n=2)"
    assert "selected on the TEST split" in text
    # one protocol alone: no protocol in the column names, no dagger
    t1 = _table(report.main([clean]), "unpaired=easy · subsample=1 · backbone=resnet18")
    assert list(t1["ce"]) == ["Synthetic A→V"]

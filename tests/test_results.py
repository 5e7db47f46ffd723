"""ucmkd_jax.results: statistics over seeds, comparable configs, atomic process-0 writes."""
import json
import os

import jax
import numpy as np
import pytest

from ucmkd_jax import results


def test_mean_and_sample_std_in_percent():
    vals = [0.5, 0.75, None, 1.0]
    m, s, n = results.mean_std(vals)
    assert (m, n) == (pytest.approx(75.0), 3) and s == pytest.approx(np.std([50, 75, 100], ddof=1))
    assert results.mean_std([0.25]) == (25.0, None, 1) and results.mean_std([None]) == (None, None, 0)
    assert results.format_mean_std([0.5, 0.75, 1.0]) == "75.00 ± 25.00"
    assert results.format_mean_std([0.5]) == "50.00 ± 0.00"
    assert results.format_mean_std([0.5], with_n=True) == "50.00 (n=1)"
    assert results.format_mean_std([0.5, 1.0], with_n=True) == "75.00 ± 35.36 (n=2)"
    assert results.format_mean_std([]) == "n/a"


def test_comparable_drops_what_may_grow_and_check_names_the_difference():
    old = {"methods": ["ce"], "seeds": 1, "direction": "a2v", "method": {"lambda_fa": 1.0, "fa": {"cost": "l2"}}}
    new = {"methods": ["ce", "ucmkd"], "seeds": 3, "direction": "both",
           "method": {"lambda_fa": 0.5, "fa": {"cost": "l2"}}}
    assert results.comparable(old, also=["method.lambda_fa"]) == results.comparable(new, also=["method.lambda_fa"])
    results.check_resumable(old, new, "OUT", "OUT/config.json", "results", also=["method.lambda_fa"])
    with pytest.raises(SystemExit, match=r"OUT holds results of a different configuration \(see OUT/config.json; "
                                         r"differs in: method.lambda_fa\)"):
        results.check_resumable(old, new, "OUT", "OUT/config.json", "results")
    with pytest.raises(SystemExit, match="differs in: methods"):
        results.check_resumable(old, dict(old, methods=["x"]), "OUT", "p", "a sweep", growable=("seeds",))
    assert old["methods"] == ["ce"]  # the input is not modified


def test_writes_are_atomic_and_only_on_process_zero(tmp_path, monkeypatch):
    path = str(tmp_path / "r.json")
    results.write_json(path, [{"a": 1}])
    assert json.load(open(path)) == [{"a": 1}] and os.listdir(tmp_path) == ["r.json"]  # no temporary left
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    results.write_json(path, [{"a": 2}])
    results.write_text(str(tmp_path / "other.md"), "x")
    assert json.load(open(path)) == [{"a": 1}] and not (tmp_path / "other.md").exists()

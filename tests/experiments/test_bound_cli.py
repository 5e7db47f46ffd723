"""experiments/bound.py end to end on a small synthetic set (width 2, one epoch, ce and feature_kd:
the bound code does not depend on the method, and ucmkd's step is the slowest to compile):
bound.json's terms add up, agree with an independent evaluation and with the maths module,
the plot is written and a rerun resumes. (Named *_cli so that it does not shadow
tests/test_bound.py, the maths tests.)"""
import glob
import json
import math
import os

import numpy as np
import pytest

from experiments import bound as bound_cli
from ucmkd_jax.data import make_synthetic

ARGS = ["--backbone", "resnet10", "--width", "2", "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--no-progress",
        "--methods", "ce,feature_kd"]


@pytest.fixture(scope="module")
def small():
    return make_synthetic(0, n_train=128, n_val=64, n_test=96)


@pytest.fixture(scope="module")
def result(tmp_path_factory, small):
    out = str(tmp_path_factory.mktemp("bound"))
    return out, bound_cli.main(ARGS + ["--out", out], dataset=small)


def test_terms_add_up_and_are_recorded(result, small):
    out, state = result
    with open(os.path.join(out, "bound.json")) as f:
        saved = json.load(f)
    assert saved["records"] == json.loads(json.dumps(state["records"]))
    runs = [(r["direction"], r["method"], r["seed"]) for r in saved["records"]]
    assert runs == [("a2v", "ce", 0), ("a2v", "feature_kd", 0)]
    n_test = len(small.modalities["video"].test)
    for r in saved["records"]:
        assert r["n_s"] == n_test and r["n_t"] == len(small.modalities["audio"].test)
        assert math.isclose(r["bound_thm26"], r["err_t"] + r["fa_e"] + r["la_e"], rel_tol=1e-9)
        fs = r["finite_sample"]
        assert math.isclose(r["bound_thm27"], r["bound_thm26"] + fs["w_concentration"]
                            + fs["la_generalisation"]["head"], rel_tol=1e-9)
        assert fs["wasserstein_dimension_terms"] is None  # not computable: reported as such
        # err_T from the features equals the library's own evaluation of the teacher
        assert math.isclose(r["err_t"], r["teacher_test_ce_evaluate"], rel_tol=1e-4)
        assert math.isclose(r["student_ce"], r["student_test_ce"], rel_tol=1e-3)
        # LA_e = CE_S - mean(-kappa log kappa); the kappa term is in [0, 1/e]
        assert math.isclose(r["la_e"], r["student_ce"] - r["kappa_entropy"], rel_tol=1e-4, abs_tol=1e-5)
        assert 0.0 <= r["kappa_entropy"] <= 1 / math.e + 1e-6
        # tau: never below the empirical ratios, never above sqrt(2)||W||_2
        for cost, v in r["fa_by_cost"].items():
            assert v["tau_empirical_max_ratio"] <= v["tau"] * (1 + 1e-9)
            assert math.isclose(v["fa_e"], v["tau"] * v["w"], rel_tol=1e-12)
        assert r["fa_by_cost"]["l2"]["tau"] <= r["spectral_tau_l2"] * (1 + 1e-9)
        assert r["fa_e"] == min(v["fa_e"] for v in r["fa_by_cost"].values())
        assert fs["vc_dims"]["head"] == (16 + 1) * small.num_classes  # ResNet-18 width 2: latent 16
    (ce, fkd) = saved["summary"]
    assert (ce["method"], fkd["method"]) == ("ce", "feature_kd")
    assert ce["err_t"] == fkd["err_t"]  # one teacher, cached where run.py caches it
    assert len(glob.glob(os.path.join(out, "teachers", "a2v", "*", "teacher_seed0"))) == 1
    assert os.path.getsize(os.path.join(out, "bound.png")) > 1000
    md = open(os.path.join(out, "bound.md")).read()
    assert "| A→V | feature_kd | 1 |" in md and "Not computed" in md


def test_rerun_resumes_and_refuses_other_settings(result, small, capsys):
    out, state = result
    again = bound_cli.main(ARGS + ["--out", out], dataset=small)
    assert "resuming: 2 finished run(s)" in capsys.readouterr().out
    assert again["records"] == state["records"]
    with pytest.raises(SystemExit, match="different configuration"):
        bound_cli.main(ARGS + ["--out", out, "--delta", "0.01"], dataset=small)
    with pytest.raises(SystemExit):
        bound_cli.main(ARGS + ["--out", out, "--delta", "0.5"], dataset=small)


def test_features_match_the_model(small):
    """``features`` trims the padded last batch and returns the encoder's z and the head's logits."""
    import jax
    from ucmkd_jax.models import build_model

    m = build_model("vector", (5,), 3, backbone="mlp", width=2)
    v = m.init(jax.random.PRNGKey(0))
    from ucmkd_jax.data import Split
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    z, logits = bound_cli.features(bound_cli.make_featurizer(m), v, Split(x, np.zeros(7, np.int32)), 4)
    want_logits, want_z, _ = m.apply(v, x, train=False)
    np.testing.assert_allclose(z, want_z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-6)

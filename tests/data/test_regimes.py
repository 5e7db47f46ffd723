"""Data protocols: subsample ratios and the unpaired regimes of Appendix G, checked by counting."""
import numpy as np
import pytest

from ucmkd_jax.data.base import ModalityData, Split
from ucmkd_jax.data.regimes import (REGIMES, distillation_pools, pool_indices, protocol_indices, subsample,
                                    subsample_indices)


def _paired(n_per_class=(20, 10, 30), seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    rng.shuffle(y)
    # sample i of both modalities is the same clip: encode the index in the inputs
    ta = Split(np.arange(len(y), dtype=np.float32)[:, None] * np.ones((1, 4), np.float32), y.copy())
    sv = Split(np.arange(len(y), dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32), y.copy())
    val = Split(np.zeros((6, 4), np.float32), np.arange(6) % 3)
    return ModalityData("audio", ta, val, val), ModalityData("video", sv, Split(np.zeros((6, 2, 3), np.float32),
                                                                               np.arange(6) % 3), None)


def test_subsample_is_stratified_keeps_pairs_and_leaves_eval_whole():
    t, s = _paired()
    t2, s2, info = subsample(t, s, 0.3, seed=1, paired=True)
    counts = np.bincount(s2.train.y, minlength=3)
    assert counts.tolist() == [6, 3, 9]  # round(0.3 * n_c)
    np.testing.assert_array_equal(t2.train.x[:, 0], s2.train.x[:, 0, 0])  # the same clips on both sides
    np.testing.assert_array_equal(t2.train.y, s2.train.y)
    assert t2.val is t.val and s2.val is s.val and t2.test is t.test
    assert info == {"subsample": 0.3, "student_train": 18, "teacher_train": 18}
    again = subsample(t, s, 0.3, seed=1, paired=True)[1]
    np.testing.assert_array_equal(again.train.x, s2.train.x)  # seeded
    assert not np.array_equal(subsample(t, s, 0.3, seed=2, paired=True)[1].train.x, s2.train.x)
    assert subsample(t, s, 1.0, seed=1, paired=True)[1] is s
    with pytest.raises(ValueError, match=r"subsample ratio must be in \(0, 1\], got 0"):
        subsample(t, s, 0.0, seed=1, paired=True)


def test_easy_and_paired_leave_the_pools_whole():
    t, s = _paired()
    for regime in ("easy", "paired"):
        tp, sp, info = distillation_pools(t.train, s.train, regime, 0, paired=True)
        assert tp is t.train and sp is s.train and info["student_pool"] == info["teacher_pool"] == 60


def test_medium_pools_are_disjoint_halves_of_each_class():
    t, s = _paired()
    tp, sp, info = distillation_pools(t.train, s.train, "medium", 0, paired=True)
    s_ids, t_ids = set(sp.x[:, 0, 0].astype(int)), set(tp.x[:, 0].astype(int))
    assert not s_ids & t_ids and len(s_ids | t_ids) == 60
    assert np.bincount(sp.y, minlength=3).tolist() == [10, 5, 15]
    assert np.bincount(tp.y, minlength=3).tolist() == [10, 5, 15]


def test_hard_adds_teacher_noise_and_label_imbalance():
    t, s = _paired(n_per_class=(200, 200, 200))
    tp, sp, info = distillation_pools(t.train, s.train, "hard", 0, paired=True, noise=0.5, imbalance=10.0)
    counts = sorted(np.bincount(tp.y, minlength=3).tolist())
    assert counts == [10, 32, 100]  # 100 * 10**(-r/2) for r = 2, 1, 0
    assert np.bincount(sp.y, minlength=3).tolist() == [100, 100, 100]  # the student side stays balanced
    # x = clip id (the same in all 4 columns) + N(0, s^2) with s = 0.5 * std of the pool's ids; the
    # pool is a random subset of ids 0..599, whose std is about 600 / sqrt(12)
    assert info["noise_std"] == pytest.approx(0.5 * 600 / np.sqrt(12), rel=0.15)
    resid = tp.x - tp.x.mean(1, keepdims=True)  # the id cancels; what is left is noise, std s * sqrt(3/4)
    assert np.std(resid) == pytest.approx(info["noise_std"] * np.sqrt(3 / 4), rel=0.1)


def test_unpaired_collections_keep_their_pools_in_medium():
    t, s = _paired()
    tp, sp, info = distillation_pools(t.train, s.train, "medium", 0, paired=False)
    assert tp is t.train and sp is s.train and "already disjoint" in info["notes"][0]


def test_paired_regime_needs_a_paired_dataset_and_unknown_regimes_are_named():
    t, s = _paired()
    with pytest.raises(ValueError, match="paired regime needs a paired dataset"):
        distillation_pools(t.train, s.train, "paired", 0, paired=False)
    with pytest.raises(ValueError, match="unknown unpaired regime 'extreme'"):
        distillation_pools(t.train, s.train, "extreme", 0, paired=True)


def _unpaired(seed=0):
    """Two separate collections (60 and 45 samples); x encodes the sample's index."""
    rng = np.random.default_rng(seed)
    yt, ys = rng.integers(0, 3, 45), rng.integers(0, 3, 60)
    t = Split(np.arange(45, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32), yt)
    s = Split(np.arange(60, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32), ys)
    return ModalityData("audio", t, t, None), ModalityData("video", s, s, None)


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_index_functions_make_the_in_memory_choices(paired, ratio):
    """The streaming path's index functions pick exactly the samples the in-memory path keeps
    (x encodes the index; noise=0 so the hard regime's teacher inputs still show it)."""
    t, s = _paired() if paired else _unpaired()
    for seed in (0, 3):
        t_sub, s_sub, _ = subsample(t, s, ratio, seed, paired)
        ti, si = subsample_indices(t.train.y, s.train.y, ratio, seed, paired)
        np.testing.assert_array_equal(t_sub.train.x[:, 0], ti)
        np.testing.assert_array_equal(s_sub.train.x[:, 0, 0], si)
        for regime in REGIMES if paired else ("easy", "medium", "hard"):
            tp, sp, info = distillation_pools(t_sub.train, s_sub.train, regime, seed, paired, noise=0.0)
            got = protocol_indices(t.train.y, s.train.y, ratio=ratio, regime=regime, seed=seed, paired=paired)
            np.testing.assert_array_equal(tp.x[:, 0], got["teacher_pool"])
            np.testing.assert_array_equal(sp.x[:, 0, 0], got["student_pool"])
            np.testing.assert_array_equal(got["teacher_train"], ti)
            np.testing.assert_array_equal(got["student_train"], si)
            np.testing.assert_array_equal(tp.y, t.train.y[got["teacher_pool"]])
            info.pop("noise_std", None)
            assert {k: v for k, v in got["info"].items() if k in info} == info
            assert got["info"]["subsample"] == ratio and got["info"]["student_train"] == len(si)
            # without a teacher the student pool is the whole (subsampled) split, as in memory
            _, sp0, _ = distillation_pools(None, s_sub.train, regime, seed, paired)
            t0, s0, _ = pool_indices(None, s_sub.train.y, regime, seed, paired)
            assert t0 is None and np.array_equal(sp0.x[:, 0, 0], si[s0])


def test_index_functions_check_their_inputs():
    t, s = _paired()
    with pytest.raises(ValueError, match="subsample ratio"):
        subsample_indices(t.train.y, s.train.y, 1.5, 0, True)
    with pytest.raises(ValueError, match="paired regime needs a paired dataset"):
        pool_indices(t.train.y, s.train.y, "paired", 0, paired=False)
    with pytest.raises(ValueError, match="two train splits differ"):
        pool_indices(t.train.y[:-1], s.train.y, "medium", 0, paired=True)


def test_hard_regime_refuses_an_empty_teacher_pool():
    # one sample per class: the paired split gives every sample to the student pool
    y = np.arange(4)
    with pytest.raises(ValueError, match="hard regime: the teacher pool is empty"):
        pool_indices(y, y, "hard", seed=0, paired=True)

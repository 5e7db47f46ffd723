"""ucmkd_jax.data.stratify: the one seeded splitter selects exactly what the code it replaced did.

The OLD implementations are copied below verbatim (only renamed), as independent references:
every caller must pick the same indices as before for the same labels and seed, or earlier runs'
splits, subsamples and pools would not come out again."""
import numpy as np
import pytest

from data_prep import datasets as prep_datasets
from ucmkd_jax.data import regimes
from ucmkd_jax.data.arrays import carve_validation
from ucmkd_jax.data.base import Split
from ucmkd_jax.data.stratify import class_sample_size, stratified_sample


# ---- the old code, verbatim ------------------------------------------------------------------
def old_stratified_fraction(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """ucmkd_jax/data/regimes.py, stratified_fraction."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def old_hard_keep(y_pool, classes, keep_frac, rng):
    """ucmkd_jax/data/regimes.py, _pool_indices: the hard regime's per-class imbalance."""
    keep = []
    for c in classes:
        idx = np.flatnonzero(y_pool == c)
        n = max(1, int(round(keep_frac[int(c)] * len(idx))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def old_carve_validation(split: Split, fraction: float, seed: int):
    """ucmkd_jax/data/arrays.py, carve_validation."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(split.y):
        idx = np.flatnonzero(split.y == c)
        n = len(idx)
        k = min(max(int(round(fraction * n)), 1), n - 1) if n >= 2 else 0
        val_idx.append(rng.permutation(idx)[:k])
    val_mask = np.zeros(len(split), bool)
    val_mask[np.concatenate(val_idx)] = True
    if not val_mask.any():
        raise ValueError("cannot carve a validation split: every class has a single train sample")
    return split.subset(np.flatnonzero(~val_mask)), split.subset(np.flatnonzero(val_mask))


def old_prep_carve_validation(keys, seed: int, fraction: float = 0.1) -> set:
    """data_prep/datasets.py, carve_validation."""
    uniq = sorted(set(keys))
    n_val = int(round(fraction * len(uniq)))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return {uniq[i] for i in order[:n_val]}


def old_split_fraction_keep(n, split_fraction, seed, s_i):
    """ucmkd_jax/data/shards.py, load_shards: the seeded part of a split."""
    k = max(1, int(round(split_fraction * n)))
    chosen = np.random.default_rng([seed, s_i]).permutation(n)[:k]
    keep = np.zeros(n, bool)
    keep[chosen] = True
    return keep


# ---- the cases -------------------------------------------------------------------------------
def _labels(case: int) -> np.ndarray:
    """Random label vectors: balanced, skewed, with singleton classes, gaps in the class ids."""
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(5, 400))
    k = int(rng.integers(1, 12))
    if case % 3 == 0:
        y = rng.integers(0, k, n)
    elif case % 3 == 1:
        y = rng.choice(k, size=n, p=rng.dirichlet(np.full(k, 0.3)))
    else:
        y = np.concatenate([rng.integers(0, k, n), np.arange(k, k + 3) * 7])  # classes of one sample
        rng.shuffle(y)
    return y


CASES = range(12)
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.73, 1.0)


@pytest.mark.parametrize("case", CASES)
def test_choice_draw_is_the_regimes_subsample_and_pools(case):
    y = _labels(case)
    for seed in (0, 1, 7, 12345):
        for f in FRACTIONS:
            ss = np.random.SeedSequence([seed, 0x5AB])
            want = old_stratified_fraction(y, f, np.random.default_rng(ss))
            rng = np.random.default_rng(ss)
            got = stratified_sample(y, f, rng, draw="choice", min_per_class=1)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(regimes.stratified_fraction(y, f, np.random.default_rng(ss)), want)
            # the generator is left where the old code left it (the in-memory hard regime goes on drawing)
            old_rng = np.random.default_rng(ss)
            old_stratified_fraction(y, f, old_rng)
            assert rng.integers(1 << 62) == old_rng.integers(1 << 62)


@pytest.mark.parametrize("case", CASES)
def test_per_class_fractions_are_the_hard_regimes_imbalance(case):
    y = _labels(case)
    classes = np.unique(y)
    for seed in (0, 3, 99):
        order = np.random.default_rng(seed).permutation(classes)
        k = len(classes)
        keep_frac = {int(c): 10.0 ** (-(r / (k - 1) if k > 1 else 0.0)) for r, c in enumerate(order)}
        want = old_hard_keep(y, classes, keep_frac, np.random.default_rng([seed, 1]))
        got = regimes.stratified_fraction(y, keep_frac, np.random.default_rng([seed, 1]))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES)
def test_permutation_draw_is_the_arrays_validation_carve(case):
    y = _labels(case)
    split = Split(np.arange(len(y), dtype=np.float32)[:, None], y)
    for seed in (0, 1, 5, 2024):
        for f in (0.05, 0.1, 0.25, 0.5, 0.9):
            try:
                want = old_carve_validation(split, f, seed)
            except ValueError as e:
                with pytest.raises(ValueError, match=str(e)):
                    carve_validation(split, f, seed)
                continue
            got = carve_validation(split, f, seed)
            for a, b in zip(got, want):
                np.testing.assert_array_equal(a.x, b.x)
                np.testing.assert_array_equal(a.y, b.y)


@pytest.mark.parametrize("n", [0, 1, 2, 9, 10, 11, 137, 6698])
def test_one_stratum_is_data_preps_validation_keys_and_the_shard_fraction(n):
    keys = [f"clip{(i * 7919) % 10007:05d}" for i in range(n)]
    keys = keys + keys[: n // 5]  # repeated keys count once
    for seed in (0, 1, 42):
        for f in (0.0, 0.1, 0.33, 0.5):
            assert prep_datasets.validation_keys(keys, seed, f) == old_prep_carve_validation(keys, seed, f)
        for s_i, f in enumerate((0.1, 0.5, 0.99)):
            if n == 0:
                continue
            want = old_split_fraction_keep(n, f, seed, s_i)
            got = stratified_sample(np.zeros(n), f, np.random.default_rng([seed, s_i]), draw="permutation",
                                    min_per_class=1)
            np.testing.assert_array_equal(got, np.flatnonzero(want))


def test_the_two_draws_differ_and_the_class_counts_follow_the_rules():
    y = np.repeat(np.arange(4), [1, 2, 10, 40])
    a = stratified_sample(y, 0.5, np.random.default_rng(0), draw="choice")
    b = stratified_sample(y, 0.5, np.random.default_rng(0), draw="permutation")
    assert not np.array_equal(a, b)  # why both exist: the same state picks different subsets
    assert np.bincount(y[a], minlength=4).tolist() == [1, 1, 5, 20]  # max(1, round(f n_c))
    c = stratified_sample(y, 0.5, np.random.default_rng(0), draw="permutation", keep_one=True)
    assert np.bincount(y[c], minlength=4).tolist() == [0, 1, 5, 20]  # a class of one keeps its sample
    assert [class_sample_size(n, 0.1, min_per_class=0) for n in (0, 4, 5, 15)] == [0, 0, 0, 2]
    assert stratified_sample(np.zeros(0), 0.5, np.random.default_rng(0), draw="choice").shape == (0,)
    with pytest.raises(ValueError, match="draw must be one of"):
        stratified_sample(y, 0.5, np.random.default_rng(0), draw="shuffle")

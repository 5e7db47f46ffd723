"""ucmkd_jax.data.base: the one split validator, shared by the trainer and the arrays loader."""
import numpy as np
import pytest

from ucmkd_jax.data import validate_split
from ucmkd_jax.data.arrays import make_arrays_dataset
from ucmkd_jax.data.base import CrossModalDataset, ModalityData, Split, check_labels, check_split


def _split(n=12, k=3):
    return Split(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), np.arange(n) % k)


@pytest.mark.parametrize("change,message", [
    (lambda s: Split(s.x[:0], s.y[:0]), r"student train: x is empty \(shape \(0, 4\), y shape \(0,\)\)"),
    (lambda s: Split(s.x[:5], s.y), r"student train: x has 5 samples but y has 12 labels"),
    (lambda s: Split(s.x, s.y[:, None]), r"student train: y has shape \(12, 1\).*\(use y\.ravel\(\)\)"),
    (lambda s: Split(s.x, s.y + 0.5), r"student train: y holds non-integer label 0\.5 at index 0"),
    (lambda s: Split(s.x, np.where(np.arange(12) == 5, 6, s.y)),
     r"student train: y has label 6 at index 5, outside 0\.\.2 \(K = 3\)"),
    (lambda s: Split(np.where(np.arange(12)[:, None] == 3, np.nan, s.x), s.y),
     r"student train: x has NaN or infinite values in 1 sample\(s\), the first at index 3"),
    (lambda s: Split(np.float32(1.0), s.y), r"student train: x is a scalar"),
])
def test_validate_split_names_the_split_the_array_and_the_sample(change, message):
    with pytest.raises(ValueError, match=message):
        validate_split(change(_split()), 3, "student train")
    validate_split(_split(), 3, "student train")  # a good split passes


def test_the_trainer_and_the_arrays_loader_say_the_same_thing():
    x = _split().x.copy()
    x[7, 1] = np.inf
    y = np.arange(12) % 3
    with pytest.raises(ValueError) as trainer:
        validate_split(Split(x, y), 3, "student data")
    good = {"x_train": np.ones((6, 4), np.float32), "y_train": np.arange(6) % 3}
    with pytest.raises(ValueError) as loader:
        make_arrays_dataset(None, dict(good, x_val=x, y_val=y), log=None)
    assert str(loader.value) == str(trainer.value).replace(": x has", ": x_val has")


def test_dataset_validate_names_dataset_modality_and_split():
    s = _split()
    bad = Split(s.x, np.where(np.arange(12) == 2, -1, s.y))
    ds = CrossModalDataset("toy", 3, {"audio": ModalityData("audio", s, bad, None)}, paired=False)
    with pytest.raises(ValueError, match=r"toy/audio/val: y has label -1 at index 2, outside 0\.\.2"):
        ds.validate()


def test_check_split_returns_float32_and_int64_and_keeps_float32_inputs():
    s = _split()
    x, y = check_split(s.x, s.y.astype(np.float64), "w")
    assert x is s.x and y.dtype == np.int64
    x32, _ = check_split(np.ones((2, 3), np.uint8), [0, 1], "w")
    assert x32.dtype == np.float32
    check_labels(np.array([0, 2]), "w", 3)

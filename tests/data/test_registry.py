"""ucmkd_jax.data's dataset registry: names, the paired flag, and load_dataset's messages."""
import pytest

import ucmkd_jax.data as data
from ucmkd_jax.data import DATASET_REGISTRY, DATASETS, get_dataset, load_dataset, register_dataset
from ucmkd_jax.data.spec import SHARD_DATASETS
from ucmkd_jax.registry import Registry


def test_registered_names_are_the_argparse_choices():
    assert DATASETS == ("synthetic",) + SHARD_DATASETS == tuple(DATASET_REGISTRY)
    assert "arrays" not in DATASET_REGISTRY  # built from two files by ucmkd_jax.data.arrays, never by name
    assert DATASETS + ("arrays",) == ("synthetic", "crema_d", "ravdess", "ave", "vggsound", "arrays")


def test_entries_say_which_datasets_are_paired():
    assert all(get_dataset(n).paired for n in DATASETS)  # the same clips in both modalities
    ds = load_dataset("synthetic", seed=3)
    assert ds.paired == get_dataset("synthetic").paired and ds.name == "synthetic"


def test_unknown_names_and_missing_data_dir_keep_their_messages():
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; registered: ave, crema_d, ravdess, synthetic, vggsound$"):
        load_dataset("nope")
    with pytest.raises(ValueError, match=r"--dataset crema_d reads prepared shards: pass --data-dir DIR \(make them "
                                         r"with: python data_prep/prepare.py --dataset crema_d"):
        load_dataset("crema_d")


def test_register_dataset_adds_an_entry_once(monkeypatch):
    fresh = Registry("dataset")  # a copy: the test's entry must not outlive it
    for name, entry in DATASET_REGISTRY.items():
        fresh.add(name, entry)
    monkeypatch.setattr(data, "DATASET_REGISTRY", fresh)

    @register_dataset("tiny", paired=False, summary="for this test")
    def _load(name, data_dir, seed, streaming, image_size, video_crop, shard_config):
        return ("tiny", seed)

    assert data.get_dataset("tiny").paired is False and data.load_dataset("tiny", seed=5) == ("tiny", 5)
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("tiny", paired=False)(_load)

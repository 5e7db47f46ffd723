"""Datasets: a registry name -> loader returning a ``CrossModalDataset``.

Registered here, as the methods are (``ucmkd_jax.methods.base``): ``synthetic`` (generated in
memory from the seed) and the four prepared datasets of ``data_prep`` (``spec.SHARD_DATASETS``,
read from TFRecord shards). Each entry says whether the dataset is paired (sample i of its two
modalities' train splits is the same clip), so a run can refuse the paired regime before
loading anything. ``--dataset arrays`` (``ucmkd_jax.data.arrays``) is not registered: it is
built from two array files, never loaded by name, and is always unpaired.

``import ucmkd_jax.data`` imports neither JAX nor TensorFlow (moving batches to the devices is
``ucmkd_jax.parallel``; TensorFlow is imported where shards are read).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from ucmkd_jax.data.base import DIRECTIONS, CrossModalDataset, ModalityData, Split, roles, validate_split
from ucmkd_jax.data.spec import SHARD_DATASETS
from ucmkd_jax.data.streams import eval_batches, steps_per_epoch, train_batches
from ucmkd_jax.data.synthetic import make_synthetic
from ucmkd_jax.registry import Registry

__all__ = ["DIRECTIONS", "CrossModalDataset", "ModalityData", "Split", "roles", "validate_split",
           "eval_batches", "steps_per_epoch", "train_batches", "make_synthetic", "load_dataset", "DATASETS",
           "DatasetEntry", "DATASET_REGISTRY", "register_dataset", "get_dataset"]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset. ``load(name, data_dir, seed, streaming, image_size, video_crop,
    shard_config) -> CrossModalDataset`` (the last three as ``ExperimentConfig``'s fields of those
    names); ``paired``: its two modalities' train splits hold the same clips in the same order (the
    paired regime and ``vanilla_kd`` need it)."""

    name: str
    load: Callable[..., CrossModalDataset]
    paired: bool
    summary: str = ""


DATASET_REGISTRY: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(name: str, *, paired: bool, summary: str = ""):
    """Decorator: ``@register_dataset("synthetic", paired=True)`` on a loader
    ``load(name, data_dir, seed, streaming, image_size, video_crop, shard_config)``."""

    def deco(load):
        DATASET_REGISTRY.add(name, DatasetEntry(name, load, paired, summary))
        return load

    return deco


def get_dataset(name: str) -> DatasetEntry:
    return DATASET_REGISTRY.get(name)


@register_dataset("synthetic", paired=True, summary="the embedded demo: two modalities generated from the seed")
def _load_synthetic(name, data_dir, seed, streaming, image_size, video_crop, shard_config) -> CrossModalDataset:
    return make_synthetic(seed)


def _load_shards(name, data_dir, seed, streaming, image_size, video_crop, shard_config) -> CrossModalDataset:
    if not data_dir:
        raise ValueError(f"--dataset {name} reads prepared shards: pass --data-dir DIR "
                         f"(make them with: python data_prep/prepare.py --dataset {name} --raw-dir RAW --out-dir DIR)")
    try:
        from ucmkd_jax.data.shards import load_shards  # imports tensorflow lazily
    except ImportError as e:
        raise ImportError(f"reading {name} shards needs the data extra: pip install -e '.[data]' ({e})") from e
    return load_shards(name, data_dir, image_size=image_size, video_crop=video_crop, config=shard_config,
                       splits=("val", "test") if streaming else ("train", "val", "test"))


for _name in SHARD_DATASETS:  # the same clips in both modalities: paired
    register_dataset(_name, paired=True, summary="prepared TFRecord shards (data_prep/prepare.py)")(_load_shards)
del _name

# The registered names, in registration order: argparse choices (``experiments/run.py`` adds "arrays").
DATASETS = tuple(DATASET_REGISTRY)


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, *, streaming: bool = False,
                 image_size: int = 224, video_crop: str = "resize_crop",
                 shard_config: str | None = None) -> CrossModalDataset:
    """``synthetic`` is generated in memory from ``seed``; the others are read from TFRecord
    shards written by ``data_prep/prepare.py`` under ``data_dir``: all splits in memory, or with
    ``streaming`` only val and test (train then streams from the shards:
    ``ucmkd_jax.data.pipeline``, which ``run_experiment`` uses when train is None).
    ``image_size``, ``video_crop``: how video frames become S x S (``shards.decode_frame``);
    ``shard_config``: which prepared config (``shards.find_shard_dir``; None: the only one, else
    the dataset's default)."""
    return get_dataset(name).load(name, data_dir, seed, streaming, image_size, video_crop, shard_config)

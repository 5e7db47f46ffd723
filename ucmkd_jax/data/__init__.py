"""Datasets: a registry name -> loader returning a ``CrossModalDataset``."""
from __future__ import annotations

from ucmkd_jax.data.base import DIRECTIONS, CrossModalDataset, ModalityData, Split, roles, validate_split
from ucmkd_jax.data.streams import eval_batches, steps_per_epoch, train_batches
from ucmkd_jax.data.synthetic import make_synthetic

__all__ = ["DIRECTIONS", "CrossModalDataset", "ModalityData", "Split", "roles", "validate_split",
           "eval_batches", "steps_per_epoch", "train_batches", "make_synthetic", "load_dataset", "DATASETS"]

SHARD_DATASETS = ("crema_d", "ravdess", "ave", "vggsound")
DATASETS = ("synthetic",) + SHARD_DATASETS


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, *, streaming: bool = False,
                 image_size: int = 224) -> CrossModalDataset:
    """``synthetic`` is generated in memory from ``seed``; the others are read from TFRecord
    shards written by ``data_prep/prepare.py`` under ``data_dir``: all splits in memory, or with
    ``streaming`` only val and test (train then streams from the shards:
    ``ucmkd_jax.data.pipeline``, which ``run_experiment`` uses when train is None)."""
    if name == "synthetic":
        return make_synthetic(seed)
    if name in SHARD_DATASETS:
        if not data_dir:
            raise ValueError(f"--dataset {name} reads prepared shards: pass --data-dir DIR "
                             f"(make them with: python data_prep/prepare.py --dataset {name} --raw-dir RAW --out-dir DIR)")
        try:
            from ucmkd_jax.data.shards import load_shards  # imports tensorflow lazily
        except ImportError as e:
            raise ImportError(f"reading {name} shards needs the data extra: pip install -e '.[data]' ({e})") from e
        return load_shards(name, data_dir, image_size=image_size,
                           splits=("val", "test") if streaming else ("train", "val", "test"))
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")

"""In-memory cross-modal datasets: two modalities sharing a label set, each with its own splits.

Everything the training loop needs from a dataset is a ``CrossModalDataset``: per modality, a
train/val/test ``Split`` of numpy arrays. Sample i of the two modalities' *train* splits is the
same clip only when ``paired`` is True (then the paired regime may use it); unpaired training
never relies on that.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["Split", "ModalityData", "CrossModalDataset", "validate_split", "DIRECTIONS", "roles"]

# direction -> (teacher modality, student modality)
DIRECTIONS = {"a2v": ("audio", "video"), "v2a": ("video", "audio")}


@dataclasses.dataclass
class Split:
    """x: (N, *sample_shape) float32; y: (N,) int labels in [0, K)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> "Split":
        return Split(self.x[idx], self.y[idx])


@dataclasses.dataclass
class ModalityData:
    """One modality: its kind ("audio", "video", "image", "vector") and its splits. ``train`` may
    be None (a dataset loaded for streaming: only val/test in memory) or a ``TrainStream``."""

    modality: str
    train: Split
    val: Split
    test: Optional[Split]

    @property
    def sample_shape(self):
        """Per-sample input shape (from train; from val when train streams from shards and is
        not held in memory)."""
        split = self.train if isinstance(self.train, Split) else self.val
        return tuple(split.x.shape[1:])


@dataclasses.dataclass
class CrossModalDataset:
    name: str
    num_classes: int
    modalities: Dict[str, ModalityData]
    paired: bool
    class_names: Optional[Sequence[str]] = None

    def validate(self) -> None:
        for key, mod in self.modalities.items():
            for split_name in ("train", "val", "test"):
                split = getattr(mod, split_name)
                if isinstance(split, Split):
                    validate_split(split, self.num_classes, f"{self.name}/{key}/{split_name}")


def validate_split(split: Split, num_classes: int, where: str) -> None:
    """Raise ValueError naming ``where`` for empty splits, length mismatch, non-integer or
    out-of-range labels, and NaN / infinite inputs."""
    x, y = split.x, split.y
    if len(y) == 0:
        raise ValueError(f"{where}: the split is empty")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if y.ndim != 1:
        raise ValueError(f"{where}: labels must be a 1-d array of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.asarray(y) == np.round(y)):
            raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype}")
    lo, hi = int(np.min(y)), int(np.max(y))
    if lo < 0 or hi >= num_classes:
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(f"{where}: label {int(y[bad])} at index {bad} is outside [0, {num_classes})")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise ValueError(f"{where}: input {bad} contains NaN or infinite values")


def roles(dataset: CrossModalDataset, direction: str):
    """(teacher ModalityData, student ModalityData) for a direction "a2v" / "v2a" (or
    "<teacher>2<student>" with modality names as keys)."""
    if direction in DIRECTIONS:
        t, s = DIRECTIONS[direction]
    elif "2" in direction:
        t, s = direction.split("2", 1)
    else:
        raise ValueError(f"unknown direction {direction!r}; expected one of {sorted(DIRECTIONS)}")
    missing = [m for m in (t, s) if m not in dataset.modalities]
    if missing:
        raise ValueError(f"dataset {dataset.name!r} has no modality {missing[0]!r} "
                         f"(has {sorted(dataset.modalities)})")
    return dataset.modalities[t], dataset.modalities[s]

"""In-memory cross-modal datasets: two modalities sharing a label set, each with its own splits.

Everything the training loop needs from a dataset is a ``CrossModalDataset``: per modality, a
train/val/test ``Split`` of numpy arrays. Sample i of the two modalities' *train* splits is the
same clip only when ``paired`` is True (then the paired regime may use it); unpaired training
never relies on that.

Every split passes the same checks before anything is compiled: ``check_split`` (shapes, dtypes,
integer labels, finite inputs) and ``check_labels`` (labels in 0..K-1), together
``validate_split``. The arrays loader (``arrays.py``) and the trainer both call them, so a bad
input gets the same message, naming the split, the array and the first offending sample.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["Split", "ModalityData", "CrossModalDataset", "validate_split", "check_split", "check_labels",
           "DIRECTIONS", "roles"]

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
    """Raise ValueError naming ``where`` (and ``x`` / ``y``, the sample index) for anything
    ``check_split`` or ``check_labels`` refuses: empty splits, length mismatch, non-integer or
    out-of-range labels, NaN / infinite inputs."""
    check_split(split.x, split.y, where)
    check_labels(split.y, where, num_classes)


def check_split(x, y, where: str, x_name: str = "x", y_name: str = "y"):
    """The checks every split passes before training, on numpy: returns (x as float32, y as int64).

    ``where`` names the split in messages (for ``--dataset arrays``: the side and the file),
    ``x_name`` / ``y_name`` the arrays (``x_train``, ...); each message names the first offending
    sample by its index. Label ranges are ``check_labels`` (K may only be known later)."""
    x, y = np.asarray(x), np.asarray(y)
    if np.iscomplexobj(x):  # a cast to float32 would drop the imaginary part without a word
        raise ValueError(f"{where}: {x_name} has complex dtype {x.dtype}: expected real numbers (pass the magnitude "
                         f"np.abs(x), or the real and imaginary parts as channels)")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"{where}: {x_name} has dtype {x.dtype}: expected numbers")
    if x.ndim == 0:
        raise ValueError(f"{where}: {x_name} is a scalar: expected an array of samples (N, ...)")
    if x.shape[0] == 0 or y.size == 0:
        raise ValueError(f"{where}: {x_name} is empty (shape {x.shape}, {y_name} shape {y.shape}): a split needs "
                         f"samples; leave an empty one out")
    if 0 in x.shape[1:]:
        raise ValueError(f"{where}: {x_name} has shape {x.shape}: a sample cannot have a zero-size axis")
    if y.ndim != 1:
        hint = " (one-hot labels? use y.argmax(-1))" if y.ndim == 2 and y.shape[1] > 1 else (
            " (use y.ravel())" if y.ndim == 2 else "")
        raise ValueError(f"{where}: {y_name} has shape {y.shape}: labels must be a 1-d array of class "
                         f"indices 0..K-1{hint}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x_name} has {x.shape[0]} samples but {y_name} has {y.shape[0]} labels")
    if np.iscomplexobj(y) or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
                                  or y.dtype == bool):
        raise ValueError(f"{where}: {y_name} has dtype {y.dtype}: labels must be integers 0..K-1")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where}: {y_name} holds non-integer label {y[i].item()!r} at index {i}: labels "
                             f"must be integer class indices 0..K-1")
    with np.errstate(over="ignore"):  # values beyond float32 range become inf, reported below
        x = x.astype(np.float32, copy=False)  # a Split's x is float32 already: no copy
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{where}: {x_name} has NaN or infinite values in {len(bad)} sample(s), the first at "
                         f"index {int(bad[0])} (values beyond float32 range count as infinite)")
    return x, y.astype(np.int64)


def check_labels(y, where: str, num_classes: int, y_name: str = "y") -> None:
    """Raise ValueError naming the first label of ``y`` outside 0..num_classes-1 and its index."""
    y = np.asarray(y)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {y_name} has label {int(y[i])} at index {i}, outside 0..{num_classes - 1} "
                         f"(K = {num_classes}); labels must be integers 0..K-1")


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

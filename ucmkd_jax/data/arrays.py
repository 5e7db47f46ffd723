"""Bring your own modalities: two labelled array datasets -> a ``CrossModalDataset``.

Each side (teacher, student) is a ``.npz`` file, or a dict, holding ``x_train, y_train`` and
optionally ``x_val, y_val, x_test, y_test``; labels are integers 0..K-1 and the two sides use the
same K. The two sides were never collected together: the dataset is unpaired, and its modality
keys are ``"teacher"`` and ``"student"`` (direction ``"teacher2student"``).

    ds = load_arrays("T.npz", "S.npz")            # validates everything, prints what it decided
    teacher, student = roles(ds, "teacher2student")

The modality kind is read from the rank of ``x``:

    (N, D)            -> "vector"   (an MLP encoder)
    (N, H, W, C)      -> "image"    (images, and spectrograms with C = 1)
    (N, T, H, W, C)   -> "video"    (frame stacks)

Inputs are used as given (cast to float32): normalise them beforehand. Every check runs here,
on numpy, before anything is compiled (the per-split ones are ``base.check_split`` and
``base.check_labels``, the trainer's own); errors are ``ValueError`` naming the side, the file,
the array and the first offending sample. A class absent from a split is a warning, not an error.

A missing validation split is carved from train (stratified by class, seeded:
``stratify.stratified_sample`` with the permutation draw); a missing test
split is allowed (for the student that means the run reports validation accuracy only). Each
such decision is reported through ``log`` and kept in ``ArraysDataset.notices``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
import zipfile
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ucmkd_jax.data.base import CrossModalDataset, ModalityData, Split, check_labels, check_split
from ucmkd_jax.data.stratify import stratified_sample

__all__ = ["ArraysDataset", "KINDS", "DIRECTION", "MAX_CLASSES", "load_arrays", "make_arrays_dataset", "read_npz",
           "as_arrays", "carve_validation", "describe_arrays", "toy_arrays"]

# rank of x (batch axis included) -> modality kind
KINDS = {2: "vector", 4: "image", 5: "video"}
DIRECTION = "teacher2student"
MAX_CLASSES = 100_000  # beyond, a label is an identifier, not a class index (K sizes the head)
SPLITS = ("train", "val", "test")
_FORMS = "(N, D) vectors, (N, H, W, C) images or spectrograms, or (N, T, H, W, C) frame stacks"
_LAYOUT = "x_train, y_train and optionally x_val, y_val, x_test, y_test"


@dataclasses.dataclass
class ArraysDataset(CrossModalDataset):
    """A ``CrossModalDataset`` read from arrays. ``notices``: what the loader decided (carved
    validation splits, missing test splits), in order; ``sources``: role -> file path or None."""

    notices: List[str] = dataclasses.field(default_factory=list)
    sources: Dict[str, Optional[str]] = dataclasses.field(default_factory=dict)

    @property
    def has_student_test(self) -> bool:
        return self.modalities["student"].test is not None


def read_npz(path, role: str = "data") -> Dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file as a dict (no pickled objects)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{role} data: no such file {path!r}")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, Mapping):
            raise ValueError("it holds a single array (an .npy file?)")
        with f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{role} data {path}: not a readable .npz of plain arrays ({e}); "
                         f"write one with np.savez(path, {_LAYOUT.replace(' and optionally', ',')})") from e


def as_arrays(source, role: str) -> Tuple[Dict[str, np.ndarray], str]:
    """Normalise one side's data to a dict of arrays, and a name for messages.

    ``source``: a path to an ``.npz``; a mapping with the ``.npz`` keys; an ``(x, y)`` pair or a
    ``Split`` (train only); or a ``ModalityData``."""
    if isinstance(source, (str, os.PathLike)):
        return read_npz(source, role), f"{role} data ({os.fspath(source)})"
    if isinstance(source, ModalityData):
        out = {}
        for s in SPLITS:
            split = getattr(source, s)
            if split is not None:
                out[f"x_{s}"], out[f"y_{s}"] = split.x, split.y
        return out, f"{role} data"
    if isinstance(source, Split):
        return {"x_train": source.x, "y_train": source.y}, f"{role} data"
    if isinstance(source, Mapping):
        return dict(source), f"{role} data"
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return {"x_train": source[0], "y_train": source[1]}, f"{role} data"
    raise TypeError(f"{role} data: expected a path to an .npz, a dict with {_LAYOUT}, an (x, y) pair, "
                    f"a Split or a ModalityData; got {type(source).__name__}")


def _check_split(x, y, where: str, split: str):
    """One split's checks (the rank here, the rest ``base.check_split``); returns (x float32, y int64)."""
    x = np.asarray(x)
    if x.ndim not in KINDS:
        hint = ("; a single-channel spectrogram (N, H, W) needs a channel axis: x[..., None]"
                if x.ndim == 3 else "")
        raise ValueError(f"{where}: x_{split} has shape {x.shape}, an unsupported rank {x.ndim}: expected "
                         f"{_FORMS}{hint}")
    return check_split(x, y, where, f"x_{split}", f"y_{split}")


def _check_side(arrays: Mapping, where: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    keys = set(arrays)
    missing = [k for k in ("x_train", "y_train") if k not in keys]
    if missing:
        raise ValueError(f"{where} has no {' or '.join(missing)} (it holds: "
                         f"{', '.join(sorted(keys)) or 'nothing'}); each side needs {_LAYOUT}")
    for s in ("val", "test"):
        if (f"x_{s}" in keys) != (f"y_{s}" in keys):
            have, lack = (f"x_{s}", f"y_{s}") if f"x_{s}" in keys else (f"y_{s}", f"x_{s}")
            raise ValueError(f"{where} has {have} but no {lack}: give both or neither")
    unknown = sorted(keys - {f"{a}_{s}" for a in "xy" for s in SPLITS})
    if unknown:
        warnings.warn(f"{where}: ignoring array(s) {', '.join(unknown)} (known: {_LAYOUT})", UserWarning,
                      stacklevel=3)
    splits = {}
    for s in SPLITS:
        if f"x_{s}" in keys:
            splits[s] = _check_split(arrays[f"x_{s}"], arrays[f"y_{s}"], where, s)
    shape = splits["train"][0].shape[1:]
    for s, (x, _) in splits.items():
        if x.shape[1:] != shape:
            raise ValueError(f"{where}: x_{s} has per-sample shape {x.shape[1:]} but x_train has {shape}: "
                             f"all splits of one side must have the same sample shape")
    return splits


def _check_labels(splits, where: str, num_classes: int) -> None:
    for s, (_, y) in splits.items():
        check_labels(y, where, num_classes, f"y_{s}")


def _check_class_count(splits, where: str, num_classes: Optional[int]) -> None:
    """Refuse more than ``MAX_CLASSES`` classes, naming the first label beyond: a label of 10^12
    is an identifier, not a class index, and K sizes the model's head."""
    if num_classes is not None and num_classes > MAX_CLASSES:
        raise ValueError(f"K = {num_classes:,} classes: more than the {MAX_CLASSES:,} this loader accepts")
    for s, (_, y) in splits.items():
        big = y >= MAX_CLASSES
        if big.any():
            i = int(np.flatnonzero(big)[0])
            raise ValueError(f"{where}: y_{s} has label {int(y[i])} at index {i}: more than {MAX_CLASSES:,} classes. "
                             f"Labels must be class indices 0..K-1; map identifiers to indices with "
                             f"np.unique(y, return_inverse=True)[1]")


def _warn_missing_classes(split: Split, where: str, name: str, num_classes: int) -> None:
    absent = np.setdiff1d(np.arange(num_classes), np.unique(split.y))
    if absent.size:
        warnings.warn(f"{where}: the {name} split has no samples of class(es) {absent.tolist()} "
                      f"(of 0..{num_classes - 1})", UserWarning, stacklevel=3)


def carve_validation(split: Split, fraction: float, seed: int) -> Tuple[Split, Split]:
    """(train, val): a stratified, seeded split. Each class with >= 2 samples gives
    round(fraction * n_c) samples (at least 1, at most n_c - 1) to val; order is kept."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be in (0, 1), got {fraction}")
    val_idx = stratified_sample(split.y, fraction, np.random.default_rng(seed), draw="permutation",
                                min_per_class=1, keep_one=True)
    if not len(val_idx):
        raise ValueError("cannot carve a validation split: every class has a single train sample")
    val_mask = np.zeros(len(split), bool)
    val_mask[val_idx] = True
    return split.subset(np.flatnonzero(~val_mask)), split.subset(val_idx)


def _modality(splits, where: str, role: str, num_classes: int, seed: int, val_fraction: float,
              notices: List[str]) -> ModalityData:
    as_split = {s: Split(x, y.astype(np.int32)) for s, (x, y) in splits.items()}
    train = as_split["train"]
    if "val" in as_split:
        val = as_split["val"]
    else:
        n = len(train)
        train, val = carve_validation(train, val_fraction, seed)
        notices.append(f"{where}: no x_val, so a stratified {val_fraction:.0%} validation split was carved "
                       f"from train (seed {seed}): {len(val)} of {n} samples for validation, {len(train)} "
                       f"for training")
    test = as_split.get("test")
    if test is None:
        notices.append(f"{where}: no x_test, so " + (
            "the run reports validation accuracy only (no test accuracy)" if role == "student"
            else "the teacher's test accuracy is not reported"))
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            _warn_missing_classes(split, where, name, num_classes)
    kind = KINDS[train.x.ndim]
    return ModalityData(kind, train, val, test)


def make_arrays_dataset(teacher, student, *, num_classes: Optional[int] = None, seed: int = 0,
                        val_fraction: float = 0.1, name: str = "arrays",
                        log: Optional[Callable[[str], None]] = print) -> ArraysDataset:
    """Validate two sides and build the (unpaired) dataset.

    Args:
      teacher: the teacher modality's data (see ``as_arrays``), or None for a student alone.
      student: the student modality's data.
      num_classes: K; by default 1 + the largest label, which must then be the same on both sides.
      seed: seeds the validation carve-out (fixed across training seeds, so that every seed
        selects on the same validation samples).
      val_fraction: share of each class moved to validation when a side has no ``x_val``.
      log: called with each notice (``print`` by default; None: silent).
    Raises:
      ValueError naming the side and the array for any bad input (before anything is compiled).
    """
    sides = {"teacher": teacher, "student": student}
    checked, wheres, sources = {}, {}, {}
    for role, source in sides.items():
        if source is None:
            continue
        arrays, wheres[role] = as_arrays(source, role)
        sources[role] = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        checked[role] = _check_side(arrays, wheres[role])
    if "student" not in checked:
        raise ValueError("student data is required")
    for role, splits in checked.items():
        lo = min(int(y.min()) for _, y in splits.values())
        if lo < 0:
            _check_labels(splits, wheres[role], max(int(y.max()) for _, y in splits.values()) + 1)
    for role, splits in checked.items():  # before anything is sized by K
        _check_class_count(splits, wheres[role], num_classes)
    spans = {role: max(int(y.max()) for _, y in splits.values()) + 1 for role, splits in checked.items()}
    if num_classes is None:
        if len(set(spans.values())) > 1:
            raise ValueError(
                f"the teacher and student label sets differ: teacher labels span 0..{spans['teacher'] - 1} "
                f"(K = {spans['teacher']}), student labels span 0..{spans['student'] - 1} (K = {spans['student']}). "
                "Both sides must label the same classes with the same integers 0..K-1; if a class truly has no "
                "samples on one side, give K explicitly (num_classes=K, --num-classes K)")
        num_classes = spans["student"]
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got K = {num_classes}")
    for role, splits in checked.items():
        _check_labels(splits, wheres[role], num_classes)
    notices: List[str] = []
    modalities = {role: _modality(splits, wheres[role], role, num_classes, seed, val_fraction, notices)
                  for role, splits in checked.items()}
    if log is not None:
        for n in notices:
            log(n)
    return ArraysDataset(name=name, num_classes=num_classes, modalities=modalities, paired=False,
                         notices=notices, sources=sources)


def load_arrays(teacher_path, student_path, *, num_classes: Optional[int] = None, seed: int = 0,
                val_fraction: float = 0.1, log: Optional[Callable[[str], None]] = print) -> ArraysDataset:
    """``make_arrays_dataset`` from two ``.npz`` files (teacher, student)."""
    return make_arrays_dataset(teacher_path, student_path, num_classes=num_classes, seed=seed,
                               val_fraction=val_fraction, log=log)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_arrays(dataset: ArraysDataset) -> dict:
    """What a run on arrays used, for its config.json: K, the loader's notices and per side the
    file (absolute path, sha256) and split sizes. A rerun on changed files then no longer
    matches, so it is not resumed. (The models are described by their builder's side.)"""
    out = {"num_classes": dataset.num_classes, "notices": list(dataset.notices)}
    for role in ("teacher", "student"):
        data = dataset.modalities.get(role)
        if data is None:
            continue
        path = dataset.sources.get(role)
        out[role] = {"file": os.path.abspath(path) if path else None, "sha256": _sha256(path) if path else None,
                     "sizes": {s: (len(getattr(data, s)) if getattr(data, s) is not None else 0) for s in SPLITS}}
    return out


def toy_arrays(shape, num_classes: int = 3, sizes=(48, 12, 12), *, latent: int = 8, class_sep: float = 1.0,
               latent_noise: float = 0.7, noise: float = 1.0, class_seed: int = 0, seed: int = 0) -> Dict[str, np.ndarray]:
    """Generated labelled arrays of any supported per-sample ``shape``, for demos and tests (not
    evidence). Returns the ``.npz`` layout; a split of size 0 is left out.

    Each sample has a latent u = mu_y + latent_noise * e in R^latent, with the class means mu_y
    drawn from ``class_seed`` (keep it equal on both sides: the two modalities then share their
    classes), rendered through a side-specific random linear map (from ``seed``) to ``shape``,
    plus ``noise`` * standard normal noise. Labels cycle through 0..K-1 (balanced).
    """
    means = np.random.default_rng(class_seed).normal(size=(num_classes, latent)) * class_sep
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(latent, int(np.prod(shape)))) / np.sqrt(latent)
    out = {}
    for split, n in zip(SPLITS, sizes):
        if n:
            y = np.arange(n) % num_classes
            u = means[y] + latent_noise * rng.normal(size=(n, latent))
            x = u @ basis + noise * rng.normal(size=(n, basis.shape[1]))
            out[f"x_{split}"] = x.reshape((n,) + tuple(shape)).astype(np.float32)
            out[f"y_{split}"] = y.astype(np.int64)
    return out

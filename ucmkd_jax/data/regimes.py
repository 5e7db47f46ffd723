"""The paper's data protocols as transformations of train splits: data scarcity (Tables 3-5)
and the unpaired regimes of Appendix G / Table 14.

Both are seeded and applied per run seed, before any training, so every method of a seed
sees exactly the same pools (``ce`` included: it trains on the student pool too).

``subsample(teacher, student, ratio, seed, paired)``: keeps a stratified fraction ``ratio`` of
  each TRAIN split (at least one sample per class present); validation and test stay whole
  (the paper keeps the full test set). On a paired dataset the same clips are kept in both
  modalities, so pairing survives. The teacher is pre-trained on its subsampled train split.

``distillation_pools(t_train, s_train, regime, seed, paired)``: what the student trains on and
  what the teacher-modality stream draws from during distillation:
  - "paired": unchanged; batches pair each student sample with its partner (vanilla KD,
    the paired table).
  - "easy": unchanged pools; the teacher stream is an independent permutation (the paper's
    main setting: shuffling one modality's indices against the other).
  - "medium": disjoint sample pools: a stratified half of the clips for the student, the
    other half for the teacher stream (marginal mismatch). On an unpaired dataset (two
    separate collections, e.g. ``--dataset arrays``) the pools are already disjoint and are
    left as they are; ``info["notes"]`` says so.
  - "hard": medium, plus modality-specific noise on the teacher stream (Gaussian, std =
    ``noise`` x the pool's input std) and label imbalance between the sides: the teacher
    pool keeps a fraction ``imbalance ** (-r / (K - 1))`` of class ranked r in a seeded random
    order (1 for the first class, 1/imbalance for the last); the student pool stays balanced.
The teacher model itself is always pre-trained on its whole (subsampled) train split: the
regime describes the data seen during distillation.

Index level (what the streaming pipeline ``ucmkd_jax.data.pipeline`` uses, since it never holds
the inputs): ``subsample_indices``, ``pool_indices`` and their composition ``protocol_indices``
make the SAME seeded choices as ``subsample`` / ``distillation_pools`` (which are written on
top of them), from the labels alone. Only the hard regime's noise needs the inputs: the
in-memory path adds it here, the stream adds it to each teacher clip as it is decoded.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ucmkd_jax import seeds
from ucmkd_jax.data.base import ModalityData, Split
from ucmkd_jax.data.stratify import stratified_sample

__all__ = ["REGIMES", "subsample", "distillation_pools", "stratified_fraction", "subsample_indices",
           "pool_indices", "protocol_indices"]

REGIMES = ("easy", "medium", "hard", "paired")


def stratified_fraction(y: np.ndarray, fraction, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified random ``fraction`` of ``y``: round(fraction * n_c) of
    every class c present (at least 1), drawn with ``rng.choice`` (the protocol's draw since its
    first runs: ``stratify.stratified_sample``). ``fraction`` may map class -> share."""
    return stratified_sample(y, fraction, rng, draw="choice", min_per_class=1)


def _check_paired_labels(y_t: np.ndarray, y_s: np.ndarray, what: str):
    if len(y_t) != len(y_s) or not np.array_equal(y_t, y_s):
        raise ValueError(f"{what}: the dataset says it is paired but its two train splits differ "
                         f"({len(y_t)} vs {len(y_s)} samples or different labels)")


def _check_ratio(ratio: float):
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"subsample ratio must be in (0, 1], got {ratio}")


def subsample_indices(y_t: Optional[np.ndarray], y_s: np.ndarray, ratio: float, seed: int,
                      paired: bool) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """(teacher indices or None, student indices): the sorted train positions ``subsample``
    keeps (all of them for ratio 1). ``y_t`` None: no teacher modality."""
    _check_ratio(ratio)
    if ratio == 1.0:
        return (None if y_t is None else np.arange(len(y_t))), np.arange(len(y_s))
    rng = np.random.default_rng(np.random.SeedSequence([seed, seeds.SUBSAMPLE]))
    s_idx = stratified_fraction(np.asarray(y_s), ratio, rng)
    t_idx = None
    if y_t is not None:
        if paired:
            _check_paired_labels(np.asarray(y_t), np.asarray(y_s), "subsample")
            t_idx = s_idx
        else:
            t_idx = stratified_fraction(np.asarray(y_t), ratio, rng)
    return t_idx, s_idx


def subsample(teacher: Optional[ModalityData], student: ModalityData, ratio: float, seed: int,
              paired: bool) -> Tuple[Optional[ModalityData], ModalityData, dict]:
    """(teacher, student, info) with a stratified ``ratio`` of each train split kept."""
    _check_ratio(ratio)
    info = {"subsample": ratio, "student_train": len(student.train)}
    if teacher is not None:
        info["teacher_train"] = len(teacher.train)
    if ratio == 1.0:
        return teacher, student, info

    def cut(mod: ModalityData, idx) -> ModalityData:
        return ModalityData(mod.modality, mod.train.subset(idx), mod.val, mod.test)

    t_idx, s_idx = subsample_indices(None if teacher is None else teacher.train.y, student.train.y, ratio,
                                     seed, paired)
    if teacher is not None:
        teacher = cut(teacher, t_idx)
        info["teacher_train"] = len(t_idx)
    info["student_train"] = len(s_idx)
    return teacher, cut(student, s_idx), info


def _check_regime(regime: str, paired: bool):
    if regime not in REGIMES:
        raise ValueError(f"unknown unpaired regime {regime!r}; expected one of {', '.join(REGIMES)}")
    if regime == "paired" and not paired:
        raise ValueError("the paired regime needs a paired dataset (the same clips in both modalities)")


def _pool_indices(y_t: Optional[np.ndarray], y_s: np.ndarray, regime: str, rng: np.random.Generator,
                  paired: bool, imbalance: float, info: dict) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """The choices of ``distillation_pools`` for medium/hard, drawn from ``rng`` (whose state
    the in-memory path goes on using for the noise)."""
    s_idx, t_idx = np.arange(len(y_s)), np.arange(len(y_t))
    if paired:
        _check_paired_labels(y_t, y_s, f"{regime} regime")
        s_idx = stratified_fraction(y_s, 0.5, rng)
        t_idx = np.setdiff1d(np.arange(len(y_s)), s_idx)
    else:
        info["notes"].append("the two modalities are separate collections: their pools are already disjoint")
    if regime == "hard":
        y_pool = y_t[t_idx]
        if not len(y_pool):
            raise ValueError("hard regime: the teacher pool is empty (every class of the train split has a single "
                             "sample, which the student pool keeps): use a larger --subsample")
        classes = np.unique(y_pool)
        order = rng.permutation(classes)
        k = len(classes)
        keep_frac = {int(c): imbalance ** (-(r / (k - 1) if k > 1 else 0.0)) for r, c in enumerate(order)}
        t_idx = t_idx[stratified_fraction(y_pool, keep_frac, rng)]
        info["teacher_class_counts"] = {int(c): int(np.sum(y_t[t_idx] == c)) for c in classes}
        info["imbalance"] = imbalance
    return t_idx, s_idx


def pool_indices(y_t: Optional[np.ndarray], y_s: np.ndarray, regime: str, seed: int, paired: bool,
                 imbalance: float = 10.0) -> Tuple[Optional[np.ndarray], np.ndarray, dict]:
    """(teacher-stream pool indices or None, student pool indices, info): the sorted positions
    in the two (already subsampled) train splits that ``distillation_pools`` keeps for
    ``regime``, with the same seed and the same choices. The hard regime's noise is not applied
    here (it needs the inputs): ``info`` then has no ``noise_std``; scale ``noise`` by the
    pool's input std where the inputs are decoded (``ucmkd_jax.data.pipeline``)."""
    _check_regime(regime, paired)
    y_s = np.asarray(y_s)
    info = {"unpaired": regime, "notes": []}
    if regime == "paired" and y_t is not None:
        _check_paired_labels(np.asarray(y_t), y_s, "paired regime")
    if regime in ("paired", "easy") or y_t is None:
        t_idx = None if y_t is None else np.arange(len(y_t))
        return t_idx, np.arange(len(y_s)), _counts(info, t_idx, len(y_s))
    rng = np.random.default_rng(np.random.SeedSequence([seed, seeds.REGIME]))
    t_idx, s_idx = _pool_indices(np.asarray(y_t), y_s, regime, rng, paired, imbalance, info)
    return t_idx, s_idx, _counts(info, t_idx, len(s_idx))


def protocol_indices(y_t: Optional[np.ndarray], y_s: np.ndarray, *, ratio: float, regime: str, seed: int,
                     paired: bool, imbalance: float = 10.0) -> dict:
    """``subsample_indices`` then ``pool_indices`` on the kept samples, as
    ``ucmkd_jax.experiment.run_experiment`` applies them per seed, in positions of the WHOLE
    train splits. Returns {"teacher_train": the teacher's pre-training split, "student_train",
    "teacher_pool": the teacher stream of distillation, "student_pool", "info": the subsample
    and pool info merged}; teacher entries are None when ``y_t`` is None."""
    y_s = np.asarray(y_s)
    y_t = None if y_t is None else np.asarray(y_t)
    t_sub, s_sub = subsample_indices(y_t, y_s, ratio, seed, paired)
    t_pool, s_pool, info = pool_indices(None if y_t is None else y_t[t_sub], y_s[s_sub], regime, seed, paired,
                                        imbalance)
    info = dict(info, subsample=ratio, student_train=len(s_sub),
                teacher_train=None if t_sub is None else len(t_sub))
    return {"teacher_train": t_sub, "student_train": s_sub,
            "teacher_pool": None if t_sub is None else t_sub[t_pool], "student_pool": s_sub[s_pool],
            "info": info}


def distillation_pools(t_train: Optional[Split], s_train: Split, regime: str, seed: int, paired: bool,
                       noise: float = 0.5, imbalance: float = 10.0) -> Tuple[Optional[Split], Split, dict]:
    """(teacher-stream pool, student pool, info) for ``regime`` (see the module docstring).
    ``t_train`` may be None (no method of the run uses the teacher)."""
    _check_regime(regime, paired)
    info = {"unpaired": regime, "notes": []}
    if regime == "paired" and t_train is not None:
        _check_paired_labels(t_train.y, s_train.y, "paired regime")
    if regime in ("paired", "easy") or t_train is None:
        return t_train, s_train, _sizes(info, t_train, s_train)
    rng = np.random.default_rng(np.random.SeedSequence([seed, seeds.REGIME]))
    t_idx, s_idx = _pool_indices(np.asarray(t_train.y), np.asarray(s_train.y), regime, rng, paired, imbalance, info)
    if paired:
        s_train = s_train.subset(s_idx)
    if paired or regime == "hard":
        t_train = t_train.subset(t_idx)
    if regime == "hard":
        x = t_train.x.astype(np.float32)
        std = float(np.std(x))
        x = x + rng.normal(0.0, noise * std, size=x.shape).astype(np.float32)
        t_train = Split(x, t_train.y)
        info["noise_std"] = noise * std
    return t_train, s_train, _sizes(info, t_train, s_train)


def _counts(info: dict, t_idx: Optional[np.ndarray], n_s: int) -> dict:
    info["student_pool"] = n_s
    info["teacher_pool"] = None if t_idx is None else len(t_idx)
    return info


def _sizes(info: dict, t: Optional[Split], s: Split) -> dict:
    info["student_pool"] = len(s)
    info["teacher_pool"] = None if t is None else len(t)
    return info

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
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ucmkd_jax.data.base import ModalityData, Split

__all__ = ["REGIMES", "subsample", "distillation_pools", "stratified_fraction"]

REGIMES = ("easy", "medium", "hard", "paired")


def stratified_fraction(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a stratified random ``fraction`` of ``y``: round(fraction * n_c) of
    every class c present (at least 1)."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def _check_paired(t: Split, s: Split, what: str):
    if len(t) != len(s) or not np.array_equal(t.y, s.y):
        raise ValueError(f"{what}: the dataset says it is paired but its two train splits differ "
                         f"({len(t)} vs {len(s)} samples or different labels)")


def subsample(teacher: Optional[ModalityData], student: ModalityData, ratio: float, seed: int,
              paired: bool) -> Tuple[Optional[ModalityData], ModalityData, dict]:
    """(teacher, student, info) with a stratified ``ratio`` of each train split kept."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"subsample ratio must be in (0, 1], got {ratio}")
    info = {"subsample": ratio, "student_train": len(student.train)}
    if teacher is not None:
        info["teacher_train"] = len(teacher.train)
    if ratio == 1.0:
        return teacher, student, info
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5AB]))

    def cut(mod: ModalityData, idx) -> ModalityData:
        return ModalityData(mod.modality, mod.train.subset(idx), mod.val, mod.test)

    s_idx = stratified_fraction(student.train.y, ratio, rng)
    if teacher is not None:
        if paired:
            _check_paired(teacher.train, student.train, "subsample")
            t_idx = s_idx
        else:
            t_idx = stratified_fraction(teacher.train.y, ratio, rng)
        teacher = cut(teacher, t_idx)
        info["teacher_train"] = len(t_idx)
    info["student_train"] = len(s_idx)
    return teacher, cut(student, s_idx), info


def distillation_pools(t_train: Optional[Split], s_train: Split, regime: str, seed: int, paired: bool,
                       noise: float = 0.5, imbalance: float = 10.0) -> Tuple[Optional[Split], Split, dict]:
    """(teacher-stream pool, student pool, info) for ``regime`` (see the module docstring).
    ``t_train`` may be None (no method of the run uses the teacher)."""
    if regime not in REGIMES:
        raise ValueError(f"unknown unpaired regime {regime!r}; expected one of {', '.join(REGIMES)}")
    info = {"unpaired": regime, "notes": []}
    if regime == "paired":
        if not paired:
            raise ValueError("the paired regime needs a paired dataset (the same clips in both modalities)")
        if t_train is not None:
            _check_paired(t_train, s_train, "paired regime")
    if regime in ("paired", "easy") or t_train is None:
        return t_train, s_train, _sizes(info, t_train, s_train)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD15]))
    if paired:
        _check_paired(t_train, s_train, f"{regime} regime")
        s_idx = stratified_fraction(s_train.y, 0.5, rng)
        t_idx = np.setdiff1d(np.arange(len(s_train)), s_idx)
        s_train, t_train = s_train.subset(s_idx), t_train.subset(t_idx)
    else:
        info["notes"].append("the two modalities are separate collections: their pools are already disjoint")
    if regime == "hard":
        classes = np.unique(t_train.y)
        order = rng.permutation(classes)
        k = len(classes)
        keep_frac = {int(c): imbalance ** (-(r / (k - 1) if k > 1 else 0.0)) for r, c in enumerate(order)}
        keep = []
        for c in classes:
            idx = np.flatnonzero(t_train.y == c)
            n = max(1, int(round(keep_frac[int(c)] * len(idx))))
            keep.append(rng.choice(idx, size=n, replace=False))
        t_train = t_train.subset(np.sort(np.concatenate(keep)))
        x = t_train.x.astype(np.float32)
        std = float(np.std(x))
        x = x + rng.normal(0.0, noise * std, size=x.shape).astype(np.float32)
        t_train = Split(x, t_train.y)
        info["teacher_class_counts"] = {int(c): int(np.sum(t_train.y == c)) for c in classes}
        info["noise_std"] = noise * std
        info["imbalance"] = imbalance
    return t_train, s_train, _sizes(info, t_train, s_train)


def _sizes(info: dict, t: Optional[Split], s: Split) -> dict:
    info["student_pool"] = len(s)
    info["teacher_pool"] = None if t is None else len(t)
    return info

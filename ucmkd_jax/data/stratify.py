"""The one seeded splitter: a random fraction of every class, drawn from a NumPy generator.

Every seeded selection of samples in the project is ``stratified_sample``: the protocol's
subsample and regime pools (``regimes``), the validation carved from an arrays dataset's train
split (``arrays``), the seeded part of a shard split (``shards``) and data_prep's validation
keys. They differ in three ways, each a parameter here, and none may change: the selections of
earlier runs must come out again bit for bit, for the same labels and seed.

  draw: how the k samples of a class are drawn. Both give a uniformly random k-subset, but they
    consume the generator differently and so pick DIFFERENT subsets from the same state:
      "choice":      ``rng.choice(idx, size=k, replace=False)`` (regimes: subsample, pools);
      "permutation": ``rng.permutation(idx)[:k]`` (arrays' and data_prep's validation, shards).
    The classes are visited in sorted order, each drawn from (and advancing) the same ``rng``.
  k per class of n_c samples: ``max(min_per_class, round(fraction * n_c))``, then, with
    ``keep_one``, at most n_c - 1 (a class of one sample gives none: something must stay behind).
      regimes:  min_per_class=1                 (every class present keeps a sample);
      arrays:   min_per_class=1, keep_one=True  (every class keeps a train sample);
      data_prep, shards: min_per_class=0 / 1 on a single class (below).
  strata: ``y`` holds the classes; a selection that is not stratified passes one class for all
    (``np.zeros(n)``): then it is a plain seeded fraction of the n items, in the same draws.

NumPy only.
"""
from __future__ import annotations

from typing import Mapping, Union

import numpy as np

__all__ = ["DRAWS", "stratified_sample", "class_sample_size"]

DRAWS = ("choice", "permutation")


def class_sample_size(n: int, fraction: float, *, min_per_class: int = 1, keep_one: bool = False) -> int:
    """How many of a class of ``n`` samples ``stratified_sample`` takes (see the module docstring)."""
    k = max(min_per_class, int(round(fraction * n)))
    return min(k, n - 1) if keep_one else k


def stratified_sample(y, fraction: Union[float, Mapping], rng: np.random.Generator, *, draw: str,
                      min_per_class: int = 1, keep_one: bool = False) -> np.ndarray:
    """Sorted positions in ``y`` of a seeded random ``fraction`` of every class of ``y``.

    Args:
      y: (N,) class labels (any comparable values); ``np.zeros(n)`` for an unstratified draw.
      fraction: the share taken of each class, or a mapping class -> share (the hard regime's
        per-class imbalance).
      rng: the generator drawn from, class after class in sorted order (its state advances).
      draw: "choice" or "permutation": which NumPy draw (module docstring: both exist so that
        earlier runs' selections are reproduced exactly).
      min_per_class, keep_one: the bounds on each class's count (``class_sample_size``).
    Returns:
      int64 (k,) sorted positions; empty for an empty ``y``.
    """
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {DRAWS}, got {draw!r}")
    y = np.asarray(y)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        share = fraction[c] if isinstance(fraction, Mapping) else fraction
        k = class_sample_size(len(idx), share, min_per_class=min_per_class, keep_one=keep_one)
        # the draw is made even when k is 0: the generator advances as it always did
        picked.append(rng.choice(idx, size=k, replace=False) if draw == "choice" else rng.permutation(idx)[:k])
    if not picked:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64, copy=False)

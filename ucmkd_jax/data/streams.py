"""Batch streams for training: unpaired (two independent shuffles) or paired (same index).

Each yields dicts ``{"x_s", "y_s", "x_t"}`` (plus ``"y_t"``) of numpy arrays with a fixed batch
size: the last incomplete batch is dropped, so the compiled step never sees a new shape, unless
``keep_last`` (the release's DataLoader keeps it: one more compiled shape, ``n % batch_size`` rows).
NumPy only: moving batches to the devices is ``ucmkd_jax.parallel.prefetch_to_device``.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ucmkd_jax.data.base import Split

__all__ = ["steps_per_epoch", "train_batches", "eval_batches"]


def steps_per_epoch(n_student: int, batch_size: int, keep_last: bool = False) -> int:
    """Batches per epoch: ``n // batch_size``, plus the last partial batch with ``keep_last``."""
    if n_student < batch_size:
        raise ValueError(f"the student train split has {n_student} samples, fewer than one batch "
                         f"of {batch_size}: lower --batch-size")
    return -(-n_student // batch_size) if keep_last else n_student // batch_size


def train_batches(student: Split, teacher: Split | None, batch_size: int, epoch_seed: np.random.SeedSequence,
                  pairing: str = "unpaired", rows: np.ndarray | None = None,
                  keep_last: bool = False) -> Iterator[dict]:
    """One epoch of training batches.

    keep_last: also yield the last partial batch (``n % batch_size`` rows; its teacher batch has
      as many). With ``rows`` it must be absent (``n % batch_size == 0``): a process's rows are
      those of a full batch.

    rows: only these rows of every batch (a process of a multi-host run gathers the rows its
      devices hold, ``parallel.local_rows``); the batch order is the same as without.
    pairing:
      "unpaired": the teacher batch is drawn from its OWN independently shuffled stream (its own
        RNG, cycled if it is shorter): never the student batch's partner.
      "paired": x_t[i] is the partner of x_s[i] (same index in the two train splits).
      "none": no teacher batch (methods that do not use the teacher).
    """
    s_rng, t_rng = (np.random.default_rng(s) for s in epoch_seed.spawn(2))
    n = len(student)
    order = s_rng.permutation(n)
    if pairing == "unpaired":
        m = len(teacher)
        reps = -(-n // m)  # enough independent permutations to cover the epoch
        t_order = np.concatenate([t_rng.permutation(m) for _ in range(reps)])
    elif pairing == "paired":
        if len(teacher) != n:
            raise ValueError(f"paired batches need equal train splits, got {n} student and {len(teacher)} teacher samples")
    elif pairing != "none":
        raise ValueError(f"unknown pairing {pairing!r}")
    if keep_last and rows is not None and n % batch_size:
        raise ValueError(f"a partial last batch ({n % batch_size} of {batch_size} rows) cannot be split over "
                         f"processes: drop it (train.last_batch=drop)")
    keep = slice(None) if rows is None else rows
    for b in range(steps_per_epoch(n, batch_size, keep_last)):
        lo, hi = b * batch_size, min((b + 1) * batch_size, n)  # hi - lo < batch_size: the kept partial batch
        idx = order[lo:hi][keep]
        batch = {"x_s": student.x[idx], "y_s": student.y[idx].astype(np.int32)}
        if pairing == "unpaired":
            t_idx = t_order[lo:hi][keep]
        elif pairing == "paired":
            t_idx = idx
        else:
            yield batch
            continue
        batch["x_t"], batch["y_t"] = teacher.x[t_idx], teacher.y[t_idx].astype(np.int32)
        yield batch


def eval_batches(split: Split, batch_size: int, rows: np.ndarray | None = None) -> Iterator[tuple]:
    """(x, y, mask) batches of exactly ``batch_size`` (the last one zero-padded, mask False);
    with ``rows``, only those rows of each (a multi-host process's, as ``train_batches``)."""
    n = len(split)
    for start in range(0, n, batch_size):
        x, y = split.x[start:start + batch_size], split.y[start:start + batch_size]
        k = len(y)
        mask = np.ones(batch_size, bool)
        if k < batch_size:
            mask[k:] = False
            x = np.concatenate([x, np.zeros((batch_size - k,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(batch_size - k, y.dtype)])
        if rows is not None:
            x, y, mask = x[rows], y[rows], mask[rows]
        yield x, y.astype(np.int32), mask

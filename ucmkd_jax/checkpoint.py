"""Orbax checkpoints of variable pytrees (teachers and trained students)."""
from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["save_variables", "load_variables", "CheckpointError"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model it is restored into."""


def save_variables(path: str, variables) -> None:
    """Write ``variables`` (a pytree of arrays) to the directory ``path`` (replaced if present)."""
    path = os.path.abspath(path)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, jax.device_get(variables), force=True)
    ckptr.wait_until_finished()


def load_variables(path: str, like):
    """Restore variables saved at ``path`` with the structure, shapes and dtypes of ``like``.

    Raises CheckpointError naming the path if it is missing, unreadable or incompatible."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint at {path}")
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), like)
    try:
        restored = ocp.StandardCheckpointer().restore(path, target)
    except Exception as e:  # orbax raises many kinds; the user needs the path and the cause
        raise CheckpointError(f"checkpoint {path} is corrupt or does not match the model "
                              f"({type(e).__name__}: {str(e)[:300]}); delete it to retrain") from e
    want = {jax.tree_util.keystr(k): (np.shape(a), np.asarray(a).dtype)
            for k, a in jax.tree_util.tree_leaves_with_path(like)}
    got = {jax.tree_util.keystr(k): (np.shape(a), np.asarray(a).dtype)
           for k, a in jax.tree_util.tree_leaves_with_path(restored)}
    for key in sorted(set(want) | set(got)):  # orbax may restore other shapes without a word
        if want.get(key) != got.get(key):
            raise CheckpointError(f"checkpoint {path} does not match the model at {key}: stored "
                                  f"{got.get(key, 'nothing')}, model expects {want.get(key, 'nothing')}; "
                                  f"delete it to retrain")
    return jax.device_get(restored)

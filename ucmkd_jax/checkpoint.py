"""Orbax checkpoints: variable pytrees (teachers, trained students) and the per-epoch state of
a training run (``RunCheckpointer``).

On a multi-host job every process calls these (Orbax's saves are collective and write from
process 0); the renames and removals around them are process 0's, and the others wait for them
(``parallel.barrier``) before they read.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from ucmkd_jax.parallel import barrier

__all__ = ["save_variables", "load_variables", "CheckpointError", "RunCheckpointer", "on_primary"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the model it is restored into."""


def on_primary(name: str, action) -> None:
    """Run ``action()`` (file renames, removals) on process 0 only, then let every process pass."""
    if jax.process_index() == 0:
        action()
    barrier(name)


def save_variables(path: str, variables) -> None:
    """Write ``variables`` (a pytree of arrays) to the directory ``path`` (replacing it), so that
    ``path`` only ever holds a complete checkpoint: Orbax writes a sibling ``<path>.saving`` that
    is renamed into place once complete (a failed or killed save leaves ``path`` as it was)."""
    path = os.path.abspath(path)
    tmp, old = path + ".saving", path + ".old"
    on_primary(f"clear {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp, jax.device_get(variables), force=True)
    ckptr.wait_until_finished()

    def swap():
        if os.path.isdir(path):
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    on_primary(f"save_variables {path}", swap)


def load_variables(path: str, like):
    """Restore variables saved at ``path`` with the structure, shapes and dtypes of ``like``.

    Raises CheckpointError naming the path if it is missing, unreadable or incompatible."""
    path = os.path.abspath(path)
    if not os.path.isdir(path) and os.path.isdir(path + ".old"):  # killed between save_variables' two renames
        path = path + ".old"
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


def _flat(tree):
    """(key paths as strings, leaves): the state is stored as numbered leaves plus their paths,
    so any pytree (dataclass states, optax named tuples) round-trips through its own treedef."""
    with_path = jax.tree_util.tree_leaves_with_path(tree)
    return [jax.tree_util.keystr(k) for k, _ in with_path], [v for _, v in with_path]


class RunCheckpointer:
    """Per-epoch checkpoints of one training run, so that an interrupted run resumes.

    Layout of ``directory``:
      ``latest/<epoch>/``: the whole train state (params, batch stats, optimiser state, step
        counters) and a JSON ``meta`` (epoch, history, best-so-far, the run's fingerprint);
        Orbax writes each into a temporary folder and renames it when complete, so a kill or a
        failed write (a full disk) mid-save leaves the previous epoch's checkpoint as the
        latest. One is kept.
      ``best.epoch<k>/``: the best-by-validation variables, of the epoch ``k`` the latest meta
        names; a new best is written beside the old one before the state that points at it,
        and the old one is removed only after that, so the pair on disk always agrees. After
        ``finish`` it is ``best/``.
    The data position needs no state of its own: epoch e's batch order is a pure function of
    (seed, e), so resuming at an epoch boundary replays exactly the batches an uninterrupted
    run would see.

    fingerprint: a JSON-able description of the run (method, config, data sizes); restoring a
    checkpoint written with another fingerprint raises ``CheckpointError`` naming the folder.
    """

    def __init__(self, directory: str, fingerprint: dict):
        self.directory = os.path.abspath(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint))
        self._manager = None
        self._best_epoch = None

    @property
    def manager(self):
        if self._manager is None:
            self._manager = ocp.CheckpointManager(
                os.path.join(self.directory, "latest"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                     enable_async_checkpointing=False))
        return self._manager

    @property
    def best_path(self) -> str:
        """Where the best variables are once the run is over (``finish``)."""
        return os.path.join(self.directory, "best")

    def _best_of(self, epoch: int) -> str:
        return os.path.join(self.directory, f"best.epoch{epoch}")

    def restore(self, state_like):
        """(state, meta) of the latest complete checkpoint, or None if there is none.
        ``state_like``: a state pytree with the right structure, shapes and dtypes."""
        latest = os.path.join(self.directory, "latest")
        if not os.path.isdir(latest):
            return None
        epoch = self.manager.latest_step()
        if epoch is None:
            return None
        where = os.path.join(latest, str(epoch))
        like = jax.device_get(state_like)
        paths, leaves = _flat(like)
        target = {f"leaf_{i:05d}": jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for i, a in enumerate(leaves)}
        try:
            got = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as e:  # the user needs the folder and the cause, not a silent restart
            raise CheckpointError(f"checkpoint {where} is corrupt or does not match this run "
                                  f"({type(e).__name__}: {str(e)[:300]}); delete {self.directory} to "
                                  f"start this run again") from e
        meta = got["meta"]
        if meta.get("fingerprint") != self.fingerprint:
            old, new = meta.get("fingerprint") or {}, self.fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise CheckpointError(f"checkpoint {where} was written by a different run (differs in: "
                                  f"{', '.join(diff) or 'everything'}); delete {self.directory} or use "
                                  f"another --out")
        if meta.get("paths") != paths:
            raise CheckpointError(f"checkpoint {where} holds another state structure than this run's model and "
                                  f"method; delete {self.directory} to start this run again")
        stored = [got["state"][f"leaf_{i:05d}"] for i in range(len(leaves))]
        for p, a, b in zip(paths, stored, leaves):
            if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
                raise CheckpointError(f"checkpoint {where} does not match the model at {p}: stored "
                                      f"{np.shape(a)} {np.asarray(a).dtype}, expected {np.shape(b)} {np.asarray(b).dtype}")
        state = jax.tree.unflatten(jax.tree.structure(like), stored)
        self._best_epoch = meta.get("best_epoch")
        return state, meta

    def restore_best(self, meta: dict, like):
        """The best variables the restored ``meta`` names (``like``: their structure)."""
        return load_variables(self._best_of(meta["best_epoch"]), like)

    def save(self, epoch: int, state, meta: dict, best_variables=None) -> None:
        """Write epoch ``epoch`` (1-based, completed); ``meta["best_epoch"]`` names the best so
        far. ``best_variables``: the new best (of this epoch), if any."""
        if best_variables is not None:
            save_variables(self._best_of(epoch), best_variables)
        paths, leaves = _flat(jax.device_get(state))
        meta = dict(meta, epoch=epoch, fingerprint=self.fingerprint, paths=paths)
        flat = {f"leaf_{i:05d}": np.asarray(a) for i, a in enumerate(leaves)}
        self.manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()
        self._best_epoch = meta.get("best_epoch")
        on_primary(f"prune {self.directory}", self._prune_best)

    def _prune_best(self) -> None:
        """Remove the best variables no checkpoint points at any more."""
        keep = None if self._best_epoch is None else os.path.basename(self._best_of(self._best_epoch))
        for name in os.listdir(self.directory):
            if name.startswith("best.epoch") and name != keep:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    def finish(self) -> None:
        """The run is over: keep its best variables as ``best/`` and drop the resumable state
        (large: optimiser moments)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

        def keep_best():
            if self._best_epoch is not None and os.path.isdir(self._best_of(self._best_epoch)):
                shutil.rmtree(self.best_path, ignore_errors=True)
                os.rename(self._best_of(self._best_epoch), self.best_path)
            shutil.rmtree(os.path.join(self.directory, "latest"), ignore_errors=True)

        on_primary(f"finish {self.directory}", keep_best)

"""Data parallelism over a device mesh, single- or multi-host.

The compiled step is the single-device step: inputs sharded over a 1-d "data" mesh axis and a
replicated state make ``jax.jit`` partition it (GSPMD), so the global batch keeps single-device
semantics: BatchNorm statistics and the OT coupling are over the whole global batch, and the
gradient is the global mean. No hand-written collectives.

The mesh axis is of type Auto: with ``jax.make_mesh``'s default Explicit axes, OTT's cost
matrix between batch-sharded point clouds is refused (measured with jax 0.10.2 and ott-jax 0.6.0;
an Auto axis, or resharding the features to replicated before the OT call, matched one device
to 1e-8).

Multi-host: call ``maybe_initialize_distributed()`` first (the CLI does). Every process draws
the same global batch order (same seeds) but gathers and decodes only the rows its own devices
hold (``local_rows``: the in-memory batches and the shard stream take a ``rows`` argument), and
``shard_batch`` assembles the global arrays from each process's rows. Side effects outside the
devices (files) are process 0's (``ucmkd_jax.results.is_primary``); ``barrier`` makes the other
processes wait for them where a later read depends on them.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["data_mesh", "replicate", "local_rows", "shard_batch", "prefetch_to_device",
           "maybe_initialize_distributed", "check_batch_divisible", "barrier"]


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A 1-d mesh ("data",) over ``devices`` (default: all devices of all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"the {what} {batch_size} is not divisible by the {n} devices of the data-parallel "
                         f"mesh: choose a multiple of {n}")


def replicate(tree, mesh: Mesh):
    """``tree`` on every device of ``mesh`` (params, optimiser state, teacher variables)."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                                               lambda idx, a=a: np.asarray(a)[idx]),
                        jax.device_get(tree))


def local_rows(mesh: Optional[Mesh], batch_size: int) -> Optional[np.ndarray]:
    """The sorted global rows of a ``batch_size`` batch that this process's devices hold on the
    "data" axis of ``mesh``; None when this process holds them all (one process, or no mesh)."""
    if mesh is None or jax.process_count() == 1:
        return None
    index_map = NamedSharding(mesh, P("data")).addressable_devices_indices_map((batch_size,))
    rows = sorted({r for (sl,) in index_map.values() for r in range(*sl.indices(batch_size))})
    return np.asarray(rows, np.int64)


def shard_batch(batch, mesh: Mesh, batch_size: Optional[int] = None, rows: Optional[np.ndarray] = None):
    """A dict of numpy arrays -> global arrays split over "data". ``batch`` holds the whole
    global batch (``rows`` None), or only the global ``rows`` of a ``batch_size`` batch that this
    process holds (``local_rows``): each process passes its own, and only those are read."""
    sharding = NamedSharding(mesh, P("data"))
    if rows is None:
        return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}

    def local(v, idx):
        wanted = np.arange(*idx[0].indices(batch_size))
        return v[np.searchsorted(rows, wanted)]

    return {k: jax.make_array_from_callback((batch_size,) + v.shape[1:], sharding,
                                            lambda idx, v=v: local(v, idx)) for k, v in batch.items()}


def barrier(name: str) -> None:
    """Wait until every process gets here (a no-op for one process): after process 0 wrote or
    renamed a file the others are about to read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def prefetch_to_device(batches: Iterator[dict], size: int = 2, put=jax.device_put) -> Iterator[dict]:
    """Yield the batches of ``batches`` already on the device, ``size`` ahead: a background
    thread gathers the next numpy batches and starts their host-to-device copies while the
    current step runs. Order is preserved; an exception in the producer is re-raised here.
    ``put``: numpy batch -> device batch (``ucmkd_jax.parallel.shard_batch`` for a mesh)."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for batch in batches:
                if stop.is_set():
                    return
                q.put(put(batch))
            q.put(done)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)


def maybe_initialize_distributed() -> bool:
    """``jax.distributed.initialize()`` when the environment describes a multi-process job:
    a SLURM step with more than one task, a Cloud TPU pod slice, or an explicit
    ``JAX_COORDINATOR_ADDRESS``. Returns True when it initialised."""
    env = os.environ
    multi = (int(env.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in env
             or "TPU_WORKER_HOSTNAMES" in env and "," in env.get("TPU_WORKER_HOSTNAMES", ""))
    if not multi:
        return False
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:  # SLURM and TPU pods are auto-detected by JAX
        jax.distributed.initialize()
    return True

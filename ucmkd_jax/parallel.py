"""Data parallelism over a device mesh, single- or multi-host.

The compiled step is the single-device step: inputs sharded over a 1-d "data" mesh axis and a
replicated state make ``jax.jit`` partition it (GSPMD), so the global batch keeps single-device
semantics: BatchNorm statistics and the OT coupling are over the whole global batch, and the
gradient is the global mean. No hand-written collectives.

The mesh axis is of type Auto: with ``jax.make_mesh``'s default Explicit axes, OTT's cost
matrix between batch-sharded point clouds is refused (ALGORITHM.md, Known traps).

Multi-host: call ``maybe_initialize_distributed()`` first (the CLI does); every host then
builds the same global numpy batch (same seed) and ``shard_batch`` materialises on each host
only the rows of its own devices.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["data_mesh", "replicate", "shard_batch", "prefetch_to_device", "maybe_initialize_distributed",
           "check_batch_divisible"]


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


def shard_batch(batch, mesh: Mesh):
    """A dict of numpy arrays (global batch first axis) -> global arrays split over "data".
    Each host materialises only the rows of its addressable devices."""
    sharding = NamedSharding(mesh, P("data"))
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in batch.items()}


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

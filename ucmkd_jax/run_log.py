"""Per-epoch metrics of one run, as JSON lines and TensorBoard event files (the loop's edge).

    log = EpochLog("runs/x/logs", "a2v_ucmkd_seed0")
    log.write(record, history)        # fit's on_epoch: this epoch's record, all epochs so far
    log.close()

``<dir>/<name>.jsonl`` holds one JSON object per finished epoch. Its first write in a process
rewrites the file from the whole history (a resumed run restores the epochs before it), so the
file never shows an epoch twice or misses one. ``<dir>/tb/<name>/`` holds
TensorBoard events (scalars per epoch, tag = metric name): ``tensorboard --logdir <dir>/tb``.
On a multi-host job only process 0 logs (every process has the same record; several writers
would race on one file).
"""
from __future__ import annotations

import json
import os
import time
from typing import Sequence

from ucmkd_jax.results import is_primary

__all__ = ["EpochLog"]


def _summary_writer(directory: str):
    """tensorboardX's SummaryWriter, imported on first use (only runs that log need it) without
    PyTorch: tensorboardX imports torch, when it is installed, only to recognise torch tensors,
    and that import costs seconds (3.3 s of a CLI run's start on a 2-core CPU) for a writer
    that is given Python floats. A torch the process already imported is left as it is."""
    import sys

    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes ``import torch`` raise ImportError, which tensorboardX expects
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    # tensorboardX names the file by the second it was opened in; the suffix keeps a writer
    # opened within the same second (a quick resume) from overwriting its predecessor's events
    return SummaryWriter(directory, filename_suffix=f".{os.getpid()}.{time.time_ns()}")


class EpochLog:
    def __init__(self, directory: str, name: str, tensorboard: bool = True):
        self.enabled = is_primary()
        if self.enabled:
            os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"{name}.jsonl")
        self._started = False
        self._tb = None
        self._tb_dir = os.path.join(directory, "tb", name) if tensorboard else None

    def write(self, record: dict, history: Sequence[dict] = ()) -> None:
        """Log ``record`` (the newest epoch); ``history``: every epoch so far, record included."""
        if not self.enabled:
            return
        rows = history if not self._started and history else [record]
        with open(self.path, "a" if self._started else "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        self._started = True
        if self._tb_dir is not None:
            if self._tb is None:
                self._tb = _summary_writer(self._tb_dir)
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, global_step=int(record["epoch"]))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

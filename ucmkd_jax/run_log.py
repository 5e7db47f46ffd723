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
from typing import Sequence

from ucmkd_jax.results import is_primary

__all__ = ["EpochLog"]


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
                from tensorboardX import SummaryWriter  # imported here: only runs that log need it
                self._tb = SummaryWriter(self._tb_dir)
            for k, v in record.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, global_step=int(record["epoch"]))
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

"""Run outputs: records, their statistics over seeds, and the files they are written to.

A run writes JSON (records, configs, sweep and bound states) that later reruns read back, so
every writer here is atomic (a temporary file, then ``os.replace``: an interrupt never leaves a
torn file) and, on a multi-host job, runs on process 0 only (``is_primary``): the other
processes compute the same values and must not race on the same shared files.

Statistics are over seeds: mean and sample standard deviation (ddof = 1; none for one seed),
accuracies reported in %.
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DIRECTION_NAMES", "GROWABLE", "is_primary", "write_json", "write_text", "read_json", "OutputLock",
           "comparable", "check_resumable", "mean_std", "format_mean_std"]

DIRECTION_NAMES = {"a2v": "A→V", "v2a": "V→A"}
# Config fields a rerun may change without invalidating finished runs: each record names its
# direction, method and seed, so more of them can be added to an output folder later.
GROWABLE = ("methods", "seeds", "first_seed", "direction")


def is_primary() -> bool:
    """True on the process that writes shared outputs: process 0 of a multi-host job (and the
    only process of a single-host one)."""
    import jax  # here: report.py and data tools import this module without needing JAX

    return jax.process_index() == 0


def write_json(path: str, obj, indent: int = 2) -> None:
    """Atomically write ``obj`` as JSON to ``path`` (process 0 only)."""
    write_text(path, json.dumps(obj, indent=indent))


def write_text(path: str, text: str) -> None:
    """Atomically write ``text`` to ``path`` (process 0 only)."""
    if not is_primary():
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: str, what: str = "this file"):
    """The JSON content of ``path``; a missing, empty or torn file raises ValueError naming it."""
    try:
        with open(path) as f:
            text = f.read()
        return json.loads(text)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing ({what}); the folder is incomplete: rerun with --fresh, or use "
                         f"another --out") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        state = "empty" if not text.strip() else f"not valid JSON ({e})"
        raise ValueError(f"{path} ({what}) is {state}: it was cut short (an interrupted or failed write?); "
                         f"delete it, or rerun with --fresh to start over") from None


class OutputLock:
    """Exclusive use of an output folder by one run, as a lock file ``<out>/.lock`` holding the
    owner's host and pid (``with OutputLock(out): ...``). A second run on the same folder stops
    with an error naming the first; a lock left by a process that no longer runs on this host
    (``kill -9``) is taken over. On a multi-host job only process 0 takes it."""

    def __init__(self, out: str):
        self.path = os.path.join(out, ".lock")
        self.held = False

    def __enter__(self):
        if not is_primary():
            return self
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and not self._stale(owner):
                    raise ValueError(f"another run (pid {owner.get('pid')} on {owner.get('host')}, since "
                                     f"{owner.get('since')}) is writing to {os.path.dirname(self.path)}: wait for it "
                                     f"or use another --out (if it is gone, delete {self.path})") from None
                os.remove(self.path)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise ValueError(f"could not take the lock {self.path}")

    def _owner(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None  # torn or vanished: treated as stale

    @staticmethod
    def _stale(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def __exit__(self, *exc):
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False
        return False


def comparable(cfg_dict: dict, also: Iterable[str] = (), growable: Iterable[str] = GROWABLE) -> dict:
    """``cfg_dict`` without the ``growable`` fields and the dotted paths in ``also`` (e.g.
    "method.lambda_fa", which a sweep sets per cell): two configs whose comparable parts are equal
    can share an output folder."""
    out = json.loads(json.dumps(cfg_dict))
    for path in tuple(growable) + tuple(also):
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _differences(a, b, prefix: str = "") -> list:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def check_resumable(old_cfg: dict, new_cfg: dict, out: str, path: str, what: str, also: Iterable[str] = (),
                    growable: Iterable[str] = GROWABLE) -> None:
    """Stop (``SystemExit`` with an "error: ..." line) unless the config of the results already in
    ``out`` (``old_cfg``, read from ``path``) is ``comparable`` with the new one, naming the
    fields that differ. ``what`` says what the folder holds ("results", "a sweep", ...)."""
    a, b = comparable(old_cfg, also, growable), comparable(new_cfg, also, growable)
    if a != b:
        diff = ", ".join(_differences(a, b)[:8])
        raise SystemExit(f"error: {out} holds {what} of a different configuration (see {path}; differs in: "
                         f"{diff}); use another --out, or --fresh to discard them")


def mean_std(values: Sequence[Optional[float]], scale: float = 100.0,
             ddof: int = 1) -> Tuple[Optional[float], Optional[float], int]:
    """(mean, std or None for one value, n) of the non-None ``values`` times ``scale`` (fractions
    to %); the std with ``ddof`` (1: sample std); (None, None, 0) when there are none."""
    vals = scale * np.asarray([v for v in values if v is not None], float)
    if len(vals) == 0:
        return None, None, 0
    return float(vals.mean()), (float(vals.std(ddof=ddof)) if len(vals) > 1 else None), len(vals)


def format_mean_std(values: Sequence[Optional[float]], *, with_n: bool = False, scale: float = 100.0,
                    ddof: int = 1) -> str:
    """"m ± s" (two decimals) of ``mean_std``; one value gives "m ± 0.00", or "m (n=1)" with
    ``with_n`` (which appends "(n=k)" to every cell); "n/a" without values."""
    m, s, n = mean_std(values, scale, ddof)
    if n == 0:
        return "n/a"
    if with_n:
        return f"{m:.2f} ± {s:.2f} (n={n})" if s is not None else f"{m:.2f} (n={n})"
    return f"{m:.2f} ± {0.0 if s is None else s:.2f}"

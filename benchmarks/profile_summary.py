"""Where a compiled step's time goes: trace a few steps with ``jax.profiler`` and sum the device
(or, on a CPU, the host-op) events of the Perfetto trace by name and by coarse category.

Used by ``step_bench.py --profile DIR``; also runnable on a saved trace:

    python benchmarks/profile_summary.py DIR/CASE/plugins/profile/*/perfetto_trace.json.gz --steps 3
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
from typing import Callable, Dict, List, Optional

__all__ = ["trace_steps", "summarise_trace", "category", "format_summary"]

# Coarse categories of kernel / op names (first match wins).
_CATEGORIES = [
    ("convolution", re.compile(r"conv|cudnn|xmma|implicit_?gemm|wgrad|dgrad|fprop|winograd", re.I)),
    ("matmul", re.compile(r"gemm|cublas|\bdot\b|matmul|cutlass|triton_gemm", re.I)),
    ("copy/transpose", re.compile(r"memcpy|memset|copy|transpose", re.I)),
    ("reduction", re.compile(r"reduce|reduction", re.I)),
    ("fusion", re.compile(r"fusion|loop_|input_|kernel", re.I)),
]
# Host-side bookkeeping events on a CPU trace (not compute).
_HOST_NOISE = re.compile(r"^\$|ThunkExecutor|PjitFunction|PjRt|ThreadPool|Await|Execute|profiler"
                         r"|^(while|cond|conditional|call)(\.\d+)?$", re.I)  # containers: their bodies are events too


def category(name: str) -> str:
    for cat, pattern in _CATEGORIES:
        if pattern.search(name):
            return cat
    return "other"


def trace_steps(step: Callable[[], None], sync: Callable[[], None], steps: int, out_dir: str) -> Optional[str]:
    """Runs ``steps`` synchronised steps under ``jax.profiler.trace``; returns the Perfetto trace path."""
    import jax

    os.makedirs(out_dir, exist_ok=True)
    with jax.profiler.trace(out_dir, create_perfetto_trace=True):
        for _ in range(steps):
            step()
            sync()
    found = sorted(glob.glob(os.path.join(out_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    return found[-1] if found else None


def summarise_trace(path: str, steps: int, top: int = 12) -> dict:
    """Sums complete ('X') events per name over the device processes (``/device:...``), or over
    the host's compute events when the trace has no device process (CPU backend).

    Returns {"source": "device"|"host", "ms_per_step": total, "by_category": {cat: ms per step},
    "top": [[name, ms per step, share], ...]}.
    """
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    pnames = {e["pid"]: e.get("args", {}).get("name", "") for e in events
              if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for pid, name in pnames.items()
                   if re.search(r"/device:|GPU|TPU", name) and "/host:" not in name}
    totals: Dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") != "X":
            continue
        name = e.get("name", "")
        if device_pids:
            if e.get("pid") not in device_pids:
                continue
        elif _HOST_NOISE.search(name):
            continue
        totals[name] += float(e.get("dur", 0.0)) / 1e3  # us -> ms
    total = sum(totals.values()) or 1.0
    by_cat: Dict[str, float] = collections.Counter()
    for name, ms in totals.items():
        by_cat[category(name)] += ms / steps
    return {"source": "device" if device_pids else "host", "ms_per_step": total / steps,
            "by_category": dict(sorted(by_cat.items(), key=lambda kv: -kv[1])),
            "top": [[name, ms / steps, ms / total] for name, ms in
                    sorted(totals.items(), key=lambda kv: -kv[1])[:top]]}


def format_summary(title: str, summary: dict) -> str:
    cats = ", ".join(f"{c} {ms:.2f}" for c, ms in summary["by_category"].items())
    lines = [f"## profile {title}: {summary['ms_per_step']:.2f} ms/step of {summary['source']} events "
             f"(by category, ms/step: {cats})"]
    for name, ms, share in summary["top"]:
        lines.append(f"   {ms:9.3f} ms {100 * share:5.1f}%  {name[:110]}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trace", help="a perfetto_trace.json.gz written by jax.profiler.trace")
    p.add_argument("--steps", type=int, default=1, help="how many steps the trace holds")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    print(format_summary(args.trace, summarise_trace(args.trace, args.steps, args.top)))


if __name__ == "__main__":
    main()

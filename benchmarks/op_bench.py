r"""Per-op breakdown of the ResNet-18 steps: each op of the two encoders, JAX (jit) against torch (eager).

``step_bench.py`` times whole steps; this times their parts, so that a step's ratio to torch can be
explained op by op. For each encoder of a ``step_bench`` configuration (the audio one on
(N, H, W, 1) spectrograms, the video one on (N * T, H, W, 3) frames; ``--small`` by default), it
lists the ops one ResNet-18 forward runs, each distinct shape once with its count per forward:

  stem_conv     7x7 stride-2 convolution, C -> width (every ``--stem-impls`` variant, JAX side)
  stem_bn_relu  BatchNorm + ReLU after it
  max_pool      3x3 stride-2 max-pool (every ``--pool-impls`` variant, JAX side)
  conv3x3 / conv3x3_s2 / conv1x1_s2   the body's convolutions (stride-2 ones open stages 2-4;
                the 1x1 stride-2 one is the projection shortcut; every ``--conv-impls`` variant)
  bn_relu       the body's BatchNorm (+ ReLU; the residual add is not timed)
and, once, ``sinkhorn``: the FA loss (entropic OT on the (N, 8 * width) feature clouds) and its
gradient: OTT via ``ucmkd_jax.losses.feature_alignment`` against POT's ``sinkhorn2`` + autograd
(``torch_reference.feature_alignment``), as the steps use them.

Two timings per op, each the median of ``--reps`` runs, JAX and torch interleaved op by op (so both
see the same background load on a shared machine):

  fwd   forward alone, BatchNorm in eval mode (running averages): what the frozen teacher runs
        (torch under ``no_grad``);
  f+b   forward and backward, BatchNorm in train mode: what the trained student runs. The
        gradients taken are the step's: input and parameters for body ops, the kernel only for
        the stem (its input is data).

Then, per encoder, the sums (count x time) by category, for the teacher's forward (fwd) and the
student's forward and backward (f+b), next to torch's: the ops' share of a step. JAX's sums use
``--sum-impls`` (default: the plain ops and the "auto" ones, ``ucmkd_jax.models.ops.AUTO``).

    python benchmarks/op_bench.py --small --threads 1 --json benchmarks/results/op_bench.json
    python benchmarks/op_bench.py --dtype bfloat16 --no-torch --ops stem_conv,max_pool   # a GPU: variants

CPU timings: jax.block_until_ready after each call; torch on a CPU is synchronous. On a GPU, torch
calls ``torch.cuda.synchronize``; ``--dtype bfloat16`` computes JAX in bf16 (float32 parameters)
and torch under ``torch.autocast``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ucmkd_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.step_bench import FULL, SMALL, _configure_env, _dims, shape_parser  # noqa: E402

CATEGORIES = ("stem_conv", "stem_bn_relu", "max_pool", "body_conv", "body_bn_relu")
OPS = ("stem_conv", "stem_bn_relu", "max_pool", "conv3x3", "conv3x3_s2", "conv1x1_s2", "bn_relu", "sinkhorn")
CATEGORY = {"stem_conv": "stem_conv", "stem_bn_relu": "stem_bn_relu", "max_pool": "max_pool",
            "conv3x3": "body_conv", "conv3x3_s2": "body_conv", "conv1x1_s2": "body_conv", "bn_relu": "body_bn_relu"}


# ---------------------------------------------------------------------------------------- op list
def resnet18_ops(n: int, h: int, w: int, c: int, width: int) -> List[dict]:
    """The ops of one ResNet-18 forward (imagenet stem) on (n, h, w, c): dicts with op, shape (the
    op's NHWC input), cin, cout, count per forward."""
    ops = []

    def add(op, shape, cin, cout, count):
        ops.append({"op": op, "shape": tuple(shape), "cin": cin, "cout": cout, "count": count})

    add("stem_conv", (n, h, w, c), c, width, 1)
    h, w = -(-h // 2), -(-w // 2)
    add("stem_bn_relu", (n, h, w, width), width, width, 1)
    add("max_pool", (n, h, w, width), width, width, 1)
    h, w = -(-h // 2), -(-w // 2)
    add("conv3x3", (n, h, w, width), width, width, 4)
    add("bn_relu", (n, h, w, width), width, width, 4)
    cin = width
    for k in range(1, 4):
        cout = width * 2 ** k
        add("conv3x3_s2", (n, h, w, cin), cin, cout, 1)
        add("conv1x1_s2", (n, h, w, cin), cin, cout, 1)
        h, w = -(-h // 2), -(-w // 2)
        add("conv3x3", (n, h, w, cout), cout, cout, 3)
        add("bn_relu", (n, h, w, cout), cout, cout, 5)
        cin = cout
    return ops


def encoders(shapes: dict) -> Dict[str, tuple]:
    """name -> (n, h, w, c) of the frames each encoder sees."""
    (ah, aw), (t, vh, vw) = shapes["audio_hw"], shapes["video_thw"]
    return {"audio": (shapes["batch"], ah, aw, 1), "video": (shapes["batch"] * t, vh, vw, 3)}


# ---------------------------------------------------------------------------------------- JAX side
def _bind(fn, *args):
    """A thunk calling ``jit(fn)`` on ``args`` (arguments, not closed-over constants, which XLA
    would fold at compile time)."""
    import jax

    jitted = jax.jit(fn)
    return lambda: jitted(*args)


def _jax_fns(spec: dict, dtype, stem_impl: str, pool_impl: str, conv_impl: str = "conv", seed: int = 0):
    """(fwd, f+b) jitted thunks of one op (closed over device arrays)."""
    import jax
    import jax.numpy as jnp

    from ucmkd_jax.models import ops as fast_ops
    from ucmkd_jax.models.resnet import _norm

    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    op, shape, cin, cout = spec["op"], spec["shape"], spec["cin"], spec["cout"]
    x = jax.random.normal(k[0], shape, jnp.float32)
    if op in ("max_pool",):  # a pool sees a ReLU's output: many exact zeros, so ties
        x = jax.nn.relu(x)
    x = x.astype(dtype)

    def vjp_all(f, *args):
        y, pull = jax.vjp(f, *args)
        return y, pull(jax.tree.map(lambda a: jnp.ones_like(a) * 0.01, y))

    if op == "stem_conv":
        kernel = 0.05 * jax.random.normal(k[1], (7, 7, cin, cout), jnp.float32)
        f = lambda a, kern: fast_ops.stem_conv(a, kern, dtype, stem_impl)  # noqa: E731
        fb = lambda a, kern: vjp_all(lambda kk: f(a, kk), kern)  # noqa: E731  (the stem's input is data)
        return _bind(f, x, kernel), _bind(fb, x, kernel)
    if op == "max_pool":
        f = lambda a: fast_ops.max_pool(a, (3, 3), (2, 2), ((1, 1), (1, 1)), pool_impl)  # noqa: E731
        return _bind(f, x), _bind(lambda a: vjp_all(f, a), x)
    if op.startswith("conv"):
        ks, stride = (3 if op.startswith("conv3x3") else 1), (2 if op.endswith("_s2") else 1)
        kernel = 0.05 * jax.random.normal(k[1], (ks, ks, cin, cout), jnp.float32)

        def f(a, kern):
            return fast_ops.conv2d(a, kern.astype(dtype), (stride, stride), [(ks // 2, ks // 2)] * 2, conv_impl)
        return _bind(f, x, kernel), _bind(lambda a, kern: vjp_all(f, a, kern), x, kernel)
    if op in ("stem_bn_relu", "bn_relu"):
        train_bn, eval_bn = _norm(True, dtype), _norm(False, dtype)
        variables = train_bn.init(k[1], x)
        params, stats = variables["params"], variables["batch_stats"]

        def f_train(a, p, s):
            y, upd = train_bn.apply({"params": p, "batch_stats": s}, a, mutable=["batch_stats"])
            return jax.nn.relu(y), upd

        def fb(a, p, s):
            y, pull, upd = jax.vjp(lambda aa, pp: f_train(aa, pp, s), a, p, has_aux=True)
            return y, upd, pull(jnp.ones_like(y) * 0.01)

        def fwd(a, p, s):
            return jax.nn.relu(eval_bn.apply({"params": p, "batch_stats": s}, a))

        return _bind(fwd, x, params, stats), _bind(fb, x, params, stats)
    raise ValueError(f"unknown op {op!r}")


def _jax_sinkhorn(n: int, d: int, seed: int = 0):
    import jax
    import jax.numpy as jnp

    from ucmkd_jax.losses import FAConfig, feature_alignment

    k = jax.random.split(jax.random.PRNGKey(seed), 2)
    z_s, z_t = (jax.random.normal(kk, (n, d), jnp.float32) for kk in k)
    fa = lambda z, zt: feature_alignment(z, zt, FAConfig())  # noqa: E731
    return _bind(fa, z_s, z_t), _bind(jax.value_and_grad(fa), z_s, z_t)


# ---------------------------------------------------------------------------------------- torch side
def _torch_fns(spec: dict, device: str, bf16: bool, seed: int = 0):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    op, (n, h, w, c), cin, cout = spec["op"], spec["shape"], spec["cin"], spec["cout"]
    x = torch.randn(n, c, h, w, generator=g).to(device)
    if op == "max_pool":
        x = torch.relu(x)

    def autocast():
        return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16,
                              enabled=bf16)

    def run_fb(forward, leaves):
        for t in leaves:
            t.grad = None
        with autocast():
            y = forward()
        y.float().mul(0.01).sum().backward()
        return y

    if op == "stem_conv" or op.startswith("conv"):
        ks = 7 if op == "stem_conv" else (3 if op.startswith("conv3x3") else 1)
        stride = 2 if (op == "stem_conv" or op.endswith("_s2")) else 1
        weight = (0.05 * torch.randn(cout, cin, ks, ks, generator=g)).to(device).requires_grad_()
        xin = x if op == "stem_conv" else x.clone().requires_grad_()  # the stem's input is data

        def fwd():
            with torch.no_grad(), autocast():
                return F.conv2d(x, weight, stride=stride, padding=ks // 2)
        return fwd, lambda: run_fb(lambda: F.conv2d(xin, weight, stride=stride, padding=ks // 2), [weight, xin])
    if op == "max_pool":
        xin = x.clone().requires_grad_()

        def fwd():
            with torch.no_grad(), autocast():
                return F.max_pool2d(x, 3, 2, 1)
        return fwd, lambda: run_fb(lambda: F.max_pool2d(xin, 3, 2, 1), [xin])
    if op in ("stem_bn_relu", "bn_relu"):
        bn = torch.nn.BatchNorm2d(c).to(device)
        xin = x.clone().requires_grad_()

        def fwd():
            bn.eval()
            with torch.no_grad(), autocast():
                return F.relu(bn(x))

        def fb():
            bn.train()
            return run_fb(lambda: F.relu(bn(xin)), [xin, bn.weight, bn.bias])
        return fwd, fb
    raise ValueError(f"unknown op {op!r}")


def _torch_sinkhorn(n: int, d: int, device: str, seed: int = 0):
    import torch

    from benchmarks import torch_reference as tr

    g = torch.Generator().manual_seed(seed)
    z_s = torch.randn(n, d, generator=g).to(device).requires_grad_()
    z_t = torch.randn(n, d, generator=g).to(device)

    def fwd():
        with torch.no_grad():
            return tr.feature_alignment(z_s, z_t)

    def fb():
        z_s.grad = None
        loss = tr.feature_alignment(z_s, z_t)
        loss.backward()
        return loss
    return fwd, fb


# ---------------------------------------------------------------------------------------- timing
def _timer(fn: Callable, sync: Callable) -> Callable[[], float]:
    def run():
        t0 = time.perf_counter()
        sync(fn())
        return time.perf_counter() - t0
    return run


def time_interleaved(runs: Dict[str, Callable[[], float]], reps: int, warmup: int,
                     prime: bool = True) -> Dict[str, float]:
    """Median ms of each thunk, the thunks called in turn (a, b, c, a, b, c, ...). ``prime``: each
    timed call right after one untimed call of the same thunk. Without it, on a loaded machine,
    the first JAX call after the torch ones paid 5-10 ms for waking XLA:CPU's sleeping worker
    threads (a forward timed slower than its own forward + backward; 2026-12-01, load average
    about 7 on 2 cores), a cost a step, one executable, does not pay per op."""
    for _ in range(warmup):
        for r in runs.values():
            r()
    times: Dict[str, List[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for k, r in runs.items():
            if prime:
                r()
            times[k].append(r())
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def measure(shapes: dict, dtype: str, stem_impls: Sequence[str], pool_impls: Sequence[str],
            conv_impls: Sequence[str], reps: int, warmup: int, torch_device: Optional[str],
            ops: Sequence[str]) -> List[dict]:
    """One record per (encoder, op, shape, JAX impl): count, jax_fwd_ms, jax_fb_ms and, with torch,
    torch_fwd_ms, torch_fb_ms (torch's figures repeat on the records of each impl)."""
    import jax
    import jax.numpy as jnp

    cdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    jsync = jax.block_until_ready
    tsync = (lambda _: None)
    if torch_device == "cuda":
        import torch

        tsync = lambda _: torch.cuda.synchronize()  # noqa: E731
    records = []
    for enc, (n, h, w, c) in encoders(shapes).items():
        for spec in resnet18_ops(n, h, w, c, shapes["width"]):
            if spec["op"] not in ops:
                continue
            impls = {"stem_conv": [(s, None, None) for s in stem_impls],
                     "max_pool": [(None, p, None) for p in pool_impls]}.get(
                spec["op"], [(None, None, c) for c in conv_impls] if spec["op"].startswith("conv") else [(None,) * 3])
            runs, keys = {}, []
            if torch_device:
                tf, tfb = _torch_fns(spec, torch_device, dtype == "bfloat16")
                runs["torch_fwd"], runs["torch_fb"] = _timer(tf, tsync), _timer(tfb, tsync)
            for s_impl, p_impl, c_impl in impls:
                jf, jfb = _jax_fns(spec, cdtype, s_impl or "conv", p_impl or "reduce_window", c_impl or "conv")
                key = s_impl or p_impl or c_impl or "-"
                runs[f"jax_fwd:{key}"], runs[f"jax_fb:{key}"] = _timer(jf, jsync), _timer(jfb, jsync)
                keys.append(key)
            ms = time_interleaved(runs, reps, warmup)
            for key in keys:
                rec = {"encoder": enc, "op": spec["op"], "category": CATEGORY[spec["op"]], "shape": list(spec["shape"]),
                       "cin": spec["cin"], "cout": spec["cout"], "count": spec["count"], "impl": key,
                       "jax_fwd_ms": ms[f"jax_fwd:{key}"], "jax_fb_ms": ms[f"jax_fb:{key}"]}
                if torch_device:
                    rec.update(torch_fwd_ms=ms["torch_fwd"], torch_fb_ms=ms["torch_fb"])
                records.append(rec)
                _print_progress(rec)
    if "sinkhorn" in ops:
        n, d = shapes["batch"], 8 * shapes["width"]
        jf, jfb = _jax_sinkhorn(n, d)
        runs = {"jax_fwd": _timer(jf, jsync), "jax_fb": _timer(jfb, jsync)}
        if torch_device:
            tf, tfb = _torch_sinkhorn(n, d, torch_device)
            runs.update(torch_fwd=_timer(tf, tsync), torch_fb=_timer(tfb, tsync))
        ms = time_interleaved(runs, reps, warmup)
        rec = {"encoder": "-", "op": "sinkhorn", "category": "sinkhorn", "shape": [n, d], "cin": d, "cout": d,
               "count": 1, "impl": "-", **{f"{k}_ms": v for k, v in ms.items()}}
        records.append(rec)
        _print_progress(rec)
    return records


def _print_progress(r: dict) -> None:
    t = (f"  torch {r['torch_fwd_ms']:8.2f} / {r['torch_fb_ms']:8.2f}" if "torch_fb_ms" in r else "")
    print(f"  {r['encoder']:<6}{r['op']:<13}{'x'.join(map(str, r['shape'])):<17}{r['impl']:<20}"
          f"jax {r['jax_fwd_ms']:8.2f} / {r['jax_fb_ms']:8.2f}{t}", flush=True)


# ---------------------------------------------------------------------------------------- tables
def _r(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def format_table(records: List[dict]) -> str:
    """Markdown: one row per op record; ratio = torch ms / JAX ms (> 1: JAX faster)."""
    lines = ["| encoder | op | input (NHWC) | count | impl | JAX fwd | torch fwd | torch/JAX fwd | JAX f+b | "
             "torch f+b | torch/JAX f+b | count x (JAX - torch) f+b |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        tf, tfb = r.get("torch_fwd_ms"), r.get("torch_fb_ms")
        excess = f"{r['count'] * (r['jax_fb_ms'] - tfb):+.1f}" if tfb is not None else "-"
        lines.append(f"| {r['encoder']} | {r['op']} | {'x'.join(map(str, r['shape']))} | {r['count']} | {r['impl']} | "
                     f"{r['jax_fwd_ms']:.2f} | {_f(tf)} | {_r(tf, r['jax_fwd_ms'])} | {r['jax_fb_ms']:.2f} | "
                     f"{_f(tfb)} | {_r(tfb, r['jax_fb_ms'])} | {excess} |")
    return "\n".join(lines)


def _f(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def summarise(records: List[dict], stem_impl: str, pool_impl: str, conv_impl: str) -> Dict[str, dict]:
    """Per encoder: {category: (jax fwd, torch fwd, jax f+b, torch f+b) summed count x ms} with the
    given stem, pool and body convolution impls on the JAX side."""
    out: Dict[str, dict] = {}
    for r in records:
        if r["op"] == "sinkhorn":
            continue
        want = {"stem_conv": stem_impl, "max_pool": pool_impl}.get(r["op"], conv_impl if r["op"].startswith("conv")
                                                                     else r["impl"])
        if r["impl"] != want:
            continue
        cats = out.setdefault(r["encoder"], {})
        row = cats.setdefault(r["category"], [0.0, 0.0, 0.0, 0.0])
        vals = (r["jax_fwd_ms"], r.get("torch_fwd_ms") or 0.0, r["jax_fb_ms"], r.get("torch_fb_ms") or 0.0)
        for i, v in enumerate(vals):
            row[i] += r["count"] * v
    return out


def format_summary(records: List[dict], stem_impl: str, pool_impl: str, conv_impl: str) -> str:
    summ = summarise(records, stem_impl, pool_impl, conv_impl)
    lines = [f"JAX with stem_impl={stem_impl}, pool_impl={pool_impl}, conv_impl={conv_impl}: sums of count x median "
             f"ms per forward "
             f"(fwd: eval BatchNorm, the teacher's; f+b: train, the student's)",
             "| encoder | category | JAX fwd | torch fwd | torch/JAX | JAX f+b | torch f+b | torch/JAX | JAX - torch f+b |",
             "|---|---|---|---|---|---|---|---|---|"]
    for enc, cats in summ.items():
        tot = [0.0] * 4
        for cat in CATEGORIES:
            if cat not in cats:
                continue
            jf, tf, jfb, tfb = cats[cat]
            tot = [a + b for a, b in zip(tot, cats[cat])]
            lines.append(f"| {enc} | {cat} | {jf:.1f} | {tf:.1f} | {_r(tf, jf)} | {jfb:.1f} | {tfb:.1f} | "
                         f"{_r(tfb, jfb)} | {jfb - tfb:+.1f} |")
        jf, tf, jfb, tfb = tot
        lines.append(f"| {enc} | **all timed ops** | {jf:.1f} | {tf:.1f} | {_r(tf, jf)} | {jfb:.1f} | {tfb:.1f} | "
                     f"{_r(tfb, jfb)} | {jfb - tfb:+.1f} |")
    for r in records:
        if r["op"] == "sinkhorn":
            lines.append(f"| - | sinkhorn (value + gradient: f+b) | {r['jax_fwd_ms']:.1f} | {_f(r.get('torch_fwd_ms'))} | "
                         f"{_r(r.get('torch_fwd_ms'), r['jax_fwd_ms'])} | {r['jax_fb_ms']:.1f} | "
                         f"{_f(r.get('torch_fb_ms'))} | {_r(r.get('torch_fb_ms'), r['jax_fb_ms'])} | - |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = shape_parser(__doc__)
    p.add_argument("--video-thw", type=lambda s: _dims(s, 3))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {OPS}")
    p.add_argument("--stem-impls", default="conv,space_to_depth,space_to_depth_fwd",
                   help="JAX stem convolutions to time (ucmkd_jax.models.ops.STEM_IMPLS)")
    p.add_argument("--pool-impls", default="reduce_window,masked", help="JAX max-pools to time")
    p.add_argument("--conv-impls", default="conv,patches_when_small", help="JAX body convolutions to time")
    p.add_argument("--sum-impls", default="conv:reduce_window:conv,auto:auto:auto",
                   help="STEM:POOL:CONV triples the per-encoder sums are printed for ('auto' = ops.AUTO's choice "
                        "here)")
    p.add_argument("--reps", type=int, default=20, help="timed runs per op and side (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="CPU: compute threads for XLA:CPU and torch")
    p.add_argument("--no-torch", action="store_true", help="JAX only (e.g. the impl variants on a GPU)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shapes = dict(SMALL if args.small else FULL)
    for key in ("batch", "width", "audio_hw", "video_thw"):
        if getattr(args, key) is not None:
            shapes[key] = getattr(args, key)
    args.shapes = shapes
    args.op_list = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in args.op_list if o not in OPS]
    if bad:
        p.error(f"unknown op(s) {bad}; choose from {OPS}")
    args.stem_list = [s.strip() for s in args.stem_impls.split(",") if s.strip()]
    args.pool_list = [s.strip() for s in args.pool_impls.split(",") if s.strip()]
    args.conv_list = [s.strip() for s in args.conv_impls.split(",") if s.strip()]
    args.sum_triples = [tuple(t.split(":")) for t in args.sum_impls.split(",") if t.strip()]
    if any(len(t) != 3 for t in args.sum_triples):
        p.error("--sum-impls takes STEM:POOL:CONV triples")
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    note = _configure_env(not args.no_torch, args.threads)
    if note:
        warnings.warn(f"--threads {args.threads}: {note}")
    import jax

    from ucmkd_jax.models.ops import resolve_impl

    platform = jax.devices()[0].platform
    stem_list = [resolve_impl("stem", s, platform) for s in args.stem_list]
    pool_list = [resolve_impl("pool", s, platform) for s in args.pool_list]
    conv_list = [resolve_impl("conv", s, platform) for s in args.conv_list]
    triples = [(resolve_impl("stem", s, platform), resolve_impl("pool", p, platform), resolve_impl("conv", c, platform))
               for s, p, c in args.sum_triples]
    for s, p, c in triples:  # the sums need their impls timed
        stem_list += [] if s in stem_list else [s]
        pool_list += [] if p in pool_list else [p]
        conv_list += [] if c in conv_list else [c]
    torch_device = None
    if not args.no_torch:
        import torch

        torch_device = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
        if args.threads:
            torch.set_num_threads(args.threads)
    print(f"# op_bench on {platform}:{jax.devices()[0].device_kind} (jax {jax.__version__}), shapes {args.shapes}, "
          f"{args.dtype}, median of {args.reps}" + (f", {args.threads} thread(s)" if args.threads else "")
          + (f"; torch on {torch_device}, interleaved" if torch_device else "")
          + f"; started {datetime.datetime.now().isoformat(timespec='seconds')}", flush=True)
    print("  encoder op          input            impl                jax fwd / f+b ms      torch fwd / f+b ms")
    records = measure(args.shapes, args.dtype, stem_list, pool_list, conv_list, args.reps, args.warmup, torch_device,
                      args.op_list)
    base = {"device": f"{platform}:{jax.devices()[0].device_kind}", "dtype": args.dtype, "threads": args.threads,
            "reps": args.reps, "width": args.shapes["width"], "jax_version": jax.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    records = [{**base, **r} for r in records]
    print()
    print(format_table(records))
    for s, p, c in triples:
        print()
        print(format_summary(records, s, p, c))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1))
        print(f"# wrote {len(records)} records to {args.json}")
    return records


if __name__ == "__main__":
    main()

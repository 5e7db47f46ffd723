r"""Time the compiled train step of each method, optionally against the authors' eager PyTorch step.

For each method and direction (``a2v``: audio teacher -> video student; ``v2a``: video teacher
-> audio student) this builds ResNet-18 teacher and student, synthetic device arrays, the jitted
step of ``ucmkd_jax.methods.make_train_step`` (state donated), compiles it ahead of time and
reports: compile time, ms/step over ``--steps`` timed steps after ``--warmup`` (each step
synchronised with ``jax.block_until_ready``; median, p10, p90), samples/s, FLOPs per step from
XLA's cost analysis and the achieved FLOP/s (and its fraction of a measured matmul peak), the
executable's memory footprint from XLA's memory analysis and the device's peak memory where the
backend reports it (``device.memory_stats()``; ``None`` on CPU).

Cases (``--methods``, comma separated): ``teacher_fwd`` (the frozen teacher's forward alone, the
floor term of the issue's targets), ``ce``, ``feature_kd``, ``sumall``, ``ucmkd`` (first-order
hypergradient, the authors' step), ``ucmkd_unrolled`` (the exact hypergradient), ``vanilla_kd``, the
ablations ``ucmkd_{fa,la}_only[_unrolled]`` (one inner stage: they attribute the unrolled step's
cost to the FA/Sinkhorn or the LA stage; JAX only), and the published baselines of Table 2 / 11
``dkd``, ``rkd``, ``rld``, ``fitnet``, ``reviewkd``, ``norm``, ``c2kd`` (their default options; JAX
only; methods with modules of their own get them and their optimiser as in training); ``all`` =
every one of them. The default is
``teacher_fwd,ce,feature_kd,sumall,ucmkd,ucmkd_unrolled``, run in the order given (case, then dtype,
then direction), so that a run cut short by ``--deadline`` has the first cases in both directions.

``--vs-torch`` also times ``benchmarks/torch_reference.py`` (the same work written as the authors'
PyTorch code does it) in the same process, on the same device kind, and adds
``torch_ms_per_step_median`` and ``speedup`` (torch ms / jax ms) to each record. The authors have no
unrolled step: ``ucmkd_unrolled`` is compared against the torch FIRST-order step (marked ``*``).
On a CPU backend the torch and JAX steps of a case are interleaved (``--interleave auto``), so that
on a shared machine both see the same background load; on an accelerator torch runs first, frees
its memory, then JAX runs (JAX preallocation is switched off so that the two can share the device).

Examples:

    python benchmarks/step_bench.py --small --steps 10 --vs-torch --threads 1 --json /tmp/bench.json
    python benchmarks/step_bench.py --compile-only --dtype float32,bfloat16   # FLOPs, memory at full shapes
    python benchmarks/step_bench.py --methods ucmkd,ucmkd_unrolled --profile gpu_out/prof   # where time goes
    python benchmarks/step_bench.py --small --methods feature_kd,baselines --directions a2v    # the baselines
    python benchmarks/step_bench.py --dtype float32,bfloat16 --steps 10 --vs-torch --json gpu_out/bench.json

Record fields (``--json`` writes a list, rewritten after every case so a killed run keeps what it
measured): case, method, direction, hypergrad (null for single-level methods), dtype, batch,
device, backend, shapes, width, steps, warmup, compile_s, ms_per_step_{median,p10,p90,mean},
samples_per_s, flops_per_step (XLA cost analysis of the lowered HLO, before backend optimisation),
flops_per_step_compiled (of the optimised module: on GPU it misses the cuDNN convolutions),
flops_per_s, matmul_peak_flops_per_s, frac_of_matmul_peak, compiled_mem_bytes (the executable's
arguments + outputs + temporaries - donated, per case), peak_mem_bytes (device peak so far in the
process: JAX cannot reset it, so it is a running maximum), loss, threads, error, skipped; with
``--vs-torch`` also torch_method, torch_hypergrad, torch_dtype, torch_device, interleaved,
torch_ms_per_step_{median,p10,p90,mean}, torch_samples_per_s, torch_peak_mem_bytes (per case),
torch_loss, speedup.

Only synthetic arrays are used: nothing here imports tensorflow, librosa or av.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ucmkd_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import vit_cases  # noqa: E402  (--arch vit_b_to_s / vit_l_to_s: the ViT models and shapes)

# case name -> (registered method or None for the teacher forward, hypergrad)
CASES: Dict[str, tuple] = {
    "teacher_fwd": (None, None),
    "ce": ("ce", None),
    "feature_kd": ("feature_kd", None),
    "sumall": ("sumall", None),
    "ucmkd": ("ucmkd", "first_order"),
    "ucmkd_unrolled": ("ucmkd", "unrolled"),
    # The same exact hypergradient by reverse-over-reverse jax.grad (before: forward-over-reverse HVPs).
    "ucmkd_unrolled_rr": ("ucmkd", "unrolled"),
    "vanilla_kd": ("vanilla_kd", None),
    # Table 6 ablations, also useful to attribute the unrolled step's cost (FA vs LA inner stage).
    "ucmkd_fa_only": ("ucmkd_fa_only", "first_order"),
    "ucmkd_fa_only_unrolled": ("ucmkd_fa_only", "unrolled"),
    "ucmkd_fa_only_unrolled_rr": ("ucmkd_fa_only", "unrolled"),
    "ucmkd_la_only": ("ucmkd_la_only", "first_order"),
    "ucmkd_la_only_unrolled": ("ucmkd_la_only", "unrolled"),
    # The FA solve alone on (batch, latent) feature clouds, as the steps use it: value and gradient
    # with the default (implicit) differentiation, and the reverse-over-reverse second-order pass
    # (a Hessian-vector product) of the fixed-length unrolled solve that the exact hypergradient needs.
    "fa_solve": (None, "first_order"),
    "fa_solve_unrolled": (None, "unrolled"),
    # The published baselines (Table 2, Table 11), JAX only.
    "dkd": ("dkd", None),
    "rkd": ("rkd", None),
    "rld": ("rld", None),
    "fitnet": ("fitnet", None),
    "reviewkd": ("reviewkd", None),
    "norm": ("norm", None),
    "c2kd": ("c2kd", None),
}
# MethodConfig fields a case sets beyond its hypergrad.
CASE_CONFIG: Dict[str, dict] = {"ucmkd_unrolled_rr": {"hvp": "reverse_over_reverse"},
                                "ucmkd_fa_only_unrolled_rr": {"hvp": "reverse_over_reverse"}}
BASELINE_CASES = ("dkd", "rkd", "rld", "fitnet", "reviewkd", "norm", "c2kd")
DEFAULT_CASES = ("teacher_fwd", "ce", "feature_kd", "sumall", "ucmkd", "ucmkd_unrolled")
# torch_reference method for each case (the authors have no unrolled step and no ablations: cases
# missing here are timed in JAX only).
TORCH_METHOD = {"teacher_fwd": "teacher_fwd", "ce": "ce", "feature_kd": "feature_kd", "sumall": "sumall",
                "ucmkd": "ucmkd", "ucmkd_unrolled": "ucmkd", "ucmkd_unrolled_rr": "ucmkd",
                "vanilla_kd": "vanilla_kd"}

FULL = {"batch": 64, "audio_hw": (257, 1004), "video_thw": (2, 224, 224), "width": 64}  # CREMA-D
SMALL = {"batch": 16, "audio_hw": (64, 128), "video_thw": (2, 48, 48), "width": 16}  # a 2-core CPU
NUM_CLASSES = 6  # CREMA-D emotions
RESNET_ARCHS = ("resnet18", "resnet10")  # --arch values that put a ResNet on both sides

REQUIRED_KEYS = ("method", "direction", "hypergrad", "dtype", "batch", "device", "compile_s",
                 "ms_per_step_median", "samples_per_s")


# ---------------------------------------------------------------------------- helpers
def _dims(text: str, n: int) -> tuple:
    parts = tuple(int(p) for p in text.lower().replace(",", "x").split("x") if p)
    if len(parts) != n:
        raise argparse.ArgumentTypeError(f"expected {n} sizes like {'x'.join(['8'] * n)}, got {text!r}")
    return parts


def shape_parser(doc: str, audio_help: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser with the shape flags the per-op and epoch benchmarks share with this one:
    --small, --batch, --width, --audio-hw."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help=f"step_bench's small shapes (a 2-core CPU): {SMALL}")
    p.add_argument("--batch", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--audio-hw", type=lambda s: _dims(s, 2), help=audio_help)
    return p


def _percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _summary(times_s: Sequence[float], prefix: str = "") -> dict:
    ms = [1e3 * t for t in times_s]
    return {f"{prefix}ms_per_step_median": statistics.median(ms),
            f"{prefix}ms_per_step_p10": _percentile(ms, 10),
            f"{prefix}ms_per_step_p90": _percentile(ms, 90),
            f"{prefix}ms_per_step_mean": statistics.fmean(ms)}


def flops_of(cost: Any) -> Optional[float]:
    """'flops' from ``Compiled.cost_analysis()``: a dict (recent jax) or a list of dicts (older)."""
    if cost is None:
        return None
    entries = cost if isinstance(cost, (list, tuple)) else [cost]
    total = [float(e["flops"]) for e in entries if isinstance(e, dict) and e.get("flops") is not None]
    return sum(total) if total else None


def cpu_lowered_flops(jitted, args) -> Optional[float]:
    """FLOPs of ``jitted(*args)`` from the HLO lowered for the CPU platform (no compilation): the
    count before backend optimisation is the same for every platform, and this works where the
    device's own lowering has no cost analysis."""
    try:
        return flops_of(jitted.trace(*args).lower(lowering_platforms=("cpu",)).cost_analysis())
    except Exception:  # noqa: BLE001  (a figure of the report, never a reason to fail a case)
        return None


def compiled_memory_bytes(compiled) -> Optional[int]:
    """Arguments + outputs + temporaries - aliased (donated) bytes of one executable."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not implemented on every backend)
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def device_peak_bytes(device) -> Optional[int]:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0))) or None


def measure_matmul_peak(platform: str, reps: int = 10) -> dict:
    """FLOP/s of a large square matmul: bfloat16 8192^3 on an accelerator, float32 1024^3 on CPU."""
    import jax
    import jax.numpy as jnp

    n, dtype = (8192, jnp.bfloat16) if platform != "cpu" else (1024, jnp.float32)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - t0)
    return {"matmul_peak_flops_per_s": 2.0 * n**3 / min(times), "matmul_peak_dtype": jnp.dtype(dtype).name,
            "matmul_peak_n": n}


# ---------------------------------------------------------------------------- one JAX case
_MODEL_CACHE: Dict[tuple, tuple] = {}


def _models_and_batch(direction: str, shapes: dict, dtype: str, stem: str, seed: int, abstract: bool = False):
    """(student, teacher, student variables, teacher variables, batch), cached per configuration:
    the cases of one direction and dtype share them (the train state copies the student's
    variables, so donation never deletes the cached arrays)."""
    key = (direction, tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in shapes.items())),
           dtype, stem, seed, abstract)
    if key not in _MODEL_CACHE:
        while len(_MODEL_CACHE) >= 4:  # directions x dtypes of one run
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = _build_models_and_batch(direction, shapes, dtype, stem, seed, abstract)
    return _MODEL_CACHE[key]


def _build_models_and_batch(direction: str, shapes: dict, dtype: str, stem: str, seed: int, abstract: bool):
    import jax
    import jax.numpy as jnp

    from ucmkd_jax.models import build_model

    cdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    (h, w), (t, vh, vw) = shapes["audio_hw"], shapes["video_thw"]
    per_sample = {"audio": (h, w, 1), "video": (t, vh, vw, 3)}
    s_mod, t_mod = ("video", "audio") if direction == "a2v" else ("audio", "video")
    vit = (lambda role, mod: vit_cases.jax_model_kwargs(shapes, role, mod) if "arch" in shapes else {})  # noqa: E731
    # ResNets: how the imagenet stem's convolution and max-pool are computed (--stem-impl, --pool-impl).
    resnet = {} if "arch" in shapes else {"backbone": shapes.get("backbone", "resnet18")}
    if "arch" not in shapes and "stem_impl" in shapes:
        resnet["options"] = {k: shapes[k] for k in ("stem_impl", "pool_impl", "conv_impl")}
    teacher = build_model(t_mod, per_sample[t_mod], NUM_CLASSES, width=shapes["width"], stem=stem, dtype=cdtype,
                          name="teacher", **vit("teacher", t_mod), **resnet)
    student = build_model(s_mod, per_sample[s_mod], NUM_CLASSES, width=shapes["width"], stem=stem, dtype=cdtype,
                          name="student", **vit("student", s_mod), **resnet)
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    n = shapes["batch"]
    batch = {"x_s": jax.random.normal(k[0], (n,) + per_sample[s_mod], jnp.float32),
             "y_s": jax.random.randint(k[1], (n,), 0, NUM_CLASSES, jnp.int32),
             "x_t": jax.random.normal(k[2], (n,) + per_sample[t_mod], jnp.float32)}
    if abstract:  # shapes only: compile without allocating the inputs
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), jax.eval_shape(lambda: batch))
    return student, teacher, student.init(k[3]), teacher.init(k[4]), batch


def _fa_solve_fn(hypergrad: str, n: int, d: int, seed: int):
    """(jitted fn, args): FA value and gradient w.r.t. the student cloud (first_order), or the
    gradient of <grad FA, v> (unrolled: second order through the fixed-length Sinkhorn)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from ucmkd_jax.losses import FAConfig, feature_alignment

    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    z_s, z_t, v = (jax.random.normal(kk, (n, d), jnp.float32) for kk in k)
    if hypergrad == "first_order":
        fa = lambda z: feature_alignment(z, z_t, FAConfig())  # noqa: E731
        return jax.jit(jax.value_and_grad(fa)), (z_s,)
    cfg = dataclasses.replace(FAConfig(), differentiation="unroll")
    fa = lambda z: feature_alignment(z, z_t, cfg)  # noqa: E731
    hvp = jax.value_and_grad(lambda z, w: jnp.vdot(jax.grad(fa)(z), w))
    return jax.jit(hvp), (z_s, v)


class JaxCase:
    """One compiled case: models, synthetic device arrays and the AOT-compiled step.

    ``step()`` runs one step (no sync), ``sync()`` blocks until it is done. ``compile_only``
    compiles from abstract inputs (nothing allocated for the batch) and cannot be stepped.
    """

    def __init__(self, case: str, direction: str, shapes: dict, dtype: str, stem: str = "imagenet",
                 seed: int = 0, compile_only: bool = False):
        import jax

        from ucmkd_jax.methods import MethodConfig, teacher_features
        from ucmkd_jax.optim import OptimConfig
        from ucmkd_jax.train import build_step

        method, hypergrad = CASES[case]
        shapes = vit_cases.for_case(shapes, hypergrad)
        student, teacher, sv, tv, batch = _models_and_batch(direction, shapes, dtype, stem, seed, compile_only)
        jax.block_until_ready((sv, tv, batch))
        if case.startswith("fa_solve"):
            fn, args = _fa_solve_fn(hypergrad, shapes["batch"], student.latent_dim, seed)
            self.carry = None
            jitted, jit_args = fn, args
            t0 = time.perf_counter()
            lowered = fn.lower(*args)
            compiled = lowered.compile()
            self._run = lambda carry: (carry, {"loss": compiled(*args)[0]})
        elif method is None:  # the frozen teacher's forward alone
            fn = jax.jit(lambda variables, x: teacher_features(teacher, variables, x))
            args, self.carry = (tv, batch["x_t"]), None
            jitted, jit_args = fn, args
            t0 = time.perf_counter()
            lowered = fn.lower(*args)
            compiled = lowered.compile()
            self._run = lambda carry: (carry, {"loss": compiled(*args).sum()})
        else:
            cfg = MethodConfig(hypergrad=hypergrad or "first_order", **CASE_CONFIG.get(case, {}))
            train_step = build_step(method, student, teacher, method_config=cfg, optim=OptimConfig(),
                                    steps_per_epoch=100, epochs=100)  # the step train.fit runs
            step = train_step.step
            self.carry = train_step.init_state(sv, tv, seed)
            jitted, jit_args = step, (self.carry, tv, batch)
            t0 = time.perf_counter()
            lowered = step.lower(self.carry, tv, batch)
            compiled = lowered.compile()
            self._run = lambda state: compiled(state, tv, batch)
        self.compile_s = time.perf_counter() - t0
        # FLOPs of the HLO before backend optimisation: on GPU the compiled module's convolutions are
        # cuDNN custom calls, which XLA's cost analysis does not count (an H200 run showed 4 GFLOP for a
        # 1161 GFLOP forward).
        self.flops = flops_of(lowered.cost_analysis())
        if self.flops is None:  # jax 0.11 on a GPU (H100 run, 2026-11-26) gives no lowered cost analysis
            self.flops = cpu_lowered_flops(jitted, jit_args)
        try:
            self.flops_compiled = flops_of(compiled.cost_analysis())
        except Exception:  # noqa: BLE001
            self.flops_compiled = None
        self.compiled_mem_bytes = compiled_memory_bytes(compiled)
        self.metrics = None

    def step(self):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            self.carry, self.metrics = self._run(self.carry)

    def sync(self):
        import jax

        jax.block_until_ready((self.carry, self.metrics))

    def close(self):
        self.carry = self.metrics = self._run = None
        gc.collect()


def _time(cases, steps: int, warmup: int) -> List[List[float]]:
    """Warm up, then time ``steps`` synchronised steps of each case. With several cases the
    steps are interleaved (a, b, a, b, ...), so that both see the same background load."""
    for _ in range(warmup):
        for c in cases:
            c.step()
            c.sync()
    times = [[] for _ in cases]
    for _ in range(steps):
        for c, ts in zip(cases, times):
            t0 = time.perf_counter()
            c.step()
            c.sync()
            ts.append(time.perf_counter() - t0)
    return times


def _jax_fields(jc: JaxCase, times: Optional[List[float]], batch: int) -> dict:
    import jax

    out = {"compile_s": jc.compile_s, "flops_per_step": jc.flops, "flops_per_step_compiled": jc.flops_compiled,
           "compiled_mem_bytes": jc.compiled_mem_bytes}
    if times is None:
        return out
    out.update(_summary(times), peak_mem_bytes=device_peak_bytes(jax.devices()[0]), loss=float(jc.metrics["loss"]))
    out["samples_per_s"] = batch / (out["ms_per_step_median"] / 1e3)
    out["flops_per_s"] = jc.flops / (out["ms_per_step_median"] / 1e3) if jc.flops else None
    return out


def _torch_case(case: str, direction: str, shapes: dict, dtype: str, device: str, stem: str, seed: int):
    from benchmarks import torch_reference as tr
    from ucmkd_jax.models.resnet import STAGES  # the torch model's basic blocks per stage, as the JAX one's

    return tr.TorchCase(TORCH_METHOD[case], direction, batch=shapes["batch"], audio_hw=shapes["audio_hw"],
                        video_thw=shapes["video_thw"], width=shapes["width"], num_classes=NUM_CLASSES, stem=stem,
                        dtype=dtype, device=device, seed=seed,
                        vit=vit_cases.torch_vit_kwargs(shapes) if "arch" in shapes else None,
                        stages=STAGES[shapes.get("backbone", "resnet18")][0])


def _torch_fields(case: str, tc, times: List[float], batch: int, dtype: str, interleaved: bool) -> dict:
    method = TORCH_METHOD[case]
    peak = None
    if tc.device == "cuda":
        import torch

        peak = int(torch.cuda.max_memory_allocated())
    out = {"torch_method": method, "torch_hypergrad": "first_order" if method == "ucmkd" else None,
           "torch_dtype": dtype, "torch_device": tc.device, "interleaved": interleaved,
           **_summary(times, "torch_"), "torch_peak_mem_bytes": peak, "torch_loss": float(tc.loss)}
    out["torch_samples_per_s"] = batch / (out["torch_ms_per_step_median"] / 1e3)
    return out


def _profile(jc: JaxCase, profile: Optional[tuple], name: str) -> dict:
    """With ``profile = (dir, steps)``: trace that many more steps and summarise the trace."""
    if not profile:
        return {}
    from benchmarks import profile_summary

    import shutil

    out_dir, steps, keep = profile
    case_dir = os.path.join(str(out_dir), name)
    path = profile_summary.trace_steps(jc.step, jc.sync, steps, case_dir)
    if path is None:
        return {"profile": None}
    out = {"profile": profile_summary.summarise_trace(path, steps)}
    if keep:
        out["profile_trace"] = path
    else:  # traces of full-size steps run to tens of MB
        shutil.rmtree(case_dir, ignore_errors=True)
    return out


def run_jax_case(case: str, direction: str, shapes: dict, dtype: str, steps: int, warmup: int,
                 stem: str = "imagenet", seed: int = 0, compile_only: bool = False,
                 profile: Optional[tuple] = None) -> dict:
    """Compile and time one JAX case alone. Returns the JAX part of a record."""
    jc = JaxCase(case, direction, shapes, dtype, stem, seed, compile_only)
    try:
        if compile_only:
            return _jax_fields(jc, None, shapes["batch"])
        out = _jax_fields(jc, _time([jc], steps, warmup)[0], shapes["batch"])
        return {**out, **_profile(jc, profile, f"{case}_{direction}_{dtype}")}
    finally:
        jc.close()


def run_torch_case(case: str, direction: str, shapes: dict, dtype: str, steps: int, warmup: int,
                   device: str, stem: str = "imagenet", seed: int = 0) -> dict:
    """Time the torch reference of one case alone. Returns the torch part of a record."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    tc = _torch_case(case, direction, shapes, dtype, device, stem, seed)
    try:
        times = _time([tc], steps, warmup)[0]
        return _torch_fields(case, tc, times, shapes["batch"], dtype, interleaved=False)
    finally:
        tc.close()


def run_pair(case: str, direction: str, shapes: dict, dtype: str, torch_dtype: str, steps: int, warmup: int,
             device: str, stem: str = "imagenet", seed: int = 0, profile: Optional[tuple] = None) -> dict:
    """JAX and torch of one case, both built, timed interleaved (for a shared, noisy CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    jc = JaxCase(case, direction, shapes, dtype, stem, seed)
    tc = _torch_case(case, direction, shapes, torch_dtype, device, stem, seed)
    try:
        t_times, j_times = _time([tc, jc], steps, warmup)
        return {**_torch_fields(case, tc, t_times, shapes["batch"], torch_dtype, interleaved=True),
                **_jax_fields(jc, j_times, shapes["batch"]), **_profile(jc, profile, f"{case}_{direction}_{dtype}")}
    finally:
        tc.close()
        jc.close()


# ---------------------------------------------------------------------------- table
def _fmt(x, spec: str, none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _display_order(records: List[dict]) -> List[dict]:
    cases = list(CASES)
    key = lambda r: (r["dtype"] != "float32", r["direction"], cases.index(r["case"]) if r["case"] in cases else 99)  # noqa: E731
    return sorted(records, key=key)


def format_table(records: List[dict]) -> str:
    """A fixed-width table of the records (sorted by dtype, direction, case)."""
    records = _display_order(records)
    vs_torch = any("torch_ms_per_step_median" in r for r in records)
    w = max([15] + [len(r["case"]) + 1 for r in records])
    head = (f"{'case':<{w}}{'dir':<5}{'dtype':<9}{'compile s':>10}{'ms/step':>10}{'p10-p90':>17}{'samples/s':>11}"
            f"{'GFLOP/st':>10}{'TFLOP/s':>9}{'%peak':>7}{'XLA GiB':>9}")
    if vs_torch:
        head += f"{'torch ms':>11}{'speedup':>9}{'torch GiB':>10}"
    lines = [head, "-" * len(head)]
    star = False
    for r in records:
        line = f"{r['case']:<{w}}{r['direction']:<5}{r['dtype']:<9}"
        if r.get("error") or r.get("skipped"):
            lines.append(line + ("  ERROR: " + r["error"].splitlines()[0][:100] if r.get("error")
                                 else "  skipped: " + r["skipped"]))
            continue
        spread = f"{_fmt(r.get('ms_per_step_p10'), '.1f')}-{_fmt(r.get('ms_per_step_p90'), '.1f')}"
        mem = r.get("compiled_mem_bytes")
        line += (f"{_fmt(r['compile_s'], '.1f'):>10}{_fmt(r['ms_per_step_median'], '.1f'):>10}{spread:>17}"
                 f"{_fmt(r['samples_per_s'], '.1f'):>11}"
                 f"{_fmt(r['flops_per_step'] and r['flops_per_step'] / 1e9, '.2f'):>10}"
                 f"{_fmt(r.get('flops_per_s') and r['flops_per_s'] / 1e12, '.3f'):>9}"
                 f"{_fmt(r.get('frac_of_matmul_peak') and 100 * r['frac_of_matmul_peak'], '.1f'):>7}"
                 f"{_fmt(mem and mem / 2**30, '.2f'):>9}")
        if vs_torch:
            mark = "*" if r.get("hypergrad") == "unrolled" and r.get("torch_hypergrad") == "first_order" else ""
            star = star or bool(mark)
            t_mem = r.get("torch_peak_mem_bytes")
            line += (f"{_fmt(r.get('torch_ms_per_step_median'), '.1f') + mark:>11}"
                     f"{(_fmt(r['speedup'], '.2f') + 'x') if r.get('speedup') else '-':>9}"
                     f"{_fmt(t_mem and t_mem / 2**30, '.2f'):>10}")
        lines.append(line)
    if star:
        lines.append("* torch has no unrolled step: ucmkd_unrolled is compared against the authors' FIRST-order "
                     "step (torch ucmkd).")
    lines.append("GFLOP/st: XLA cost analysis of the step's HLO before optimisation (while-loop bodies, e.g. "
                 "Sinkhorn, counted once); %peak: of the measured matmul peak; XLA GiB: the executable's "
                 "footprint (args + outputs + temps - donated); torch GiB: torch.cuda.max_memory_allocated "
                 "(accelerator only).")
    return "\n".join(lines)


def target_checks(records: List[dict]) -> List[str]:
    """The issue's ratio targets, computed from one run's medians (per direction and dtype)."""
    ms = {(r["case"], r["direction"], r["dtype"]): r["ms_per_step_median"] for r in records
          if r.get("ms_per_step_median")}
    tms = {(r["case"], r["direction"], r["dtype"]): r.get("torch_ms_per_step_median") for r in records}
    out = []
    for d, dt in sorted({(k[1], k[2]) for k in ms}):
        g = lambda c: ms.get((c, d, dt))  # noqa: E731
        tag = f"[{d} {dt}]"
        if g("ucmkd") and g("ce") and g("teacher_fwd"):
            floor = g("teacher_fwd") + 2 * g("ce")
            out.append(f"{tag} ucmkd first_order / (teacher_fwd + 2 ce) = {g('ucmkd') / floor:.2f} (target <= 1.25)")
        if g("feature_kd") and g("ce") and g("teacher_fwd"):
            out.append(f"{tag} feature_kd / (ce + teacher_fwd) = {g('feature_kd') / (g('ce') + g('teacher_fwd')):.2f}"
                       f" (target <= 1.15)")
        if g("ucmkd_unrolled") and g("ucmkd"):
            out.append(f"{tag} ucmkd unrolled / first_order = {g('ucmkd_unrolled') / g('ucmkd'):.2f} (target <= 2.5)")
        t_fo = tms.get(("ucmkd_unrolled", d, dt)) or tms.get(("ucmkd", d, dt))  # timed beside it if interleaved
        if g("ucmkd_unrolled") and t_fo:
            out.append(f"{tag} torch first_order ucmkd / jax unrolled = {t_fo / g('ucmkd_unrolled'):.2f}x "
                       f"(target > 1)")
        if g("ucmkd") and tms.get(("ucmkd", d, dt)):
            want = {"bfloat16": 6, "float32": 3}[dt]
            out.append(f"{tag} torch / jax ucmkd first_order = {tms[('ucmkd', d, dt)] / g('ucmkd'):.2f}x "
                       f"(GPU target >= {want}x)")
    return out + vit_cases.target_checks(records)


# ---------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(DEFAULT_CASES),
                   help=f"comma-separated cases from {sorted(CASES)}, 'baselines' (= {','.join(BASELINE_CASES)}) "
                        f"or 'all' (default: %(default)s)")
    p.add_argument("--directions", default="a2v,v2a", help="a2v (audio teacher -> video student), v2a")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or both comma-separated")
    p.add_argument("--small", action="store_true", help=f"small shapes for a 2-core CPU: {SMALL}")
    p.add_argument("--batch", type=int, help="override the batch size")
    p.add_argument("--width", type=int, help="override the ResNet width (64 = ResNet-18)")
    p.add_argument("--audio-hw", type=lambda s: _dims(s, 2), help="override the spectrogram HxW, e.g. 257x1004")
    p.add_argument("--video-thw", type=lambda s: _dims(s, 3), help="override frames x H x W, e.g. 2x224x224")
    p.add_argument("--stem-impl", default="auto",
                   help="ResNet stem convolution: auto (ucmkd_jax.models.ops.AUTO for the platform), conv (plain), "
                        "conv_pad8, space_to_depth, space_to_depth_pad8, space_to_depth_fwd")
    p.add_argument("--pool-impl", default="auto", help="ResNet stem max-pool: auto, reduce_window (plain), masked")
    p.add_argument("--conv-impl", default="auto", help="ResNet block convolutions: auto, conv (plain), patches_when_small")
    p.add_argument("--stem", default="imagenet", choices=("imagenet", "small"),
                   help="ResNet stem on both sides (default imagenet, as the authors)")
    p.add_argument("--arch", default="resnet18", choices=RESNET_ARCHS + tuple(vit_cases.ARCHS),
                   help="the backbones: ResNet-18 on both sides (resnet10: one basic block per stage, for smoke "
                        "tests), or a ViT-B/16 or ViT-L/16 teacher and a ViT-S/16 student at their own shapes "
                        "(benchmarks/vit_cases.py: batch 32, Tables 8 and 10)")
    p.add_argument("--vit-attention", default="auto", choices=("auto", "xla", "cudnn"),
                   help="ViT attention kernel (auto: cuDNN's fused one on a GPU in bf16; unrolled students: XLA)")
    p.add_argument("--vit-remat", action="store_true", help="ViT blocks under jax.checkpoint (memory for compute)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--vs-torch", action="store_true", help="also time benchmarks/torch_reference.py")
    p.add_argument("--compile-only", action="store_true",
                   help="compile from abstract inputs and report compile time, FLOPs and XLA's memory footprint "
                        "(e.g. full CREMA-D shapes on a CPU); no timing, no torch")
    p.add_argument("--torch-dtype", default="same", choices=("same", "float32"),
                   help="'same' as --dtype (bf16 = torch.autocast) or always float32 (the authors' setting)")
    p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--interleave", default="auto", choices=("auto", "on", "off"),
                   help="with --vs-torch, alternate torch and JAX steps so both see the same background load "
                        "(auto: on for a CPU backend, off on an accelerator, where the two would share its memory)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU only: compute threads for XLA:CPU and torch (default: what each picks). On a "
                        "shared, loaded CPU, 1 gives stable numbers: torch's OpenMP team stalls badly when a "
                        "core is taken by another process")
    p.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="after timing, trace --profile-steps more steps of each JAX case with jax.profiler into "
                        "DIR/CASE_DIR_DTYPE and print where the time goes (device kernels on a GPU, host ops "
                        "on a CPU), by name and by category")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--keep-traces", action="store_true",
                   help="keep the trace files under --profile DIR (default: keep only the summary in the JSON)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: cases that would start after this are recorded as skipped")
    p.add_argument("--deadline", type=float, default=None,
                   help="unix time: cases that would start after it are recorded as skipped")
    p.add_argument("--json", type=Path, help="write the records here (a JSON list)")
    p.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                   help="only print the table and target checks of earlier --json files, run nothing")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = list(CASES) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    names = [c for m in names for c in (BASELINE_CASES if m == "baselines" else (m,))]
    bad = [m for m in names if m not in CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {sorted(CASES)} or 'all'")
    args.cases = names
    args.direction_list = [d.strip() for d in args.directions.split(",") if d.strip()]
    if any(d not in ("a2v", "v2a") for d in args.direction_list):
        p.error(f"--directions takes a2v and/or v2a, got {args.directions!r}")
    args.dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if any(d not in ("float32", "bfloat16") for d in args.dtypes):
        p.error(f"--dtype takes float32 and/or bfloat16, got {args.dtype!r}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    shapes = dict(SMALL if args.small else FULL)
    if args.arch in RESNET_ARCHS:
        shapes["backbone"] = args.arch
    else:
        shapes = vit_cases.shapes_for(args.arch, args.small, args.vit_attention, args.vit_remat)
    for key in ("batch", "width", "audio_hw", "video_thw"):
        if getattr(args, key) is not None:
            shapes[key] = getattr(args, key)
    shapes.update(stem_impl=args.stem_impl, pool_impl=args.pool_impl, conv_impl=args.conv_impl)
    args.shapes = shapes
    return args


def _configure_env(vs_torch: bool, threads: Optional[int]) -> Optional[str]:
    """Before jax is imported. With torch in the same process, JAX must not grab 75% of the GPU
    up front (torch allocates beside it). ``threads``: XLA:CPU sizes its thread pools from the
    process's CPU affinity when its backend starts, so the affinity is narrowed to ``threads``
    CPUs for that moment and then widened again for every thread (so the pools may migrate).
    Returns a warning when that was not possible."""
    if "jax" in sys.modules:
        return "jax was already imported: XLA's thread count is left as it is" if threads else None
    if vs_torch:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.75")
    if not threads:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return "no sched_setaffinity here: XLA's thread count is left as it is"
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus[:threads]))
    try:
        import jax

        jax.devices()
    finally:
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), set(cpus))
            except OSError:
                pass
    return None


def _write(records: List[dict], path: Optional[Path]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)


def report(paths: Sequence[Path]) -> List[dict]:
    records: List[dict] = []
    for path in paths:
        records.extend(json.loads(Path(path).read_text()))
    devices = sorted({r.get("device", "?") for r in records})
    dates = sorted({r.get("date", "?")[:10] for r in records})
    print(f"# step_bench records from {', '.join(map(str, paths))}: device {', '.join(devices)}, "
          f"date {', '.join(dates)}")
    from benchmarks.profile_summary import format_summary

    for r in _display_order(records):
        if r.get("profile"):
            print(format_summary(f"{r['case']} {r['direction']} {r['dtype']}", r["profile"]))
    print(format_table(records))
    for line in target_checks(records):
        print(line)
    return records


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    if args.report:
        return report(args.report)
    note = _configure_env(args.vs_torch, args.threads)
    if note:
        warnings.warn(f"--threads {args.threads}: {note}")
    import jax

    from ucmkd_jax.models.ops import resolve_impl

    dev = jax.devices()[0]
    platform = dev.platform
    device_name = f"{platform}:{dev.device_kind}"
    torch_device = None
    if args.vs_torch:
        try:
            import torch
        except ImportError as e:
            raise SystemExit(f"--vs-torch needs torch and POT: pip install -e '.[bench]' ({e})")
        want = args.torch_device
        if want == "auto":
            want = "cuda" if platform == "gpu" and torch.cuda.is_available() else "cpu"
        if want == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--torch-device cuda but torch sees no CUDA device")
        torch_device = want
        if args.threads:
            torch.set_num_threads(args.threads)
    interleave = {"auto": platform == "cpu", "on": True, "off": False}[args.interleave]
    profile = (args.profile, args.profile_steps, args.keep_traces) if args.profile and not args.compile_only else None
    peak = {} if (args.no_peak or args.compile_only) else measure_matmul_peak(platform)
    versions = {"jax_version": jax.__version__}
    if torch_device:
        import torch

        versions["torch_version"] = torch.__version__
    base = {"arch": args.arch, "remat": args.vit_remat, "batch": args.shapes["batch"], "device": device_name, "backend": platform,
            "width": args.shapes["width"], "audio_hw": list(args.shapes["audio_hw"]),
            "video_thw": list(args.shapes["video_thw"]), "stem": args.stem, "steps": args.steps,
            "stem_impl": resolve_impl("stem", args.stem_impl, platform),
            "pool_impl": resolve_impl("pool", args.pool_impl, platform),
            "conv_impl": resolve_impl("conv", args.conv_impl, platform),
            "warmup": args.warmup, "threads": args.threads, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **versions, **peak}
    print(f"# step_bench on {device_name} (jax {jax.__version__}), shapes {args.shapes}, "
          f"{args.steps} timed steps after {args.warmup} warm-up"
          + (f", {args.threads} compute thread(s)" if args.threads else "")
          + (f"; torch {versions['torch_version']} on {torch_device}"
             + (", steps interleaved" if interleave else "") if torch_device else ""), flush=True)
    if peak:
        print(f"# matmul peak ({peak['matmul_peak_dtype']} {peak['matmul_peak_n']}^3): "
              f"{peak['matmul_peak_flops_per_s'] / 1e12:.3f} TFLOP/s", flush=True)

    records: List[dict] = []
    torch_cache: Dict[tuple, dict] = {}
    start = time.perf_counter()
    # Order = priority: case (as listed in --methods), then dtype, then direction, so that a run
    # cut short by --time-budget / --deadline still has both directions of the first cases.
    for case in args.cases:
        for dtype in args.dtypes:
            for direction in args.direction_list:
                method, hypergrad = CASES[case]
                rec = dict(case=case, method=method or case, direction=direction, hypergrad=hypergrad,
                           hvp=(CASE_CONFIG.get(case, {}).get("hvp", "forward_over_reverse")
                                if hypergrad == "unrolled" and method else None),
                           dtype=dtype, **base, compile_s=None, ms_per_step_median=None, samples_per_s=None,
                           error=None, skipped=None)
                over = args.time_budget is not None and time.perf_counter() - start > args.time_budget
                if over or (args.deadline is not None and time.time() > args.deadline):
                    rec["skipped"] = "time budget spent"
                    records.append(rec)
                    _write(records, args.json)
                    continue
                try:
                    t_dtype = dtype if args.torch_dtype == "same" else "float32"
                    with_torch = torch_device and not args.compile_only and case in TORCH_METHOD
                    if with_torch and interleave:
                        rec.update(run_pair(case, direction, args.shapes, dtype, t_dtype, args.steps, args.warmup,
                                            torch_device, args.stem, args.seed, profile))
                    else:
                        if with_torch:
                            key = (TORCH_METHOD[case], direction, t_dtype)
                            if key not in torch_cache:  # torch first: it frees its memory before JAX grows
                                torch_cache[key] = run_torch_case(case, direction, args.shapes, t_dtype, args.steps,
                                                                  args.warmup, torch_device, args.stem, args.seed)
                            rec.update(torch_cache[key])
                        rec.update(run_jax_case(case, direction, args.shapes, dtype, args.steps, args.warmup,
                                                args.stem, args.seed, args.compile_only, profile))
                    if peak and rec.get("flops_per_s"):
                        rec["frac_of_matmul_peak"] = rec["flops_per_s"] / peak["matmul_peak_flops_per_s"]
                    if rec.get("torch_ms_per_step_median"):
                        rec["speedup"] = rec["torch_ms_per_step_median"] / rec["ms_per_step_median"]
                except Exception as e:  # noqa: BLE001  (one failed case, e.g. out of memory, must not end the run)
                    rec["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
                    print(f"! {case} {direction} {dtype}: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr,
                          flush=True)
                records.append(rec)
                _write(records, args.json)
                if not rec["error"] and rec["ms_per_step_median"] is None:
                    print(f"  {case:<23}{direction:<4} {dtype:<9} compile {rec['compile_s']:6.1f} s  "
                          f"{(rec['flops_per_step'] or 0) / 1e9:9.1f} GFLOP/step  "
                          f"{(rec['compiled_mem_bytes'] or 0) / 2**30:7.2f} GiB (XLA footprint)", flush=True)
                elif not rec["error"]:
                    print(f"  {case:<23}{direction:<4} {dtype:<9} compile {rec['compile_s']:6.1f} s  "
                          f"{rec['ms_per_step_median']:9.2f} ms/step"
                          + (f"  torch {rec['torch_ms_per_step_median']:9.2f} ms  x{rec['speedup']:.2f}"
                             if rec.get("speedup") else ""), flush=True)
                    if rec.get("profile"):
                        from benchmarks.profile_summary import format_summary

                        print(format_summary(f"{case} {direction} {dtype}", rec["profile"]), flush=True)
    print()
    print(format_table(records))
    for line in target_checks(records):
        print(line)
    if args.json:
        print(f"# wrote {len(records)} records to {args.json}")
    return records


if __name__ == "__main__":
    recs = main()
    sys.exit(1 if any(r.get("error") for r in recs) else 0)

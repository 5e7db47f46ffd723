r"""One training epoch end to end: prepared shards -> streaming pipeline -> compiled step.

``step_bench.py`` times the step on device arrays that are already there; ``pipeline_bench.py``
times the input pipeline alone. This times them together, the way ``ucmkd_jax.train.fit`` runs an
epoch: ``ShardStream.epoch_batches`` (tf.data: read, parse, JPEG decode, augment, batch) ->
``parallel.prefetch_to_device`` (a background thread, two batches ahead) -> the jitted step of
``ucmkd_jax.train.build_step`` (state donated). What it does:

1. writes ``--clips`` synthetic CREMA-D clips as TFDS shards into a temporary directory (or reads
   ``--data-dir``), through the data_prep builder as ``pipeline_bench.write_synthetic_shards`` does:
   a 257 x 1004 float16 spectrogram and ``--frames`` JPEG frames per clip (341 x 256 at full
   shapes, CREMA-D's stored size; at ``--small``, frames whose shorter side is round(S * 256 / 224),
   so that, as at full size, the decoder crops without resizing), ``--train-fraction`` in train;
2. builds ResNet-18 teacher and student (random weights: the timing does not depend on them), the
   step of each ``--methods`` entry, compiles it ahead of time (``compile_s``) and runs one untimed
   step on zeros;
3. runs ``--epochs`` epochs and times each (epoch 0 included: its first batch pays the pipeline's
   start, which a real epoch pays too), then ``--read-epochs`` epochs of the stream alone (no step:
   the input's own rate on the same cores).

Per epoch it reports ``steps`` (batches consumed: ``train clips // batch``), ``wall_s``,
``steps_per_s``, ``input_wait_s`` and ``input_share`` (= input_wait_s / wall_s): the time the main
loop waited for the next batch AFTER the previous step had finished, i.e. the time the device sat
idle for want of input. To see that, the loop synchronises each step (``jax.block_until_ready``)
before asking for the next batch; the producer thread keeps decoding meanwhile, so input and step
still overlap as in ``fit`` (which does not synchronise; the difference is one dispatch per step).
``step_s`` is the summed step time (dispatch to ready), ``first_batch_s`` the wait for the epoch's
first batch (in input_wait_s too), building the epoch's tf.data pipeline (``pipeline_start_s``)
included. ``cpu_cores_used`` = the process's CPU time (user + system, all threads: XLA, tf.data,
the producer) over wall_s: how many cores the epoch kept busy, against
``cpus_available`` (the process's affinity). ``projected_epoch_s`` scales the measured epoch to
``--project-clips`` train clips (CREMA-D: 6698; batch 64: 104 steps) at the measured rate.

At ``--small`` (a 2-core CPU) the shapes are step_bench's small ones: batch 16, video 2 x 48 x 48,
ResNet-18 width 16. The stored spectrogram is always 257 x 1004 (``ucmkd_jax.data.spec``): at
``--small`` it is parsed whole and then cropped on the host to its first ``--audio-hw`` (64 x 128)
rows and columns, in the producer thread, so the crop is input time.

    python benchmarks/epoch_bench.py --small --json benchmarks/results/cpu_small_epoch_bench.json
    python benchmarks/epoch_bench.py --dtype bfloat16 --clips 1536 --methods ucmkd,ce   # a GPU host

Needs the data extra (tensorflow, tensorflow-datasets, Pillow) for the shards.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``ucmkd_jax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.step_bench import FULL, SMALL, _configure_env, shape_parser  # noqa: E402

CREMA_D_TRAIN_CLIPS = 6698  # the CREMA-D UCMKD epoch (batch 64: 104 steps)
STORED_SPECTROGRAM_HW = (257, 1004)


def _cpu_time() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def stored_frame_hw(image_size: int) -> tuple:
    """(height, width) of a stored frame that the decoder crops to ``image_size`` without resizing:
    shorter side round(S * 256 / 224), 4:3 like CREMA-D's 341 x 256."""
    h = int(round(image_size * 256 / 224))
    return h, int(round(h * 4 / 3))


def write_shards(out: Path, clips: int, frames: int, train_fraction: float, image_size: int, seed: int = 0) -> dict:
    from benchmarks.pipeline_bench import write_synthetic_shards

    hw = (256, 341) if image_size == 224 else stored_frame_hw(image_size)
    return {**write_synthetic_shards(out, clips, frames, train_fraction, seed, frame_hw=hw), "frame_hw": list(hw)}


def _cropped(batches: Iterator[dict], audio_hw: tuple, audio_keys: Sequence[str]) -> Iterator[dict]:
    """The spectrograms of ``audio_keys`` cut to their first ``audio_hw`` rows and columns."""
    h, w = audio_hw
    for b in batches:
        for k in audio_keys:
            b[k] = np.ascontiguousarray(b[k][:, :h, :w])
        yield b


class Epochs:
    """The stream and one method's compiled step; ``run(epoch)`` times one epoch."""

    def __init__(self, method: str, stream, shapes: dict, direction: str, dtype: str, seed: int = 0,
                 epochs_for_schedule: int = 100):
        import jax

        from benchmarks.step_bench import _build_models_and_batch
        from ucmkd_jax.methods import MethodConfig, get_method
        from ucmkd_jax.optim import OptimConfig
        from ucmkd_jax.train import build_step

        self.stream, self.shapes, self.batch = stream, shapes, shapes["batch"]
        self.spec = get_method(method)
        student, teacher, sv, tv, _ = _build_models_and_batch(direction, shapes, dtype, "imagenet", seed, True)
        self.with_teacher = self.spec.uses_teacher
        steps = stream.steps_per_epoch(self.batch)
        ts = build_step(method, student, teacher, method_config=MethodConfig(hypergrad="first_order"),
                        optim=OptimConfig(), steps_per_epoch=steps, epochs=epochs_for_schedule)
        self.state = jax.device_put(ts.init_state(sv, tv, seed))
        self.tv = jax.device_put(tv if self.with_teacher else {})
        (h, w), (t, vh, vw) = shapes["audio_hw"], shapes["video_thw"]
        per_sample = {"audio": (h, w, 1), "video": (t, vh, vw, 3)}
        s_mod, t_mod = stream.student, stream.teacher
        self.audio_keys = [k for k, m in (("x_s", s_mod), ("x_t", t_mod)) if m == "audio"
                           and (k == "x_s" or self.with_teacher)]
        self.crop = tuple(shapes["audio_hw"]) != STORED_SPECTROGRAM_HW
        n = self.batch
        example = {"x_s": np.zeros((n,) + per_sample[s_mod], np.float32), "y_s": np.zeros((n,), np.int32)}
        if self.with_teacher:
            example.update(x_t=np.zeros((n,) + per_sample[t_mod], np.float32), y_t=np.zeros((n,), np.int32))
        t0 = time.perf_counter()
        self.step = ts.step.lower(self.state, self.tv, jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), example)).compile()
        self.compile_s = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            self.state, metrics = self.step(self.state, self.tv, jax.device_put(example))  # untimed, on zeros
        jax.block_until_ready((self.state, metrics))

    def batches(self, epoch: int) -> Iterator[dict]:
        it = self.stream.epoch_batches(epoch, self.batch, with_teacher=self.with_teacher)
        return _cropped(it, self.shapes["audio_hw"], self.audio_keys) if self.crop else it

    def run(self, epoch: int) -> dict:
        import jax

        from ucmkd_jax.parallel import prefetch_to_device

        waits, step_times = [], []
        cpu0, t0 = _cpu_time(), time.perf_counter()
        source = self.batches(epoch)  # builds the epoch's tf.data pipeline: input time too
        start_s = time.perf_counter() - t0
        it = prefetch_to_device(source, put=jax.device_put)
        loss = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
            while True:
                tw = time.perf_counter()
                batch = next(it, None)
                waits.append(time.perf_counter() - tw)
                if batch is None:
                    break
                ts = time.perf_counter()
                self.state, metrics = self.step(self.state, self.tv, batch)
                jax.block_until_ready((self.state, metrics))
                step_times.append(time.perf_counter() - ts)
                loss = metrics["loss"]
        wall = time.perf_counter() - t0
        cpu = _cpu_time() - cpu0
        steps = len(step_times)
        wait = start_s + sum(waits)
        out = {"epoch": epoch, "steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
               "samples_per_s": steps * self.batch / wall, "input_wait_s": wait, "input_share": wait / wall,
               "pipeline_start_s": start_s, "first_batch_s": start_s + waits[0], "step_s": sum(step_times),
               "step_ms_median": 1e3 * statistics.median(step_times) if step_times else None,
               "cpu_s": cpu, "cpu_cores_used": cpu / wall, "loss_last": None if loss is None else float(loss)}
        return out

    def read_only(self, epoch: int) -> dict:
        """The stream alone, one epoch, numpy batches as the producer gets them (no device copy)."""
        cpu0, t0 = _cpu_time(), time.perf_counter()
        first, n = None, 0
        for _ in self.batches(epoch):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
        wall = time.perf_counter() - t0
        return {"epoch": epoch, "read_only": True, "steps": n, "wall_s": wall, "batches_per_s": n / wall,
                "first_batch_s": first, "cpu_cores_used": (_cpu_time() - cpu0) / wall}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = shape_parser(__doc__, "spectrogram HxW the step sees (smaller than the stored 257x1004: cropped on the host)")
    p.add_argument("--image-size", type=int, help="video frame side S (default 224; 48 at --small)")
    p.add_argument("--methods", default="ucmkd", help="comma-separated methods, each timed in turn (default ucmkd)")
    p.add_argument("--direction", default="a2v", choices=("a2v", "v2a"),
                   help="a2v: audio teacher, video student (Table 9's CREMA-D A->V)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet10"),
                   help="ResNet on both sides (resnet10: one basic block per stage, for smoke tests)")
    p.add_argument("--stem-impl", default="auto")
    p.add_argument("--pool-impl", default="auto")
    p.add_argument("--conv-impl", default="auto")
    p.add_argument("--clips", type=int, help="synthetic clips written (default 1536; 256 at --small)")
    p.add_argument("--frames", type=int, default=5, help="stored frames per synthetic clip")
    p.add_argument("--train-fraction", type=float, default=0.9)
    p.add_argument("--data-dir", type=Path, help="read these prepared crema_d shards instead of writing new ones")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per method (epoch 0 included)")
    p.add_argument("--read-epochs", type=int, default=1, help="epochs of the stream alone, after the timed ones")
    p.add_argument("--threads", type=int, default=None, help="CPU: XLA:CPU compute threads (tf.data unaffected)")
    p.add_argument("--parallel", type=int, default=None, help="tf.data parallelism (default AUTOTUNE)")
    p.add_argument("--project-clips", type=int, default=CREMA_D_TRAIN_CLIPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    shapes = dict(SMALL if args.small else FULL)
    for key in ("batch", "width", "audio_hw"):
        if getattr(args, key) is not None:
            shapes[key] = getattr(args, key)
    s = args.image_size or (shapes["video_thw"][1] if args.small else 224)
    shapes["video_thw"] = (2, s, s)
    if any(a > b for a, b in zip(shapes["audio_hw"], STORED_SPECTROGRAM_HW)):
        p.error(f"--audio-hw must fit in the stored {STORED_SPECTROGRAM_HW}")
    shapes.update(backbone=args.arch, stem_impl=args.stem_impl, pool_impl=args.pool_impl, conv_impl=args.conv_impl)
    args.shapes = shapes
    args.clips = args.clips or (256 if args.small else 1536)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.epochs < 1 or args.read_epochs < 0:
        p.error("--epochs must be >= 1 and --read-epochs >= 0")
    return args


def format_table(records: List[dict]) -> str:
    lines = ["| method | epoch | steps | wall s | steps/s | samples/s | input wait s | input share | first batch s | "
             "step ms (median) | CPU cores used | projected epoch s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r.get("read_only"):
            lines.append(f"| (stream alone) | {r['epoch']} | {r['steps']} | {r['wall_s']:.2f} | "
                         f"{r['batches_per_s']:.2f} | - | - | - | {r['first_batch_s']:.2f} | - | "
                         f"{r['cpu_cores_used']:.2f} | - |")
            continue
        lines.append(f"| {r['method']} | {r['epoch']} | {r['steps']} | {r['wall_s']:.2f} | {r['steps_per_s']:.2f} | "
                     f"{r['samples_per_s']:.1f} | {r['input_wait_s']:.2f} | {100 * r['input_share']:.1f} % | "
                     f"{r['first_batch_s']:.2f} | {r['step_ms_median']:.1f} | {r['cpu_cores_used']:.2f} | "
                     f"{r['projected_epoch_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = parse_args(argv)
    note = _configure_env(False, args.threads)
    if note:
        warnings.warn(f"--threads {args.threads}: {note}")
    import jax

    from ucmkd_jax.data.pipeline import ShardStream
    from ucmkd_jax.data.shards import import_tf
    from ucmkd_jax.models.ops import resolve_impl

    dev = jax.devices()[0]
    import_tf()  # TensorFlow (the shard writer too) kept off the GPUs before it first runs an op
    platform = dev.platform
    shapes = args.shapes
    base = {"device": f"{platform}:{dev.device_kind}", "jax_version": jax.__version__, "dtype": args.dtype,
            "direction": args.direction, "arch": args.arch, "batch": shapes["batch"], "width": shapes["width"],
            "audio_hw": list(shapes["audio_hw"]), "video_thw": list(shapes["video_thw"]),
            "stem_impl": resolve_impl("stem", args.stem_impl, platform),
            "pool_impl": resolve_impl("pool", args.pool_impl, platform),
            "conv_impl": resolve_impl("conv", args.conv_impl, platform), "threads": args.threads,
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    print(f"# epoch_bench on {base['device']} (jax {jax.__version__}), {args.direction}, shapes {shapes}, "
          f"{args.dtype}, {base['cpus_available']} CPUs available; started {base['date']}", flush=True)
    records: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="epoch_bench_") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp)
            t0 = time.perf_counter()
            written = write_shards(data_dir, args.clips, args.frames, args.train_fraction, shapes["video_thw"][1],
                                   args.seed)
            base["shards"] = {**written, "write_wall_s": round(time.perf_counter() - t0, 2)}
            print(f"# wrote {json.dumps(base['shards'])}", flush=True)
        s_mod, t_mod = ("video", "audio") if args.direction == "a2v" else ("audio", "video")
        stream = ShardStream("crema_d", data_dir, student=s_mod, teacher=t_mod, seed=args.seed,
                             image_size=shapes["video_thw"][1], parallel=args.parallel)
        base["train_clips"] = stream.num_samples
        epoch_steps = stream.steps_per_epoch(shapes["batch"])
        projected_steps = args.project_clips // shapes["batch"]
        for method in args.method_list:
            ep = Epochs(method, stream, shapes, args.direction, args.dtype, args.seed)
            print(f"  {method}: compiled in {ep.compile_s:.1f} s, {epoch_steps} steps per epoch", flush=True)
            for e in range(args.epochs):
                r = {**base, "method": method, "compile_s": ep.compile_s, **ep.run(e)}
                r["projected_steps"] = projected_steps
                r["projected_epoch_s"] = projected_steps / r["steps_per_s"]
                records.append(r)
                print(f"  {method} epoch {e}: {r['steps']} steps in {r['wall_s']:.2f} s ({r['steps_per_s']:.2f} "
                      f"steps/s), input wait {r['input_wait_s']:.2f} s ({100 * r['input_share']:.1f} %, first "
                      f"batch {r['first_batch_s']:.2f} s), step median {r['step_ms_median']:.1f} ms, "
                      f"{r['cpu_cores_used']:.2f} cores", flush=True)
            if method == args.method_list[-1]:
                for e in range(args.read_epochs):
                    r = {**base, "method": method, **ep.read_only(args.epochs + e)}
                    records.append(r)
                    print(f"  stream alone, epoch {r['epoch']}: {r['steps']} batches in {r['wall_s']:.2f} s "
                          f"({r['batches_per_s']:.2f} batches/s), {r['cpu_cores_used']:.2f} cores", flush=True)
            del ep
    print()
    print(format_table(records))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1) + "\n")
        print(f"# wrote {len(records)} records to {args.json}")
    return records


if __name__ == "__main__":
    main()

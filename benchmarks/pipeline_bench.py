r"""Input pipeline throughput: clips/s converted by data_prep/prepare.py, batches/s read by the stream.

Two measurements, each on data the script writes into a temporary directory:

1. convert: ``--raw-clips`` CREMA-D-like raw clips (``data_prep.testing``: a 16 kHz mono .wav and
   a 480 x 360 FLV1 video at 29.97 fps of ``--raw-seconds`` each, like CREMA-D's VideoFlash)
   converted end to end by ``prepare.main`` with ``--workers`` processes: clips/s = clips / wall
   time of the whole command (decoding, spectrograms, 1 fps frames -> JPEG, TFDS shard writing;
   worker start-up included).
2. read: ``--clips`` synthetic clips of the real stored size written through the same TFDS
   builder (``data_prep.builders.CremaD`` from a pre-filled clip cache, so no media decoding):
   a 257 x 1004 float16 spectrogram and ``--frames`` JPEG frames of 341 x 256 (quality 90, smooth
   random colour fields with fine noise: ~20-40 KB, the order of real frames), ``--train-fraction``
   of them in train. Then ``ucmkd_jax.data.pipeline.ShardStream`` yields ``--epochs`` epochs of
   batches (``--batch``, image ``--image-size``) for each case: ``unpaired`` (video student +
   audio teacher streams, the main setting: every record read twice), ``paired`` (one read per
   row), ``student_only`` (video alone: teacher pre-training / ce). batches/s counts every batch
   after the first of each epoch (the first one pays the pipeline start); ``first_batch_s`` is
   reported apart. The shards were just written, so they are in the page cache: this is the
   CPU-bound rate (decode, resize, parse), not the disk's.

    python benchmarks/pipeline_bench.py --raw-clips 48 --clips 512 --json /tmp/pipeline_bench.json

Prints one JSON record per measurement (and writes them all to ``--json`` if given).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _frame(rng: np.random.Generator, h: int = 256, w: int = 341) -> bytes:
    """A JPEG (quality 90, as data_prep/video.py) of a smooth random colour field plus fine noise."""
    from PIL import Image

    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    img = np.clip(img + rng.normal(0, 6, size=img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_synthetic_shards(out: Path, clips: int, frames: int, train_fraction: float, seed: int = 0,
                           frame_hw: tuple = (256, 341)) -> dict:
    """``clips`` synthetic CREMA-D clips through the TFDS builder; returns sizes. ``frame_hw``: the
    stored JPEG frames' (height, width) (CREMA-D's, shorter side 256, by default)."""
    import tensorflow_datasets as tfds

    from data_prep import clips as clips_lib
    from data_prep.builders import CremaD
    from data_prep.datasets import CREMA_D_CLASSES, ClipTask, Index
    from ucmkd_jax.data.spec import SPECTROGRAM_DTYPE, SPECTROGRAM_SHAPE

    rng = np.random.default_rng(seed)
    cache = out / "_cache"
    base = [_frame(rng, *frame_hw) for _ in range(16)]  # reused across clips: generating JPEGs is not what is timed
    tasks, jpeg_bytes = [], 0
    n_train = int(round(train_fraction * clips))
    n_val = (clips - n_train) // 2
    for i in range(clips):
        cid = f"{1001 + i // 50}_S{i:04d}_{CREMA_D_CLASSES[i % 6]}_XX"
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        fr = [base[(i * 7 + f) % len(base)] for f in range(frames)]
        jpeg_bytes += sum(len(b) for b in fr)
        spec = rng.standard_normal(SPECTROGRAM_SHAPE, dtype=np.float32).astype(SPECTROGRAM_DTYPE)
        clips_lib.save_cached(cache, cid, clips_lib.ClipFeatures(spec, fr, np.arange(frames, dtype=np.int32),
                                                                 np.arange(frames, dtype=np.float32)))
        tasks.append(ClipTask(key=cid, clip_id=cid, label=CREMA_D_CLASSES[i % 6], split=split, audio_path="-",
                              video_path="-", speaker=cid[:4]))
    tfds.disable_progress_bar()
    t0 = time.perf_counter()
    builder = CremaD(index=Index("crema_d", CREMA_D_CLASSES, tasks, []), cache_dir=str(cache), data_dir=str(out),
                     config="speaker")
    builder.download_and_prepare(download_dir=str(out / "_dl"), download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    write_s = time.perf_counter() - t0
    shard_bytes = sum(p.stat().st_size for p in (out / "crema_d").rglob("*.tfrecord*"))
    return {"clips": clips, "train": n_train, "frames_per_clip": frames,
            "mean_jpeg_kb": round(jpeg_bytes / (clips * frames) / 1024, 1),
            "shard_mb": round(shard_bytes / 2**20, 1), "tfds_write_s": round(write_s, 2)}


def bench_convert(tmp: Path, n: int, seconds: float, workers: int) -> dict:
    from data_prep import prepare, testing

    raw = tmp / "raw"
    clips = [(f"{1001 + k // 6}_DFA_{['ANG', 'DIS', 'FEA', 'HAP', 'NEU', 'SAD'][k % 6]}_XX", seconds)
             for k in range(n)]
    t0 = time.perf_counter()
    for k, (cid, secs) in enumerate(clips):
        testing.write_wav(raw / "AudioWAV" / f"{cid}.wav", seconds=secs, freq=200 + 10 * k)
        testing.write_video(raw / "VideoFlash" / f"{cid}.flv", seconds=secs, width=480, height=360, audio=False)
    make_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rc = prepare.main(["--dataset", "crema_d", "--raw-dir", str(raw), "--out-dir", str(tmp / "prepared"),
                       "--workers", str(workers), "--quiet"])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"prepare.py exited {rc}")
    return {"measure": "convert", "clips": n, "seconds_per_clip": seconds, "video": "480x360 FLV1 29.97 fps",
            "workers": workers, "wall_s": round(wall, 2), "clips_per_s": round(n / wall, 2),
            "raw_generation_s": round(make_s, 2)}


def bench_read(data_dir: Path, case: str, batch: int, image_size: int, epochs: int) -> dict:
    from ucmkd_jax.data.pipeline import ShardStream

    teacher = None if case == "student_only" else "audio"
    pairing = "paired" if case == "paired" else "unpaired"
    t0 = time.perf_counter()
    st = ShardStream("crema_d", data_dir, student="video", teacher=teacher, pairing=pairing, image_size=image_size)
    open_s = time.perf_counter() - t0
    steady, n_steady, first = 0.0, 0, []
    for e in range(epochs):
        t0 = time.perf_counter()
        it = st.epoch_batches(e, batch, with_teacher=teacher is not None)
        next(it)
        t1 = time.perf_counter()
        first.append(t1 - t0)
        k = 0
        for b in it:
            k += 1
        steady += time.perf_counter() - t1
        n_steady += k
    return {"measure": "read", "case": case, "batch": batch, "image_size": image_size, "epochs": epochs,
            "steps_per_epoch": st.steps_per_epoch(batch), "open_s": round(open_s, 2),
            "first_batch_s": round(float(np.mean(first)), 3),
            "batches_per_s": round(n_steady / steady, 3) if steady > 0 else None,
            "clips_per_s": round(n_steady * batch / steady, 1) if steady > 0 else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--raw-clips", type=int, default=48, help="clips for the conversion measure (0: skip it)")
    p.add_argument("--raw-seconds", type=float, default=2.5)
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--clips", type=int, default=512, help="synthetic clips for the read measure")
    p.add_argument("--frames", type=int, default=5, help="stored frames per synthetic clip")
    p.add_argument("--train-fraction", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cases", default="unpaired,paired,student_only")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import tensorflow as tf

    env = {"measure": "env", "python": platform.python_version(), "tensorflow": tf.__version__,
           "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    records = [env]
    print(json.dumps(env), flush=True)
    with tempfile.TemporaryDirectory(prefix="pipeline_bench_") as tmp:
        tmp = Path(tmp)
        if args.raw_clips > 0:
            rec = bench_convert(tmp / "convert", args.raw_clips, args.raw_seconds, args.workers)
            records.append(rec)
            print(json.dumps(rec), flush=True)
        data = tmp / "synthetic"
        rec = dict(measure="write", **write_synthetic_shards(data, args.clips, args.frames, args.train_fraction))
        records.append(rec)
        print(json.dumps(rec), flush=True)
        for case in args.cases.split(","):
            rec = bench_read(data, case, args.batch, args.image_size, args.epochs)
            records.append(rec)
            print(json.dumps(rec), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

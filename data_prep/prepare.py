"""Raw CREMA-D / RAVDESS / AVE / VGGSound -> TFRecord shards (TFDS), once, offline.

    python data_prep/prepare.py --dataset crema_d --raw-dir RAW --out-dir OUT [--workers N] [--split speaker|authors]
    python data_prep/prepare.py --dataset ravdess --raw-dir RAW --out-dir OUT [--channel speech|song|both]
    python data_prep/prepare.py --dataset ave --raw-dir RAW --out-dir OUT
    python data_prep/prepare.py --dataset vggsound --raw-dir RAW --out-dir OUT [--classes N|FILE]

Writes ``OUT/<dataset>/<config>/<version>/`` (TFRecord shards + dataset_info.json; the version is
``ucmkd_jax.data.spec.SPEC_VERSION``; ``config_name``: a non-default ``--short-side`` adds ``_raw``
for 0 or ``_s<N>``, e.g. ``authors_raw`` for the release's frames) and
``prep_report.json`` next to them: clips written per split, and every clip or annotation row
left out with its reason (counts and ids). Exit status: 0 ok; 2 bad arguments or raw layout;
3 more than ``--max-bad-fraction`` (default 0.05) of the clips were bad (shards are still
written); 130 interrupted. A split that comes out empty or smaller than ``--min-split-clips``
(default 64, one training batch of the protocol) is warned about on stderr and listed under
``warnings`` in the report, without changing the exit status.

Two stages. (1) Each clip is decoded in ``--workers`` processes and its features saved
atomically to ``OUT/_cache/<dataset>/<config>/`` (progress bar with clips/s and ETA); a crash or
Ctrl-C leaves only finished clips there, and a rerun does the rest. (2) The TFDS builder writes
the shards from the cache into a temporary ``incomplete.*`` directory renamed on success, so no
shard set looks complete before it is; stale temporaries are removed on the next run. Same
inputs give byte-identical shards, resumed or not. The cache is deleted after a successful run
(``--keep-cache`` keeps it).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_prep import clips as clips_lib  # noqa: E402
from data_prep import datasets as ds_lib  # noqa: E402
from ucmkd_jax import cli  # noqa: E402
from ucmkd_jax.data import spec  # noqa: E402

__all__ = ["main", "build_index", "config_name", "process_all", "split_warnings", "NOT_BAD_REASONS",
           "MIN_SPLIT_CLIPS"]

# Reasons that are bookkeeping of the annotations, not bad data: they do not count as bad.
NOT_BAD_REASONS = {"duplicate_row", "in_two_splits", "not_in_split_files"}
# One training batch of the protocol (ucmkd_jax.config TrainConfig.batch_size): a split smaller than
# that (or empty: few actors held out 70/10/20 can leave val without one) is worth a warning.
MIN_SPLIT_CLIPS = 64


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(ds_lib.INDEXERS))
    p.add_argument("--raw-dir", required=True, help="the unpacked raw download (layouts: data_prep/README.md)")
    p.add_argument("--out-dir", required=True, help="where <dataset>/<config>/<version>/ is written")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="decoding processes (default: cores - 1)")
    p.add_argument("--split", default=spec.DEFAULT_CONFIGS["crema_d"], choices=["speaker", "authors"],
                   help="CREMA-D: speaker = actors held out 70/10/20 (default); authors = the authors' 6698/744 lists")
    p.add_argument("--split-dir", default=None,
                   help="CREMA-D --split authors: directory with crema_d_{train,test}.csv "
                        "(default: the lists shipped in ucmkd_jax/data/splits/)")
    p.add_argument("--channel", default=spec.DEFAULT_CONFIGS["ravdess"], choices=["speech", "song", "both"],
                   help="RAVDESS vocal channel")
    p.add_argument("--classes", default=None, help="VGGSound: N (first N classes, sorted) or a file of class names")
    p.add_argument("--seed", type=int, default=0, help="seed of the split / validation carve-out (default 0)")
    p.add_argument("--short-side", type=int, default=spec.STORED_SHORT_SIDE,
                   help=f"resize frames so the shorter side has this many pixels (default {spec.STORED_SHORT_SIDE}); "
                        f"0 keeps the decoded size (the release's frames: read with video_crop=center_crop); "
                        f"a non-default size adds _raw (0) or _s<N> to the config name")
    p.add_argument("--max-bad-fraction", type=float, default=0.05,
                   help="exit 3 if more than this fraction of clips is bad (default 0.05)")
    p.add_argument("--min-split-clips", type=int, default=MIN_SPLIT_CLIPS,
                   help=f"warn when a split has fewer clips than this (default {MIN_SPLIT_CLIPS}, one training batch)")
    p.add_argument("--keep-cache", action="store_true", help="keep OUT/_cache after a successful run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(cli.DEBUG_FLAG, action="store_true", help="show the traceback of an error (default: one line)")
    return p


def build_index(args) -> ds_lib.Index:
    raw = args.raw_dir
    if args.dataset == "crema_d":
        return ds_lib.index_crema_d(raw, split=args.split, seed=args.seed, split_dir=args.split_dir)
    if args.dataset == "ravdess":
        return ds_lib.index_ravdess(raw, channel=args.channel, seed=args.seed)
    if args.dataset == "ave":
        return ds_lib.index_ave(raw)
    return ds_lib.index_vggsound(raw, classes=args.classes, seed=args.seed)


def config_name(args) -> str:
    """The config folder (and cache folder) name: the split / channel / classes, ``_seed<S>`` for a
    non-zero seed, then ``_raw`` (``--short-side 0``) or ``_s<N>`` for a stored frame size other than
    ``spec.STORED_SHORT_SIDE``: frames of two sizes never share a folder or a feature cache."""
    if args.dataset == "crema_d":
        name = args.split
    elif args.dataset == "ravdess":
        name = args.channel
    elif args.dataset == "ave":
        name = spec.DEFAULT_CONFIGS["ave"]
    elif args.classes is None:
        name = spec.DEFAULT_CONFIGS["vggsound"]
    elif str(args.classes).isdigit():
        name = f"classes{int(args.classes)}"
    else:
        name = "classes_" + "".join(c if c.isalnum() else "_" for c in Path(args.classes).stem)
    if args.seed != 0 and args.dataset != "ave":  # AVE's split is the official one: no seed
        name = f"{name}_seed{args.seed}"
    side = getattr(args, "short_side", spec.STORED_SHORT_SIDE)
    if side != spec.STORED_SHORT_SIDE:
        name += "_raw" if not side else f"_s{side}"
    return name


def process_all(tasks, cache_dir: Path, workers: int, short_side: Optional[int], quiet: bool = False,
                desc: str = "clips") -> List[clips_lib.ClipFailure]:
    """Stage 1: every task's features into ``cache_dir`` (cached ones are skipped)."""
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [t for t in tasks if not clips_lib.cache_path(cache_dir, t.key).is_file()]
    failures = []
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="clip", desc=desc, disable=quiet,
               dynamic_ncols=True, smoothing=0.05)
    jobs = [(t, str(cache_dir), short_side) for t in todo]
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = map(clips_lib.run_task, jobs)
            for _, failure in results:
                if failure is not None:
                    failures.append(failure)
                bar.update(1)
        else:
            import multiprocessing as mp

            # spawn, not fork: the parent may have TensorFlow's threads loaded
            with mp.get_context("spawn").Pool(workers) as pool:
                for _, failure in pool.imap_unordered(clips_lib.run_task, jobs, chunksize=4):
                    if failure is not None:
                        failures.append(failure)
                    bar.update(1)
    finally:
        bar.close()
    return sorted(failures, key=lambda f: f.clip_id)


def _remove_stale_incomplete(config_dir: Path) -> List[str]:
    removed = []
    if config_dir.is_dir():
        for p in config_dir.iterdir():
            if p.name.startswith("incomplete."):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                removed.append(p.name)
    for p in config_dir.parent.glob("*.incomplete*") if config_dir.parent.is_dir() else []:
        p.unlink()
    return removed


def split_warnings(written: dict, min_clips: int, where: str) -> List[str]:
    """A line per split of ``written`` (split -> clips) that is empty or has fewer than ``min_clips``."""
    out = []
    for s in ds_lib.SPLITS:
        n = written.get(s, 0)
        if n == 0:
            out.append(f"{where}: split {s!r} is empty (0 clips)")
        elif n < min_clips:
            out.append(f"{where}: split {s!r} has {n} clips, fewer than --min-split-clips {min_clips} "
                       f"(one training batch)")
    return out


def _report(index, failures, written, config, version_dir, elapsed, max_bad, warnings) -> dict:
    skipped = [dataclasses.asdict(s) for s in index.skipped] + [dataclasses.asdict(f) for f in failures]
    by_reason = collections.defaultdict(list)
    for s in skipped:
        by_reason[s["reason"]].append(s)
    n_bad = sum(len(v) for r, v in by_reason.items() if r not in NOT_BAD_REASONS)
    n_written = sum(written.values())
    bad_fraction = n_bad / max(1, n_bad + n_written)
    return {
        "dataset": index.dataset,
        "config": config,
        "version": spec.SPEC_VERSION,
        "shards": str(version_dir),
        "spectrogram": {"shape": list(spec.SPECTROGRAM_SHAPE), "dtype": np.dtype(spec.SPECTROGRAM_DTYPE).name},
        "num_classes": len(index.class_names),
        "class_names": list(index.class_names),
        "written": written,
        "skipped": {r: {"count": len(v), "ids": [s["clip_id"] for s in v],
                        "details": [{k: s[k] for k in ("clip_id", "path", "detail")} for s in v]}
                    for r, v in sorted(by_reason.items())},
        "num_bad": n_bad,
        "bad_fraction": bad_fraction,
        "max_bad_fraction": max_bad,
        "warnings": warnings,
        "notes": index.notes,
        "seconds": round(elapsed, 1),
    }


def _print_summary(report: dict, out=None) -> None:
    out = out or sys.stdout
    w = report["written"]
    print(f"\n{report['dataset']}/{report['config']} {report['version']} -> {report['shards']}", file=out)
    print("written: " + ", ".join(f"{s} {w.get(s, 0)}" for s in ds_lib.SPLITS) + f" (total {sum(w.values())})", file=out)
    if report["skipped"]:
        print("skipped:", file=out)
        for reason, v in report["skipped"].items():
            tag = "" if reason not in NOT_BAD_REASONS else " (not counted as bad)"
            ids = ", ".join(v["ids"][:5]) + (" ..." if len(v["ids"]) > 5 else "")
            print(f"  {reason}: {v['count']}{tag}  e.g. {ids}", file=out)
            for d in v["details"][:2]:
                detail = d["detail"].splitlines()[0] if d["detail"] else ""
                if detail.startswith(d["path"] + ": "):
                    detail = detail[len(d["path"]) + 2:]
                print(f"    {d['path']}: {detail}", file=out)
    else:
        print("skipped: none", file=out)
    print(f"bad fraction {report['bad_fraction']:.3f} (limit {report['max_bad_fraction']}); "
          f"{report['seconds']} s", file=out)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.time()
    if args.short_side < 0:
        print(f"error: --short-side must be >= 0 (0 keeps the decoded size), got {args.short_side}", file=sys.stderr)
        return 2
    try:
        index = build_index(args)
    except (ds_lib.RawLayoutError, ds_lib.SplitListError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = config_name(args)
    out = Path(args.out_dir)
    config_dir = out / index.dataset / config
    version_dir = config_dir / spec.SPEC_VERSION
    if (version_dir / "dataset_info.json").is_file():
        print(f"{version_dir} is already prepared (delete it to rebuild).")
        return 0
    _remove_stale_incomplete(config_dir)
    cache_dir = out / "_cache" / index.dataset / config
    short_side = args.short_side or None
    sizes = index.split_sizes()
    print(f"{index.dataset}/{config}: {len(index.tasks)} clips to convert "
          f"({', '.join(f'{s} {n}' for s, n in sizes.items())}), {len(index.skipped)} left out while indexing")
    try:
        failures = process_all(index.tasks, cache_dir, args.workers, short_side, args.quiet,
                               desc=f"{index.dataset} clips")
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished clips are cached in {cache_dir}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    failed = {f.clip_id for f in failures}
    good = dataclasses.replace(index, tasks=[t for t in index.tasks if t.clip_id not in failed])
    written = {s: 0 for s in ds_lib.SPLITS}
    if good.tasks:
        from data_prep.builders import BUILDERS
        from ucmkd_jax.data.tf_import import import_tf

        _, tfds = import_tf()  # TFDS writes through TensorFlow: imported without Keras, off the GPUs

        cls = BUILDERS[index.dataset]
        known = {c.name for c in cls.BUILDER_CONFIGS}
        builder = cls(index=good, cache_dir=str(cache_dir), short_side=short_side, data_dir=str(out),
                      config=config if config in known else tfds.core.BuilderConfig(name=config))
        if args.quiet:
            tfds.disable_progress_bar()
        try:
            builder.download_and_prepare(download_dir=str(out / "_cache" / "tfds_downloads"),
                                         download_config=tfds.download.DownloadConfig(
                manual_dir=args.raw_dir, try_download_gcs=False,
                compute_stats=tfds.download.ComputeStatsMode.SKIP))
        except KeyboardInterrupt:
            print("\ninterrupted while writing shards: nothing complete was left; rerun to resume", file=sys.stderr)
            return 130
        failures = failures + builder.failures
        for name, info in builder.info.splits.items():
            written[name] = int(info.num_examples)
        report_dir = version_dir
    else:
        report_dir = config_dir
    warnings = split_warnings(written, args.min_split_clips, f"{index.dataset}/{config}")
    report = _report(index, failures, written, config, version_dir, time.time() - t0, args.max_bad_fraction,
                     warnings)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "prep_report.json").write_text(json.dumps(report, indent=1) + "\n")
    _print_summary(report)
    for w in warnings:
        print(f"warning: {w}; see {report_dir / 'prep_report.json'}", file=sys.stderr)
    shutil.rmtree(out / "_cache" / "tfds_downloads", ignore_errors=True)
    if good.tasks and not args.keep_cache:
        shutil.rmtree(cache_dir, ignore_errors=True)
        for d in (cache_dir.parent, cache_dir.parent.parent):  # _cache/<dataset>, _cache if now empty
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    if report["bad_fraction"] > args.max_bad_fraction:
        print(f"error: {report['num_bad']} bad clips, fraction {report['bad_fraction']:.3f} > "
              f"--max-bad-fraction {args.max_bad_fraction}; see {report_dir / 'prep_report.json'}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

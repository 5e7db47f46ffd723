"""Raw layouts, label parsing and splits of CREMA-D, RAVDESS, AVE and VGGSound (no TensorFlow).

Each ``index_<dataset>(raw_dir, ...)`` walks a raw download and returns an ``Index``: one
``ClipTask`` per clip to convert (split, label, speaker, media paths, time window) plus a
``Skip`` for every file or annotation row left out, with its reason. Nothing is dropped silently.

Layouts (what the official downloads unpack to; see data_prep/README.md):
  CREMA-D   RAW/AudioWAV/<id>.wav, RAW/VideoFlash/<id>.flv; id = ``1001_DFA_ANG_XX``
            (actor_sentence_emotion_level); label = 3rd field in ANG DIS FEA HAP NEU SAD.
  RAVDESS   RAW/Actor_XX/MO-VC-EM-IN-ST-RE-AC.mp4 (modality 01 = audio-video is converted;
            02 video-only is ignored) and optionally the audio-only 03-....wav next to it (used
            for the audio when present, else the .mp4's own track). Speech channel (VC=01) by
            default. 8 emotions, codes 01..08.
  AVE       RAW/AVE/<id>.mp4, RAW/Annotations.txt, RAW/{train,val,test}Set.txt, rows
            ``Category&VideoID&Quality&StartTime&EndTime``; 28 classes (from Annotations.txt).
  VGGSound  RAW/vggsound.csv (youtube id, start second, label, train|test; no header) and
            RAW/video/<id>_<start:06d>.mp4 (RAW/<id>_<start:06d>.mp4 is accepted too).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ucmkd_jax.data.spec import DEFAULT_CONFIGS
from ucmkd_jax.data.stratify import stratified_sample

__all__ = [
    "ClipTask", "Skip", "Index", "RawLayoutError", "SplitListError", "SPLITS",
    "CREMA_D_CLASSES", "RAVDESS_CLASSES", "index_crema_d", "index_ravdess", "index_ave",
    "index_vggsound", "INDEXERS", "split_by_group", "validation_keys", "authors_split_files",
    "AUTHORS_SPLIT_COUNTS",
]

SPLITS = ("train", "val", "test")
CREMA_D_CLASSES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
RAVDESS_CHANNELS = {"speech": "01", "song": "02"}
AUTHORS_SPLIT_COUNTS = {"train": 6698, "test": 744}
SPLITS_PACKAGE_DIR = Path(__file__).resolve().parents[1] / "ucmkd_jax" / "data" / "splits"


class RawLayoutError(FileNotFoundError):
    """The raw directory is missing or does not have the expected layout."""


class SplitListError(FileNotFoundError):
    """A split file list the chosen split needs is missing or has the wrong size."""


@dataclasses.dataclass(frozen=True)
class ClipTask:
    """One clip to convert. ``key`` is unique within a dataset and names the example."""

    key: str
    clip_id: str
    label: str
    split: str
    audio_path: str
    video_path: str
    speaker: str = ""
    start: Optional[float] = None  # event window in seconds (AVE); None = whole clip
    end: Optional[float] = None
    min_frames: int = 3


@dataclasses.dataclass(frozen=True)
class Skip:
    reason: str   # e.g. "malformed_name", "unknown_label", "missing_file", "corrupt_media"
    clip_id: str
    path: str = ""
    detail: str = ""


@dataclasses.dataclass
class Index:
    dataset: str
    class_names: Tuple[str, ...]
    tasks: List[ClipTask]
    skipped: List[Skip]
    notes: Dict[str, object] = dataclasses.field(default_factory=dict)

    def split_sizes(self) -> Dict[str, int]:
        c = collections.Counter(t.split for t in self.tasks)
        return {s: c.get(s, 0) for s in SPLITS}


def _require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise RawLayoutError(f"{dataset}: expected directory {path} is missing. Expected layout:\n{layout}")


def split_by_group(groups: Sequence[str], seed: int, fractions=(0.7, 0.1, 0.2)) -> Dict[str, str]:
    """Assign whole groups (speakers, actors) to train/val/test: a seeded permutation of the sorted
    distinct groups, cut at round(0.7 n) and round(0.8 n). Returns group -> split."""
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    n = len(uniq)
    n_train = int(round(fractions[0] * n))
    n_val = int(round((fractions[0] + fractions[1]) * n)) - n_train
    out = {}
    for rank, i in enumerate(order):
        out[uniq[i]] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return out


def validation_keys(keys: Sequence[str], seed: int, fraction: float = 0.1) -> set:
    """A seeded ``fraction`` of ``keys`` (by sorted key, so independent of walk order) for val:
    round(fraction * n) of the n distinct keys, not stratified (one stratum, the permutation draw
    of ``ucmkd_jax.data.stratify``: the splits of earlier preparations come out again)."""
    uniq = sorted(set(keys))
    picked = stratified_sample(np.zeros(len(uniq)), fraction, np.random.default_rng(seed), draw="permutation",
                               min_per_class=0)
    return {uniq[i] for i in picked}


# ---------------------------------------------------------------------------------------------
# CREMA-D

CREMA_D_LAYOUT = "  RAW/AudioWAV/1001_DFA_ANG_XX.wav ...\n  RAW/VideoFlash/1001_DFA_ANG_XX.flv ..."
_CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")


def authors_split_files(split_dir: Optional[os.PathLike] = None) -> Dict[str, Path]:
    """Paths of the authors' CREMA-D file lists (``crema_d_{train,test}.csv``): by default the copies
    shipped in ``ucmkd_jax/data/splits/`` (the UCMKD release's lists, MIT; see the README there)."""
    d = Path(split_dir) if split_dir else SPLITS_PACKAGE_DIR
    return {s: d / f"crema_d_{s}.csv" for s in AUTHORS_SPLIT_COUNTS}


def _read_id_list(path: Path) -> List[str]:
    """Clip ids of a list with one ``id`` or ``id,label`` per line; a label must be the emotion
    code the id itself carries (``1001_DFA_ANG_XX,ANG``), else the list is refused, naming the line."""
    ids = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        cid = os.path.splitext(os.path.basename(fields[0]))[0]
        m = _CREMA_D_NAME.match(cid)
        if not m:
            raise SplitListError(f"{path}:{n}: {fields[0]!r} is not a CREMA-D clip id like 1001_DFA_ANG_XX")
        if len(fields) > 1 and fields[1] and fields[1] != m.group(3):
            raise SplitListError(f"{path}:{n}: label {fields[1]!r} does not match the clip id's emotion {m.group(3)!r}")
        ids.append(cid)
    return ids


def _crema_d_authors_assignment(split_dir, seed: int, val_fraction: float) -> Dict[str, str]:
    files = authors_split_files(split_dir)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SplitListError(
            "--split authors needs the authors' CREMA-D file lists (6698 train / 744 test clip ids, "
            "one per line, 'id' or 'id,label'); they ship with the package, so this installation lacks them. Expected:\n  "
            + "\n  ".join(str(p) for p in files.values())
            + "\n(or pass --split-dir DIR holding crema_d_train.csv and crema_d_test.csv). "
            f"Missing: {', '.join(missing)}. Use --split speaker meanwhile.")
    assign = {}
    for split, path in files.items():
        ids = _read_id_list(path)
        if len(ids) != AUTHORS_SPLIT_COUNTS[split] or len(set(ids)) != len(ids):
            raise SplitListError(f"{path}: expected {AUTHORS_SPLIT_COUNTS[split]} distinct clip ids, "
                                 f"found {len(set(ids))} distinct in {len(ids)} lines")
        for cid in ids:
            if cid in assign:
                raise SplitListError(f"{path}: clip {cid} is also in the {assign[cid]} list")
            assign[cid] = split
    val = validation_keys([c for c, s in assign.items() if s == "train"], seed, val_fraction)
    return {c: ("val" if c in val else s) for c, s in assign.items()}


def index_crema_d(raw_dir, *, split: str = DEFAULT_CONFIGS["crema_d"], seed: int = 0, split_dir=None,
                  val_fraction: float = 0.1) -> Index:
    """CREMA-D clips that have both a .wav and a .flv.

    split="speaker": actors held out 70/10/20 (seeded), no actor in two splits.
    split="authors": the authors' 6698/744 train/test lists, val = seeded ``val_fraction`` of train.
    """
    raw = Path(raw_dir)
    _require_dir(raw, "crema_d", CREMA_D_LAYOUT)
    _require_dir(raw / "AudioWAV", "crema_d", CREMA_D_LAYOUT)
    _require_dir(raw / "VideoFlash", "crema_d", CREMA_D_LAYOUT)
    skipped: List[Skip] = []
    wavs = {p.stem: p for p in sorted((raw / "AudioWAV").iterdir()) if p.suffix.lower() == ".wav"}
    flvs = {p.stem: p for p in sorted((raw / "VideoFlash").iterdir()) if p.suffix.lower() == ".flv"}
    parsed = []
    for cid in sorted(set(wavs) | set(flvs)):
        where = str(wavs.get(cid) or flvs.get(cid))
        m = _CREMA_D_NAME.match(cid)
        if not m:
            skipped.append(Skip("malformed_name", cid, where, "expected ACTOR_SENTENCE_EMOTION_LEVEL like 1001_DFA_ANG_XX"))
            continue
        if m.group(3) not in CREMA_D_CLASSES:
            skipped.append(Skip("unknown_label", cid, where, f"emotion {m.group(3)!r} not in {list(CREMA_D_CLASSES)}"))
            continue
        if cid not in wavs or cid not in flvs:
            other = raw / ("AudioWAV" if cid not in wavs else "VideoFlash") / (cid + (".wav" if cid not in wavs else ".flv"))
            skipped.append(Skip("missing_file", cid, str(other), "the clip's other modality is missing"))
            continue
        parsed.append((cid, m.group(1), m.group(3)))
    if split == "speaker":
        assign_spk = split_by_group([spk for _, spk, _ in parsed], seed)
        assign = {cid: assign_spk[spk] for cid, spk, _ in parsed}
    elif split == "authors":
        assign = _crema_d_authors_assignment(split_dir, seed, val_fraction)
        listed = set(assign)
        present = {cid for cid, _, _ in parsed} | {s.clip_id for s in skipped}
        for cid in sorted(listed - present):
            skipped.append(Skip("missing_file", cid, str(raw / "AudioWAV" / f"{cid}.wav"), "listed in the authors' split files"))
        for cid, _, _ in parsed:
            if cid not in listed:
                skipped.append(Skip("not_in_split_files", cid, str(wavs[cid]), "not in the authors' train/test lists"))
        parsed = [p for p in parsed if p[0] in listed]
    else:
        raise ValueError(f"unknown CREMA-D split {split!r}; expected 'speaker' or 'authors'")
    tasks = [ClipTask(key=cid, clip_id=cid, label=lab, split=assign[cid], speaker=spk,
                      audio_path=str(wavs[cid]), video_path=str(flvs[cid]), min_frames=3)
             for cid, spk, lab in parsed]
    notes = {"split": split, "seed": seed}
    if split == "speaker":
        notes["speakers_per_split"] = {s: sorted({t.speaker for t in tasks if t.split == s}) for s in SPLITS}
    return Index("crema_d", CREMA_D_CLASSES, tasks, skipped, notes)


# ---------------------------------------------------------------------------------------------
# RAVDESS

RAVDESS_LAYOUT = ("  RAW/Actor_01/01-01-01-01-01-01-01.mp4 ... (Video_Speech_Actor_XX.zip)\n"
                  "  RAW/Actor_01/03-01-01-01-01-01-01.wav ... (optional, Audio_Speech_Actors_01-24.zip)")
_RAVDESS_NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def index_ravdess(raw_dir, *, channel: str = DEFAULT_CONFIGS["ravdess"], seed: int = 0) -> Index:
    """RAVDESS audio-video clips (modality 01), split by actor 70/10/20 (seeded); no official split."""
    raw = Path(raw_dir)
    _require_dir(raw, "ravdess", RAVDESS_LAYOUT)
    actor_dirs = sorted(p for p in raw.iterdir() if p.is_dir() and p.name.startswith("Actor_"))
    if not actor_dirs:
        raise RawLayoutError(f"ravdess: no Actor_XX directory in {raw}. Expected layout:\n{RAVDESS_LAYOUT}")
    channels = set(RAVDESS_CHANNELS.values()) if channel == "both" else {RAVDESS_CHANNELS[channel]}
    skipped, found, ignored = [], [], collections.Counter()
    for d in actor_dirs:
        for p in sorted(d.iterdir()):
            if p.suffix.lower() not in (".mp4", ".wav"):
                continue
            m = _RAVDESS_NAME.match(p.stem)
            if not m:
                skipped.append(Skip("malformed_name", p.stem, str(p), "expected 7 two-digit fields MO-VC-EM-IN-ST-RE-AC"))
                continue
            mod, vc, em, _, _, _, ac = m.groups()
            if p.suffix.lower() == ".wav" or mod != "01":
                ignored["audio_only_wav" if p.suffix.lower() == ".wav" else f"modality_{mod}"] += 1
                continue
            if f"Actor_{ac}" != d.name:
                skipped.append(Skip("malformed_name", p.stem, str(p), f"actor field {ac} but directory {d.name}"))
                continue
            if vc not in channels:
                ignored[f"channel_{vc}"] += 1
                continue
            if not 1 <= int(em) <= len(RAVDESS_CLASSES):
                skipped.append(Skip("unknown_label", p.stem, str(p), f"emotion code {em} not in 01..08"))
                continue
            wav = p.with_name("03-" + p.stem[3:] + ".wav")
            found.append((p, wav if wav.is_file() else p, RAVDESS_CLASSES[int(em) - 1], ac))
    assign = split_by_group([ac for *_, ac in found], seed)
    tasks = [ClipTask(key=p.stem, clip_id=p.stem, label=lab, split=assign[ac], speaker=ac,
                      audio_path=str(a), video_path=str(p), min_frames=3) for p, a, lab, ac in found]
    notes = {"channel": channel, "seed": seed, "ignored": dict(ignored),
             "audio_from_wav": sum(1 for p, a, *_ in found if a != p),
             "actors_per_split": {s: sorted({t.speaker for t in tasks if t.split == s}) for s in SPLITS}}
    return Index("ravdess", RAVDESS_CLASSES, tasks, skipped, notes)


# ---------------------------------------------------------------------------------------------
# AVE

AVE_LAYOUT = ("  RAW/AVE/<video id>.mp4 ...\n  RAW/Annotations.txt\n  RAW/trainSet.txt RAW/valSet.txt RAW/testSet.txt\n"
              "  (rows Category&VideoID&Quality&StartTime&EndTime)")
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
_AVE_PRIORITY = {"test": 0, "val": 1, "train": 2}  # an id in two splits stays in the first of these


def _read_ave_rows(path: Path, skipped: List[Skip]):
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("Category&"):
            continue
        f = line.split("&")
        try:
            if len(f) != 5:
                raise ValueError(f"{len(f)} fields")
            cat, vid, _, s, e = (x.strip() for x in f)
            rows.append((cat, vid, float(s), float(e), n))
        except ValueError as err:
            skipped.append(Skip("malformed_line", f[1] if len(f) > 1 else "", f"{path}:{n}",
                                f"{err}: {line!r}"))
    return rows


def index_ave(raw_dir, *, min_frames: int = 10) -> Index:
    """AVE events from the official split files, audio and frames cropped to [start, end).

    Anomalies, each reported: an id listed with different labels (all its rows skipped,
    "conflicting_labels"); a repeated identical row (kept once, "duplicate_row"); an id in two
    splits (kept in test, else val, dropped from the other, "in_two_splits"); an event with
    end <= start ("zero_length_event"); a label absent from Annotations.txt ("unknown_label").
    """
    raw = Path(raw_dir)
    _require_dir(raw, "ave", AVE_LAYOUT)
    _require_dir(raw / "AVE", "ave", AVE_LAYOUT)
    for name in ["Annotations.txt", *AVE_SPLIT_FILES.values()]:
        if not (raw / name).is_file():
            raise RawLayoutError(f"ave: expected file {raw / name} is missing. Expected layout:\n{AVE_LAYOUT}")
    skipped: List[Skip] = []
    class_names = tuple(sorted({r[0] for r in _read_ave_rows(raw / "Annotations.txt", skipped)}))
    rows = []  # (split, cat, vid, s, e, where)
    for split, name in AVE_SPLIT_FILES.items():
        for cat, vid, s, e, n in _read_ave_rows(raw / name, skipped):
            rows.append((split, cat, vid, s, e, f"{raw / name}:{n}"))
    by_id = collections.defaultdict(list)
    for r in rows:
        by_id[r[2]].append(r)
    kept = []
    for vid in sorted(by_id):
        rs = by_id[vid]
        labels = sorted({r[1] for r in rs})
        if len(labels) > 1:
            for r in rs:
                skipped.append(Skip("conflicting_labels", vid, r[5], f"labels {labels}"))
            continue
        rs = sorted(rs, key=lambda r: _AVE_PRIORITY[r[0]])
        first = rs[0]
        for r in rs[1:]:
            if r[0] != first[0]:
                skipped.append(Skip("in_two_splits", vid, r[5], f"also in {first[0]} ({first[5]}); kept there"))
            else:
                skipped.append(Skip("duplicate_row", vid, r[5], f"same id listed again in {r[0]}; kept once"))
        split, cat, _, s, e, where = first
        if cat not in class_names:
            skipped.append(Skip("unknown_label", vid, where, f"category {cat!r} not in Annotations.txt"))
        elif e <= s:
            skipped.append(Skip("zero_length_event", vid, where, f"start {s} end {e}"))
        elif not (raw / "AVE" / f"{vid}.mp4").is_file():
            skipped.append(Skip("missing_file", vid, str(raw / "AVE" / f"{vid}.mp4"), f"listed at {where}"))
        else:
            kept.append(ClipTask(key=vid, clip_id=vid, label=cat, split=split,
                                 audio_path=str(raw / "AVE" / f"{vid}.mp4"), video_path=str(raw / "AVE" / f"{vid}.mp4"),
                                 start=s, end=e, min_frames=min_frames))
    notes = {"num_classes_in_annotations": len(class_names)}
    if len(class_names) != 28:
        notes["warning"] = f"Annotations.txt lists {len(class_names)} categories, AVE has 28"
    return Index("ave", class_names, kept, skipped, notes)


# ---------------------------------------------------------------------------------------------
# VGGSound

VGGSOUND_LAYOUT = ("  RAW/vggsound.csv (rows: youtube_id,start_seconds,label,train|test; no header)\n"
                   "  RAW/video/<youtube_id>_<start:06d>.mp4 ...")


def _vggsound_class_subset(spec, all_labels: Sequence[str]) -> Tuple[str, ...]:
    if spec is None or spec == "":
        return tuple(sorted(all_labels))
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        n = int(spec)
        labels = sorted(all_labels)
        if not 0 < n <= len(labels):
            raise ValueError(f"--classes {n}: the csv has {len(labels)} classes")
        return tuple(labels[:n])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--classes {spec}: not a number and no such file (one class name per line)")
    names = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    unknown = sorted(set(names) - set(all_labels))
    if unknown:
        raise ValueError(f"{path}: classes not in vggsound.csv: {unknown}")
    return tuple(sorted(set(names)))


def index_vggsound(raw_dir, *, classes=None, seed: int = 0, val_fraction: float = 0.1,
                   min_frames: int = 10) -> Index:
    """VGGSound clips of the selected classes (all, the first N in sorted order, or those listed
    in a file); val = seeded ``val_fraction`` of train."""
    raw = Path(raw_dir)
    _require_dir(raw, "vggsound", VGGSOUND_LAYOUT)
    csv_path = raw / "vggsound.csv"
    if not csv_path.is_file():
        raise RawLayoutError(f"vggsound: expected file {csv_path} is missing. Expected layout:\n{VGGSOUND_LAYOUT}")
    skipped, rows = [], []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for n, rec in enumerate(csv.reader(fh), 1):
            if not rec or (n == 1 and rec[0].strip().lower() in ("youtube_id", "# youtube_id", "ytid")):
                continue
            try:
                if len(rec) != 4:
                    raise ValueError(f"{len(rec)} fields")
                yid, start, label, split = (x.strip() for x in rec)
                start = int(float(start))
                if split not in ("train", "test"):
                    raise ValueError(f"split {split!r} is not train or test")
            except ValueError as err:
                skipped.append(Skip("malformed_line", rec[0] if rec else "", f"{csv_path}:{n}", f"{err}: {rec!r}"))
                continue
            rows.append((yid, start, label, split, n))
    class_names = _vggsound_class_subset(classes, {r[2] for r in rows})
    keep = set(class_names)
    video_dir = raw / "video" if (raw / "video").is_dir() else raw
    tasks, seen, excluded = [], set(), 0
    for yid, start, label, split, n in rows:
        if label not in keep:
            excluded += 1
            continue
        key = f"{yid}_{start:06d}"
        path = video_dir / f"{key}.mp4"
        if key in seen:
            skipped.append(Skip("duplicate_row", key, f"{csv_path}:{n}", "clip listed again; kept once"))
            continue
        seen.add(key)
        if not path.is_file():
            skipped.append(Skip("missing_file", key, str(path), f"listed at {csv_path}:{n}"))
            continue
        tasks.append(ClipTask(key=key, clip_id=key, label=label, split=split, audio_path=str(path),
                              video_path=str(path), min_frames=min_frames))
    val = validation_keys([t.key for t in tasks if t.split == "train"], seed, val_fraction)
    tasks = [dataclasses.replace(t, split="val") if t.key in val else t for t in tasks]
    notes = {"classes": len(class_names), "excluded_by_class_subset": excluded, "seed": seed}
    return Index("vggsound", class_names, tasks, skipped, notes)


INDEXERS = {"crema_d": index_crema_d, "ravdess": index_ravdess, "ave": index_ave, "vggsound": index_vggsound}

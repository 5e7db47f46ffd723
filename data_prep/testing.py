"""Tiny synthetic media and raw dataset layouts for tests (written with PyAV, soundfile, numpy).

Video frames carry their own index: bit b of the frame index is a black or white 8-pixel-wide
block in the top strip of the picture, which survives lossy coding, so a test can read back
exactly which frames were kept (``read_frame_index``).
"""
from __future__ import annotations

import csv
import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

__all__ = [
    "write_wav", "write_video", "read_frame_index", "truncate", "make_crema_d", "make_ravdess", "make_ave",
    "make_vggsound", "CREMA_D_TINY", "INDEX_BITS", "CORRUPT_ID", "AVE_CLASSES", "AVE_ENTRIES",
    "VGG_ROWS",
]

INDEX_BITS = 8
_BLOCK = 8


def write_wav(path, seconds: float = 0.5, sr: int = 16_000, freq: float = 440.0, channels: int = 1):
    import soundfile as sf

    t = np.arange(int(round(seconds * sr))) / sr
    y = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        y = np.stack([y] * channels, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(os.fspath(path), y, sr)
    return path


def _index_picture(i: int, width: int, height: int) -> np.ndarray:
    img = np.full((height, width, 3), 96, np.uint8)
    img[:, :, 0] = (37 * i) % 256  # a colour that changes with the index, for the eye
    for b in range(INDEX_BITS):
        img[:_BLOCK * 2, b * _BLOCK:(b + 1) * _BLOCK] = 255 if (i >> b) & 1 else 0
    return img


def read_frame_index(rgb: np.ndarray) -> int:
    """The frame index painted by ``write_video`` into an RGB picture of the same size."""
    i = 0
    for b in range(INDEX_BITS):
        block = rgb[2:_BLOCK * 2 - 2, b * _BLOCK + 2:(b + 1) * _BLOCK - 2]
        if block.mean() > 127:
            i |= 1 << b
    return i


def write_video(path, seconds: float = 3.0, fps: Fraction = Fraction(30000, 1001), width: int = 64,
                height: int = 48, audio: bool = True, sr: int = 44_100, freq: float = 440.0,
                faststart: bool = False, audio_seconds: Optional[float] = None):
    """A short video whose frame i shows index i; .flv gets FLV1 + MP3, others MPEG-4 + AAC.

    Audio (if any) is a mono tone of ``audio_seconds`` (default ``seconds``) at ``sr`` Hz.
    ``faststart`` (.mp4) puts the index (moov) before the media data, as web downloads have it:
    cut short, such a file still opens.
    """
    import av

    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    flv = path.endswith(".flv")
    fps = Fraction(fps)
    n_frames = int(round(seconds * fps))
    with av.open(path, "w", options={"movflags": "faststart"} if faststart else None) as out:
        vs = out.add_stream("flv" if flv else "mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.time_base = 1 / fps
        vs.codec_context.qmax = 4  # near-lossless, so the painted bits stay readable
        as_ = None
        if audio:
            as_ = out.add_stream("libmp3lame" if flv else "aac", rate=sr)
            as_.layout = "mono"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(_index_picture(i, width, height), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / fps
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if as_ is not None:
            n = int(round((seconds if audio_seconds is None else audio_seconds) * sr))
            y = (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)
            chunk = as_.codec_context.frame_size or 1024
            for k, a in enumerate(range(0, n, chunk)):
                piece = y[a:a + chunk]
                if piece.size < chunk:
                    piece = np.pad(piece, (0, chunk - piece.size))
                af = av.AudioFrame.from_ndarray(piece[None, :], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = a
                af.time_base = Fraction(1, sr)
                for packet in as_.encode(af):
                    out.mux(packet)
            for packet in as_.encode(None):
                out.mux(packet)
    return path


def truncate(path, fraction: float, dest=None):
    """Keep the first ``fraction`` of ``path``'s bytes (in place, or written to ``dest``), as an
    interrupted download or copy leaves a file. Returns the truncated file's path."""
    data = Path(path).read_bytes()
    dest = Path(dest or path)
    dest.write_bytes(data[:int(len(data) * fraction)])
    return dest


# ---------------------------------------------------------------------------------------------
# Raw dataset layouts

CREMA_D_TINY = [  # (clip id, seconds) — 6 actors so a 70/10/20 speaker split has 3 non-empty parts
    ("1001_DFA_ANG_XX", 1.2), ("1001_IEO_HAP_LO", 0.8), ("1002_DFA_SAD_XX", 1.0),
    ("1002_ITS_NEU_XX", 2.3), ("1003_DFA_FEA_HI", 1.0), ("1003_TIE_DIS_XX", 1.0),
    ("1004_DFA_ANG_XX", 1.0), ("1005_DFA_HAP_XX", 1.0), ("1006_DFA_SAD_MD", 1.0),
]


def make_crema_d(root, clips: Iterable = CREMA_D_TINY, *, corrupt: Iterable[str] = (),
                 extra_files: Optional[dict] = None):
    """``root/AudioWAV/<id>.wav`` + ``root/VideoFlash/<id>.flv`` (FLV1 at 29.97 fps, 64 x 48).

    ``corrupt`` ids get a garbage .flv; ``extra_files`` maps relative path -> bytes to plant.
    """
    root = Path(root)
    for k, (cid, secs) in enumerate(clips):
        write_wav(root / "AudioWAV" / f"{cid}.wav", seconds=secs, freq=200 + 50 * k)
        vpath = root / "VideoFlash" / f"{cid}.flv"
        if cid in corrupt:
            vpath.parent.mkdir(parents=True, exist_ok=True)
            vpath.write_bytes(b"FLV\x01 this is not a video" * 8)
        else:
            write_video(vpath, seconds=secs, audio=False)
    for rel, data in (extra_files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def make_ravdess(root, actors=(1, 2, 3, 4, 5, 6), emotions=(1, 3, 5), *, seconds: float = 1.0,
                 with_wav_for: Iterable[int] = (1,), song_actor: Optional[int] = 1):
    """``root/Actor_XX/01-01-EE-01-01-01-XX.mp4`` (MPEG-4 + AAC at 48 kHz, 25 fps), plus the
    audio-only ``03-...`` .wav for actors in ``with_wav_for``, a video-only ``02-...`` file, and
    one song-channel clip (``01-02-...``) for ``song_actor``."""
    root = Path(root)
    for a in actors:
        d = root / f"Actor_{a:02d}"
        for e in emotions:
            stem = f"01-{e:02d}-01-01-01-{a:02d}"
            write_video(d / f"01-{stem}.mp4", seconds=seconds, fps=25, sr=48_000)
            if a in with_wav_for:
                write_wav(d / f"03-{stem}.wav", seconds=seconds, sr=48_000)
        write_video(d / f"02-01-{emotions[0]:02d}-01-01-01-{a:02d}.mp4", seconds=seconds, fps=25, audio=False)
        if a == song_actor:
            write_video(d / f"01-02-{emotions[0]:02d}-01-01-01-{a:02d}.mp4", seconds=seconds, fps=25, sr=48_000)
    return root


AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def make_ave(root, entries, *, classes=None, seconds: float = 3.0, missing: Iterable[str] = ()):
    """``root/AVE/<id>.mp4``, ``root/Annotations.txt`` and the three split files.

    entries: (split, category, video id, start, end) rows; split in {"train", "val", "test"}.
    Annotations.txt lists every entry (plus one row per name in ``classes`` not used otherwise,
    so the class list can be made complete).
    """
    root = Path(root)
    files = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
    rows = {k: [AVE_HEADER] for k in files}
    ann = [AVE_HEADER]
    made = set()
    for split, cat, vid, s, e in entries:
        line = f"{cat}&{vid}&good&{s}&{e}"
        rows[split].append(line)
        ann.append(line)
        if vid not in made and vid not in missing:
            write_video(root / "AVE" / f"{vid}.mp4", seconds=seconds, fps=Fraction(30000, 1001), sr=22_050)
            made.add(vid)
    used = {cat for _, cat, *_ in entries}
    for k, cat in enumerate(c for c in (classes or []) if c not in used):
        ann.append(f"{cat}&unused{k:03d}&good&0&10")
    for split, name in files.items():
        (root / name).write_text("\n".join(rows[split]) + "\n")
    (root / "Annotations.txt").write_text("\n".join(ann) + "\n")
    return root


def make_vggsound(root, rows, *, seconds: float = 2.0, missing: Iterable[str] = ()):
    """``root/vggsound.csv`` (no header: youtube id, start s, label, split) and
    ``root/video/<id>_<start:06d>.mp4``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for yid, start, label, split in rows:
        w.writerow([yid, start, label, split])
        name = f"{yid}_{int(start):06d}"
        if name not in missing:
            write_video(root / "video" / f"{name}.mp4", seconds=seconds, fps=25, sr=16_000)
    (root / "vggsound.csv").write_text(buf.getvalue())
    return root


# ---------------------------------------------------------------------------------------------
# Fixture contents used by tests/data_prep (each row plants one case)

CORRUPT_ID = "1004_DFA_ANG_XX"

AVE_CLASSES = [f"Class{k:02d}" for k in range(28)]
AVE_ENTRIES = [
    ("train", "Class00", "vidA", 0, 3),
    ("train", "Class01", "vidB", 1, 3),
    ("train", "Class02", "vidC", 0, 2),
    ("train", "Class02", "vidC", 0, 2),     # the same row twice -> kept once, reported
    ("val", "Class03", "vidD", 0, 3),
    ("train", "Class04", "vidE", 0, 3),     # vidE in train and test -> kept in test, reported
    ("test", "Class04", "vidE", 0, 3),
    ("train", "Class05", "vidF", 0, 3),     # vidF with two labels -> skipped, reported
    ("test", "Class06", "vidF", 0, 3),
    ("test", "Class07", "vidG", 2, 2),      # zero-length event
    ("test", "Class08", "vidH", 0, 3),
    ("test", "Class09", "vidMissing", 0, 3),  # no .mp4
]

VGG_ROWS = [
    ("aaaaaaaaaaa", 0, "dog barking", "train"), ("bbbbbbbbbbb", 10, "dog barking", "train"),
    ("ccccccccccc", 30, "dog barking", "train"), ("ddddddddddd", 5, "dog barking", "train"),
    ("eeeeeeeeeee", 0, "cat meowing", "train"), ("fffffffffff", 1, "cat meowing", "train"),
    ("ggggggggggg", 0, "cat meowing", "test"), ("hhhhhhhhhhh", 0, "dog barking", "test"),
    ("iiiiiiiiiii", 0, "playing piano, jazz", "train"), ("jjjjjjjjjjj", 0, "playing piano, jazz", "test"),
    ("kkkkkkkkkkk", 7, "cat meowing", "train"),  # missing .mp4
]

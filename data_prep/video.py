"""Frames: one per second (frame 0 of each second, on the stream's real timestamps), JPEG-encoded.

Which frames: frame times come from the container's presentation timestamps (so a 29.97 fps
stream keeps frames 0, 30, 60, 90, ..., 1019 at 34 s, not the multiples of a truncated 29), made
relative to the first frame. For each whole second s with ``start <= s < end`` the first frame
with time >= s is kept (if it falls before ``end``). When that gives fewer than ``min_frames``
frames (clips shorter than ``min_frames`` seconds), ``min_frames`` frames evenly spaced over the
window are kept instead; a window with fewer frames than that keeps all of them.

Stored size: the shorter side is resized to ``short_side`` pixels (default 256, the spec's
``STORED_SHORT_SIDE``; aspect kept, bilinear with antialiasing), or the decoded size when
``short_side`` is None / 0. JPEG quality 90.

A file that stops short of the duration its header declares is an error with reason
``truncated_media`` (``data_prep.media``), not a shorter clip.
"""
from __future__ import annotations

import io
import math
import os
from fractions import Fraction
from typing import List, Optional, Sequence

import numpy as np

from data_prep.media import TRUNCATED, MediaError, PacketSpans
from ucmkd_jax.data.spec import STORED_SHORT_SIDE

__all__ = ["VideoError", "frame_times", "select_frames", "extract_frames"]

JPEG_QUALITY = 90
_TIME_TOL = 1e-6


class VideoError(MediaError):
    """Unreadable, truncated or empty video; the message names the file."""


def frame_times(path: str) -> List[float]:
    """Presentation times (s) of the first video stream's frames, sorted, relative to the first.

    Read from the demuxed packets (no decoding). Streams without timestamps fall back to
    index / average frame rate. A file whose streams stop short of its declared duration raises
    VideoError with reason ``truncated_media``.
    """
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError(f"{path}: no video stream")
            stream = container.streams.video[0]
            pts, n = [], 0
            spans = PacketSpans(container)
            for packet in container.demux():  # every stream: truncation shows in all of them
                spans.add(packet)
                if packet.stream.index != stream.index or packet.size == 0:  # other stream / flush
                    continue
                n += 1
                if packet.pts is not None:
                    pts.append(packet.pts)
            tb = stream.time_base
            rate = stream.average_rate or stream.guessed_rate
            short = spans.shortfall()
            if short:
                raise VideoError(f"{path}: truncated: {short}", reason=TRUNCATED)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{path}: cannot read video ({type(e).__name__}: {e})") from e
    if n == 0:
        raise VideoError(f"{path}: the video stream has no frames")
    if len(pts) == n and tb is not None:
        pts = sorted(pts)
        return [float((p - pts[0]) * tb) for p in pts]
    if not rate:
        raise VideoError(f"{path}: no timestamps and no frame rate")
    return [float(Fraction(i) / Fraction(rate)) for i in range(n)]


def select_frames(times: Sequence[float], *, start: float = 0.0, end: Optional[float] = None,
                  min_frames: int = 3) -> List[int]:
    """Indices (into the sorted ``times``) of the frames to keep; see the module docstring."""
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        return []
    if end is None:
        end = math.inf
    in_window = np.flatnonzero((times >= start - _TIME_TOL) & (times < end - _TIME_TOL))
    if in_window.size == 0:
        return []
    keep = []
    s = math.ceil(start - _TIME_TOL)
    last = times[in_window[-1]]
    while s <= last + _TIME_TOL:
        i = int(np.searchsorted(times, s - _TIME_TOL, side="left"))
        if i < times.size and times[i] < end - _TIME_TOL and times[i] < s + 1 - _TIME_TOL:
            keep.append(i)
        s += 1
    if len(keep) >= min_frames:
        return keep
    if in_window.size <= min_frames:
        return [int(i) for i in in_window]
    pos = np.round(np.linspace(0, in_window.size - 1, min_frames)).astype(int)
    return [int(in_window[p]) for p in pos]


def _resize_short_side(img, short_side: Optional[int]):
    if not short_side:
        return img
    from PIL import Image

    w, h = img.size
    scale = short_side / min(w, h)
    if scale == 1:
        return img
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return img.resize(size, Image.BILINEAR, reducing_gap=None)


def extract_frames(path: str | os.PathLike, *, start: float = 0.0, end: Optional[float] = None,
                   min_frames: int = 3, short_side: Optional[int] = STORED_SHORT_SIDE):
    """Decode ``path`` and return ``(jpegs, indices, times)`` of the kept frames.

    jpegs: list of JPEG bytes; indices: positions in presentation order; times: seconds from the
    first frame. Raises VideoError naming the file if it cannot be decoded or keeps no frame.
    """
    import av

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError(f"{path}: zero-length file")
    times = frame_times(path)
    keep = select_frames(times, start=start, end=end, min_frames=min_frames)
    if not keep:
        raise VideoError(f"{path}: no frame in [{start}, {end}) s (video has {len(times)} frames, "
                         f"last at {times[-1]:.3f} s)")
    wanted = set(keep)
    jpegs = {}
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    img = _resize_short_side(frame.to_image(), short_side)
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
                    jpegs[i] = buf.getvalue()
                if i >= keep[-1]:
                    break
    except Exception as e:
        raise VideoError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    missing = [i for i in keep if i not in jpegs]
    if missing:
        raise VideoError(f"{path}: truncated: frames {missing} listed by the container could not be decoded",
                         reason=TRUNCATED)
    return [jpegs[i] for i in keep], list(keep), [times[i] for i in keep]

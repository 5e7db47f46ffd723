"""Truncated media: files that stop short of the duration their own header declares.

A file cut short (an interrupted download or copy) often still opens and decodes: an FLV cut to a
third of its bytes decodes its first second of frames without an error, and a WAV cut short reads
as a shorter sound. Kept, such a clip is wrong in silence (its 1 fps frames come out evenly spaced
over what is left, e.g. at 0, 0.47, 0.93 s instead of 0, 1, 2 s). So the audio and video readers
compare what is there with what the header declares and raise with reason ``truncated_media``:

- containers (PyAV): while demuxing, ``PacketSpans`` records where each audio and video stream's
  last packet ends. A stream that declares its own duration (MP4) must reach it; when none does
  (FLV keeps one duration, in its metadata) the streams together must reach the container's.
  Comparing like with like keeps a legitimately shorter audio track of an FLV from counting.
- WAV (read with soundfile, which silently clamps to the bytes present): the ``data`` chunk's
  declared size against the bytes that follow it (``wav_truncation``).

A shortfall counts above ``max(MIN_SHORTFALL_S, SHORTFALL_FRACTION * declared)`` (0.25 s; 0.5 s
for a 10 s clip): more than rounding, a missing last packet or two and the slack between an FLV's
streams; a cut smaller than that loses at most the last of the 1 fps frames.
"""
from __future__ import annotations

import os
import struct
from typing import Dict, Optional

__all__ = ["MediaError", "TRUNCATED", "PacketSpans", "wav_truncation", "MIN_SHORTFALL_S",
           "SHORTFALL_FRACTION"]

TRUNCATED = "truncated_media"
MIN_SHORTFALL_S = 0.25
SHORTFALL_FRACTION = 0.05
_AV_TIME_BASE = 1_000_000


class MediaError(ValueError):
    """Bad media; the message names the file. ``reason``: its prep_report.json category, or None
    to let ``clips.failure_from_error`` tell empty from corrupt media."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason


def _too_short(covered: float, declared: float, length: float) -> bool:
    return declared - covered > max(MIN_SHORTFALL_S, SHORTFALL_FRACTION * length)


class PacketSpans:
    """Feed it every demuxed packet of an open PyAV container; ``shortfall()`` then says whether
    the audio/video streams stop short of their declared duration (a message) or not (None)."""

    def __init__(self, container):
        from av.stream import Disposition

        self._container = container
        self._streams = [s for s in container.streams  # not cover art: one picture, no duration
                         if s.type in ("audio", "video") and not s.disposition & Disposition.attached_pic]
        self._ends: Dict[int, float] = {}

    def add(self, packet) -> None:
        if packet.size == 0 or packet.pts is None:  # flush packet / no timestamp to go by
            return
        tb = packet.stream.time_base
        end = float((packet.pts + max(packet.duration or 0, 0)) * tb)
        i = packet.stream.index
        self._ends[i] = max(self._ends.get(i, end), end)

    def shortfall(self) -> Optional[str]:
        own = [s for s in self._streams if s.duration and s.time_base]
        short = []
        for s in own:  # each stream that declares its duration must reach it
            start = float((s.start_time or 0) * s.time_base)
            length = float(s.duration * s.time_base)
            covered = self._ends.get(s.index, start)
            if _too_short(covered, start + length, length):
                short.append(f"the {s.type} stream ends at {covered - start:.2f} s of the {length:.2f} s "
                             f"its header declares")
        if short:
            return "; ".join(short)
        c = self._container
        if own or not c.duration or not self._streams or not self._ends:  # nothing to compare
            return None
        start = (c.start_time or 0) / _AV_TIME_BASE
        length = c.duration / _AV_TIME_BASE
        covered = max(self._ends.get(s.index, start) for s in self._streams)
        if _too_short(covered, start + length, length):
            return f"the streams end at {covered - start:.2f} s of the {length:.2f} s the container declares"
        return None


def wav_truncation(path: str | os.PathLike) -> Optional[str]:
    """For a RIFF WAV whose ``data`` chunk declares more bytes than the file holds, a message;
    else None (not a RIFF WAV, a streamed header with size 0 / 0xFFFFFFFF, or complete)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        byte_rate = None
        while True:
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"fmt ":
                fmt = fh.read(size)
                if len(fmt) >= 12:
                    byte_rate = struct.unpack("<I", fmt[8:12])[0]
                fh.seek(size % 2, os.SEEK_CUR)
                continue
            if cid != b"data":
                fh.seek(size + size % 2, os.SEEK_CUR)
                continue
            if size in (0, 0xFFFFFFFF) or not byte_rate:
                return None
            held = os.fstat(fh.fileno()).st_size - fh.tell()
            declared, present = size / byte_rate, max(held, 0) / byte_rate
            if _too_short(present, declared, declared):
                return f"the data chunk declares {declared:.2f} s, the file holds {present:.2f} s"
            return None

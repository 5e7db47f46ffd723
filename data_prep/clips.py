"""One clip -> its stored features (no TensorFlow), and the per-clip cache that makes reruns resume.

``process_clip`` decodes a ``ClipTask``'s audio (-> float16 log-spectrogram) and video (-> JPEG
frames). ``prepare.py`` runs it over all clips in worker processes and writes each result to
``<out>/_cache/<dataset>/<config>/<key>.npz`` atomically (temporary name, then rename): after a
crash or Ctrl-C only finished clips are on disk, and a rerun processes the rest. The TFDS builder
then reads the cache in a fixed order, so a resumed run writes the same shards as a clean one.
"""
from __future__ import annotations

import dataclasses
import os
import traceback
from pathlib import Path
from typing import Optional

import numpy as np

from data_prep import audio as audio_lib
from data_prep import video as video_lib
from data_prep.datasets import ClipTask
from ucmkd_jax.data.spec import SPECTROGRAM_DTYPE, STORED_SHORT_SIDE

__all__ = ["ClipFeatures", "ClipFailure", "process_clip", "save_cached", "load_cached", "cache_path", "run_task",
           "MEDIA_ERRORS", "failure_from_error"]

_CACHE_FORMAT = 1


@dataclasses.dataclass
class ClipFeatures:
    spectrogram: np.ndarray   # SPECTROGRAM_SHAPE (257, 1004), SPECTROGRAM_DTYPE (float16)
    frames: list              # JPEG bytes
    frame_indices: np.ndarray  # int32, positions in presentation order
    frame_times: np.ndarray   # float32 seconds from the first frame


@dataclasses.dataclass(frozen=True)
class ClipFailure:
    reason: str  # "corrupt_media" | "empty_media" | "truncated_media" | "error"
    clip_id: str
    path: str
    detail: str


def process_clip(task: ClipTask, short_side: Optional[int] = STORED_SHORT_SIDE) -> ClipFeatures:
    """Raises audio.AudioError / video.VideoError (messages name the file) on bad media."""
    y = audio_lib.load_audio(task.audio_path, start=task.start, end=task.end)
    spec = audio_lib.clip_log_spectrogram(y).astype(SPECTROGRAM_DTYPE)
    jpegs, idx, times = video_lib.extract_frames(task.video_path, start=task.start or 0.0, end=task.end,
                                                 min_frames=task.min_frames, short_side=short_side)
    return ClipFeatures(spec, jpegs, np.asarray(idx, np.int32), np.asarray(times, np.float32))


def cache_path(cache_dir, key: str) -> Path:
    return Path(cache_dir) / f"{key}.npz"


def save_cached(cache_dir, key: str, feats: ClipFeatures) -> Path:
    path = cache_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.asarray([len(b) for b in feats.frames], np.int64)
    blob = np.frombuffer(b"".join(feats.frames), np.uint8)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, format=np.int32(_CACHE_FORMAT), spectrogram=feats.spectrogram, jpeg_blob=blob,
                 jpeg_lengths=lengths, frame_indices=feats.frame_indices, frame_times=feats.frame_times)
    os.replace(tmp, path)
    return path


def load_cached(cache_dir, key: str) -> Optional[ClipFeatures]:
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if int(z["format"]) != _CACHE_FORMAT:
                return None
            blob, lengths = z["jpeg_blob"].tobytes(), z["jpeg_lengths"]
            offs = np.concatenate([[0], np.cumsum(lengths)])
            frames = [blob[offs[i]:offs[i + 1]] for i in range(len(lengths))]
            return ClipFeatures(z["spectrogram"], frames, z["frame_indices"], z["frame_times"])
    except Exception:  # a damaged cache entry is recomputed
        return None


MEDIA_ERRORS = (audio_lib.AudioError, video_lib.VideoError)


def failure_from_error(task: ClipTask, e: Exception) -> ClipFailure:
    msg = str(e)
    reason = getattr(e, "reason", None)  # set where the error knows it (truncated_media)
    if reason is None:
        empty = any(k in msg for k in ("zero-length", "no audio samples", "has no samples", "has no frames",
                                       "no frame in"))
        reason = "empty_media" if empty else "corrupt_media"
    where = task.audio_path if isinstance(e, audio_lib.AudioError) else task.video_path
    return ClipFailure(reason, task.clip_id, where, msg)


def run_task(args):
    """Worker entry: (task, cache_dir, short_side) -> (key, None) or (key, ClipFailure)."""
    task, cache_dir, short_side = args
    if cache_path(cache_dir, task.key).is_file():
        return task.key, None
    try:
        feats = process_clip(task, short_side)
    except MEDIA_ERRORS as e:
        return task.key, failure_from_error(task, e)
    except Exception as e:  # unexpected: still reported against the clip, with the traceback
        return task.key, ClipFailure("error", task.clip_id, task.video_path,
                                     f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}")
    save_cached(cache_dir, task.key, feats)
    return task.key, None

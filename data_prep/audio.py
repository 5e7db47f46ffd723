"""Audio: decode at 16 kHz, tile to 10 s, log power spectrogram 257 x 1004, per-clip standardisation.

This is the authors' audio protocol, the one the public CREMA-D / AVE / VGGSound code of this
line of work (OGM-GE, C2KD) runs::

    samples = tile(samples, ...)[:16000 * 10]; clip to [-1, 1]
    f, t, S = scipy.signal.spectrogram(samples, 16000, nperseg=512, noverlap=353)
    S = log(S + 1e-7); S = (S - S.mean()) / (S.std() + 1e-9)            # (257, 1004)

``power_spectrogram`` calls that very function (in float64): a one-sided power spectral density
with a periodic Tukey(0.25) window and each segment's mean removed; frame count
1 + (160000 - 512) // 159 = 1004. (A rebuild of it from librosa's STFT was not worth its copy of
scipy's detrend and scaling: about 15 ms against scipy's 18-19 ms per 10 s clip, medians on 2 CPU
cores, some 3% of a clip's conversion at 15.7 clips/s on 2 workers.) The parameters and the
shape are ``ucmkd_jax.data.spec``'s.

Audio inside .mp4 / .flv is demuxed and decoded with PyAV at its native rate; every path then
goes through librosa's resampler (soxr_hq, what ``librosa.load`` uses), so .wav and container
audio are resampled alike.

A file that stops short of the duration its header declares (a container's streams, a WAV's data
chunk) is an error with reason ``truncated_media`` (``data_prep.media``), not a shorter sound.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from data_prep.media import TRUNCATED, MediaError, PacketSpans, wav_truncation
from ucmkd_jax.data.spec import CLIP_SECONDS, N_FFT, NOVERLAP, SAMPLE_RATE, SPECTROGRAM_SHAPE

__all__ = ["AudioError", "load_audio", "tile_to_length", "power_spectrogram", "log_spectrogram",
           "clip_log_spectrogram", "LOG_EPS", "STD_EPS"]

LOG_EPS = 1e-7
STD_EPS = 1e-9

_SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


class AudioError(MediaError):
    """Unreadable, truncated or empty audio; the message names the file."""


def _decode_with_av(path: str):
    """(mono float32 samples, native rate) of the first audio stream of a container."""
    import av
    import librosa

    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            resampler = None
            chunks = []
            # demux everything first: truncation shows in all streams' timestamps, and a cut file's
            # last, partial packet would otherwise fail to decode before the check
            spans, packets = PacketSpans(container), []
            for packet in container.demux():
                spans.add(packet)
                if packet.stream.index == stream.index:
                    packets.append(packet)  # with the final empty one, which flushes the decoder
            short = spans.shortfall()
            if short:
                raise AudioError(f"{path}: truncated: {short}", reason=TRUNCATED)
            for packet in packets:
                for frame in packet.decode():
                    if resampler is None:  # planar float at the native rate and layout: no mixing yet
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                        rate = frame.sample_rate
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray())
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except Exception as e:  # av.error.* (InvalidDataError, ...) and OSError
        raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
    if not chunks:
        raise AudioError(f"{path}: the audio stream has no samples")
    y = np.concatenate(chunks, axis=1)  # (channels, n)
    return librosa.to_mono(y.astype(np.float32)), int(rate)


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE, *, start: Optional[float] = None,
               end: Optional[float] = None) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sr`` Hz, cropped to [start, end) seconds if given.

    .wav/.flac/.ogg are read with soundfile; anything else (.mp4, .flv, ...) is decoded
    with PyAV and resampled with librosa. Raises AudioError naming the file if it cannot be
    decoded or holds no samples (after the crop).
    """
    import librosa

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: zero-length file")
    if os.path.splitext(path)[1].lower() in _SOUNDFILE_EXTS:
        import soundfile

        try:
            y, native = soundfile.read(path, dtype="float32", always_2d=True)
            short = wav_truncation(path)
        except Exception as e:
            raise AudioError(f"{path}: cannot decode audio ({type(e).__name__}: {e})") from e
        if short:
            raise AudioError(f"{path}: truncated: {short}", reason=TRUNCATED)
        y = librosa.to_mono(y.T)
    else:
        y, native = _decode_with_av(path)
    if y.size and native != sr:
        y = librosa.resample(y, orig_sr=native, target_sr=sr)  # soxr_hq, as librosa.load
    if start is not None or end is not None:
        a = 0 if start is None else int(round(start * sr))
        b = len(y) if end is None else int(round(end * sr))
        y = y[a:b]
    if y.size == 0:
        raise AudioError(f"{path}: no audio samples" + ("" if start is None else f" in [{start}, {end}) s"))
    return np.ascontiguousarray(y, dtype=np.float32)


def tile_to_length(y: np.ndarray, n: int = SAMPLE_RATE * CLIP_SECONDS) -> np.ndarray:
    """Repeat ``y`` end to end until it has ``n`` samples; longer inputs keep their first ``n``."""
    y = np.asarray(y)
    if y.size == 0:
        raise AudioError("cannot tile an empty signal")
    reps = -(-n // y.size)
    return np.tile(y, reps)[:n]


def power_spectrogram(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``scipy.signal.spectrogram(y, sr, nperseg=512, noverlap=353)[2]`` of ``y`` in float64.

    Returns (257, 1 + (len(y) - 512) // 159) float64: the one-sided power spectral density with
    scipy's default Tukey(0.25) window and per-segment mean removal.
    """
    from scipy.signal import spectrogram

    return spectrogram(np.asarray(y, dtype=np.float64), sr, nperseg=N_FFT, noverlap=NOVERLAP)[2]


def log_spectrogram(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """log(PSD + 1e-7), standardised by its own mean and std (+1e-9): float32 (257, frames)."""
    s = np.log(power_spectrogram(y, sr) + LOG_EPS)
    s = (s - s.mean()) / (s.std() + STD_EPS)
    return s.astype(np.float32)


def clip_log_spectrogram(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The full protocol on decoded samples: tile to 10 s, clip to [-1, 1], log spectrogram.

    Always (257, 1004) float32.
    """
    y = np.clip(tile_to_length(y, sr * CLIP_SECONDS), -1.0, 1.0)
    s = log_spectrogram(y, sr)
    if sr == SAMPLE_RATE:
        assert s.shape == SPECTROGRAM_SHAPE, s.shape
    return s

"""data_prep.audio against scipy.signal.spectrogram and the authors' pipeline."""
import numpy as np
import pytest
import scipy.signal

from data_prep import audio, testing


def _authors_reference(y, sr=16_000):
    """The authors' audio code, with scipy: tile to 10 s, clip, PSD, log, standardise."""
    y = np.tile(y, -(-sr * 10 // len(y)))[:sr * 10]
    y = np.clip(y, -1.0, 1.0)
    _, _, s = scipy.signal.spectrogram(y, sr, nperseg=512, noverlap=353)
    s = np.log(s + 1e-7)
    return (s - s.mean()) / (s.std() + 1e-9)


def _psd_reference(y, sr=16_000, n=512, hop=159):
    """The PSD written out in numpy, independently of scipy: frames of 512 every 159 samples,
    each frame's mean removed, a periodic Tukey(0.25) window, |rfft|^2 / (sr * sum(w^2)), bins
    1..n/2-1 doubled (one-sided; the Nyquist bin of an even n is not)."""
    m = n + 1  # periodic window: the symmetric one of n + 1 points without its last
    width = int(np.floor(0.25 * (m - 1) / 2))
    k = np.arange(m)
    w = np.ones(m)
    w[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * k[:width + 1] / (0.25 * (m - 1)))))
    tail = k[m - width - 1:]
    w[m - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / 0.25 + 1 + 2.0 * tail / (0.25 * (m - 1)))))
    w = w[:n]
    starts = np.arange(1 + (len(y) - n) // hop) * hop
    frames = np.stack([y[s:s + n] for s in starts])
    frames = frames - frames.mean(axis=1, keepdims=True)
    psd = np.abs(np.fft.rfft(frames * w, axis=1)).T ** 2 / (sr * np.sum(w ** 2))
    psd[1:-1] *= 2.0
    return psd


def test_power_spectrogram_matches_the_written_out_psd():
    y = np.random.default_rng(0).normal(0, 0.3, 160_000)
    ours = audio.power_spectrogram(y)
    ref = _psd_reference(y)
    assert ours.shape == ref.shape == (257, 1004) and ours.dtype == np.float64
    # same quantity up to float64 round-off
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)


def test_power_spectrogram_keeps_scipy_detrend_and_one_sided_scaling():
    # a DC offset is removed per segment (detrend="constant"); the Nyquist bin is not doubled
    t = np.arange(16_000) / 16_000
    y = 0.5 + 0.1 * np.cos(np.pi * 16_000 * t)  # DC + Nyquist
    np.testing.assert_allclose(audio.power_spectrogram(y), _psd_reference(y), rtol=1e-9, atol=1e-20)
    # float32 samples are computed in float64 (as the stored spectrograms always were)
    y32 = np.random.default_rng(2).normal(0, 0.3, 16_000).astype(np.float32)
    np.testing.assert_allclose(audio.power_spectrogram(y32), _psd_reference(y32.astype(np.float64)), rtol=1e-9)


def test_clip_log_spectrogram_is_the_authors_protocol():
    y = np.random.default_rng(1).uniform(-1.2, 1.2, 11_000).astype(np.float32)  # 0.69 s, clips at +-1
    ours = audio.clip_log_spectrogram(y)
    assert ours.shape == (257, 1004) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _authors_reference(y.astype(np.float64)), atol=1e-4, rtol=0)
    assert abs(ours.mean()) < 1e-5 and abs(ours.std() - 1) < 1e-4


def test_tile_to_length_repeats_and_truncates():
    y = np.arange(3.0)
    np.testing.assert_array_equal(audio.tile_to_length(y, 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(audio.tile_to_length(np.arange(10.0), 4), [0, 1, 2, 3])
    with pytest.raises(audio.AudioError):
        audio.tile_to_length(np.zeros(0), 4)


def _peak_hz(y, sr=16_000):
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return np.argmax(spec) * sr / len(y)


def test_load_wav_resamples_to_16k(tmp_path):
    path = testing.write_wav(tmp_path / "a.wav", seconds=0.5, sr=48_000, freq=1000.0, channels=2)
    y = audio.load_audio(path)
    assert y.dtype == np.float32 and y.shape == (8000,)
    assert abs(_peak_hz(y) - 1000) < 10


@pytest.mark.parametrize("ext", ["mp4", "flv"])
def test_load_audio_from_video_container(tmp_path, ext):
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=1.0, fps=25, sr=44_100, freq=600.0)
    y = audio.load_audio(path)
    assert y.dtype == np.float32
    assert abs(len(y) - 16_000) < 2_500  # codec priming / padding only
    assert abs(_peak_hz(y) - 600) < 10


def test_load_audio_crops_to_window(tmp_path):
    path = testing.write_wav(tmp_path / "a.wav", seconds=2.0, sr=16_000)
    assert audio.load_audio(path, start=0.5, end=1.25).shape == (12_000,)
    with pytest.raises(audio.AudioError, match="no audio samples"):
        audio.load_audio(path, start=3.0, end=4.0)


@pytest.mark.parametrize("name,data", [("empty.wav", b""), ("bad.wav", b"RIFF not really"),
                                       ("bad.mp4", b"\x00\x00\x00\x18ftypmp42 garbage" * 4)])
def test_bad_audio_names_the_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(audio.AudioError, match=name):
        audio.load_audio(path)


def test_video_without_audio_stream_is_an_error(tmp_path):
    path = testing.write_video(tmp_path / "silent.mp4", seconds=0.5, audio=False)
    with pytest.raises(audio.AudioError, match="no audio stream"):
        audio.load_audio(path)


def test_wav_cut_short_is_truncated_not_a_shorter_sound(tmp_path):
    # soundfile reads a WAV cut to a third of its bytes without complaint, as 0.67 s of sound
    path = testing.write_wav(tmp_path / "a.wav", seconds=2.0, sr=16_000)
    assert audio.load_audio(path).shape == (32_000,)
    cut = testing.truncate(path, 1 / 3, tmp_path / "cut.wav")
    with pytest.raises(audio.AudioError, match=r"cut\.wav: truncated: the data chunk declares 2\.00 s") as e:
        audio.load_audio(cut)
    assert e.value.reason == "truncated_media"


@pytest.mark.parametrize("ext", ["flv", "mp4"])
def test_audio_of_a_container_cut_short_is_truncated(tmp_path, ext):
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=3.0, fps=25, faststart=ext == "mp4")
    assert abs(len(audio.load_audio(path)) - 3 * 16_000) < 2_500  # whole: 3 s, give or take codec priming
    cut = testing.truncate(path, 1 / 3, tmp_path / f"cut.{ext}")
    with pytest.raises(audio.AudioError, match=rf"cut\.{ext}: truncated") as e:
        audio.load_audio(cut)
    assert e.value.reason == "truncated_media"


@pytest.mark.parametrize("ext", ["flv", "mp4"])
def test_audio_shorter_than_the_video_is_not_truncation(tmp_path, ext):
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=3.0, fps=25, audio_seconds=2.0)
    assert abs(len(audio.load_audio(path)) - 2 * 16_000) < 2_500

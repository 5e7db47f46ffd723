"""data_prep.video: which frames are kept (1 per second on real timestamps), and their JPEGs."""
import io
import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from data_prep import testing, video

NTSC = Fraction(30000, 1001)


def _times(fps, seconds):
    return [float(Fraction(i) / fps) for i in range(int(seconds * fps))]


def test_one_frame_per_second_uses_the_fractional_rate():
    keep = video.select_frames(_times(NTSC, 40), min_frames=3)
    expected = [math.ceil(s * NTSC) for s in range(40)]
    assert keep == expected
    assert keep[:4] == [0, 30, 60, 90]
    assert keep[34] == 1019  # a rate rounded to 30 would give 1020, one truncated to 29 gives 986


def test_one_frame_per_second_at_12_5_fps():
    assert video.select_frames(_times(Fraction(25, 2), 5), min_frames=3) == [0, 13, 25, 38, 50]


def test_short_clips_get_min_frames_evenly_spaced():
    times = [float(Fraction(i) / NTSC) for i in range(30)]  # 30 frames, all in second 0
    assert video.select_frames(times, min_frames=3) == [0, 14, 29]
    assert video.select_frames(times[:2], min_frames=3) == [0, 1]  # fewer frames than asked: all
    assert video.select_frames([], min_frames=3) == []


def test_event_window_keeps_frames_inside_it():
    times = _times(Fraction(25), 10)
    assert video.select_frames(times, start=2, end=5, min_frames=3) == [50, 75, 100]
    ten = video.select_frames(times, start=2, end=5, min_frames=10)
    assert len(ten) == 10 and min(ten) == 50 and max(ten) == 124


def _decoded_indices(jpegs):
    return [testing.read_frame_index(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))) for b in jpegs]


@pytest.mark.parametrize("ext,fps,seconds,expected", [
    ("flv", NTSC, 4.0, [0, 30, 60, 90]),
    ("mp4", NTSC, 4.0, [0, 30, 60, 90]),
    ("mp4", Fraction(25, 2), 4.0, [0, 13, 25, 38]),
    ("flv", NTSC, 1.0, [0, 14, 29]),
])
def test_extract_frames_from_a_real_file(tmp_path, ext, fps, seconds, expected):
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=seconds, fps=fps, audio=ext == "mp4")
    jpegs, idx, times = video.extract_frames(path, min_frames=3, short_side=None)
    assert idx == expected
    assert _decoded_indices(jpegs) == expected  # the pictures themselves are those frames
    np.testing.assert_allclose(times, [float(Fraction(i) / fps) for i in expected], atol=1e-3)
    assert all(b[:3] == b"\xff\xd8\xff" for b in jpegs)  # JPEG


def test_extract_frames_resizes_the_shorter_side(tmp_path):
    path = testing.write_video(tmp_path / "v.mp4", seconds=1.0, fps=25, width=64, height=48, audio=False)
    jpegs, _, _ = video.extract_frames(path, short_side=96)
    assert Image.open(io.BytesIO(jpegs[0])).size == (128, 96)


def test_extract_frames_in_an_event_window(tmp_path):
    path = testing.write_video(tmp_path / "v.mp4", seconds=4.0, fps=25, audio=False)
    jpegs, idx, times = video.extract_frames(path, start=1, end=3, min_frames=10, short_side=None)
    assert len(idx) == 10 and idx[0] == 25 and idx[-1] == 74
    assert _decoded_indices(jpegs) == idx
    assert all(1 - 1e-6 <= t < 3 for t in times)


@pytest.mark.parametrize("data", [b"", b"FLV\x01 not a video" * 8])
def test_bad_video_names_the_file(tmp_path, data):
    path = tmp_path / "broken.flv"
    path.write_bytes(data)
    with pytest.raises(video.VideoError, match="broken.flv"):
        video.extract_frames(path)


def test_truncated_video_is_an_error(tmp_path):
    path = testing.write_video(tmp_path / "v.mp4", seconds=3.0, fps=25, audio=False)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the moov atom is at the end: unreadable
    with pytest.raises(video.VideoError, match="cut.mp4"):
        video.extract_frames(cut)


def test_window_outside_the_video_is_an_error(tmp_path):
    path = testing.write_video(tmp_path / "v.mp4", seconds=1.0, fps=25, audio=False)
    with pytest.raises(video.VideoError, match="no frame in"):
        video.extract_frames(path, start=5, end=8)


@pytest.mark.parametrize("fraction", [1 / 3, 0.8])
@pytest.mark.parametrize("ext,with_audio,faststart", [("flv", False, False), ("flv", True, False),
                                                      ("mp4", True, True)])
def test_video_cut_short_is_truncated_not_a_shorter_clip(tmp_path, ext, with_audio, faststart, fraction):
    # 3 s at 25 fps: whole, one frame per second at 0, 1, 2 s. Cut to a third (or 80 %) of its bytes
    # it still opens, and an FLV still decodes its first second: kept, its 3 frames would be spread
    # over what is left instead. An MP4 with its index in front (faststart) also opens when cut.
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=3.0, fps=25, audio=with_audio, faststart=faststart)
    _, idx, times = video.extract_frames(path, short_side=None)
    assert idx == [0, 25, 50]
    np.testing.assert_allclose(times, [0, 1, 2], atol=1e-3)
    cut = testing.truncate(path, fraction, tmp_path / f"cut.{ext}")
    with pytest.raises(video.VideoError, match=rf"cut\.{ext}: truncated: .* of the 3\.0\d s") as e:
        video.extract_frames(cut)
    assert e.value.reason == "truncated_media"


@pytest.mark.parametrize("ext", ["flv", "mp4"])
@pytest.mark.parametrize("audio_seconds", [2.0, 3.5])
def test_audio_and_video_of_unequal_length_are_not_truncation(tmp_path, ext, audio_seconds):
    # an FLV declares one duration (the longer stream's): a shorter stream in it is not a cut file
    path = testing.write_video(tmp_path / f"v.{ext}", seconds=3.0, fps=25, audio_seconds=audio_seconds)
    _, idx, _ = video.extract_frames(path, short_side=None)
    assert idx == [0, 25, 50]

"""ucmkd_jax.data.pipeline: the streaming train pipeline over prepared shards.

The main fixture writes shards through the data_prep TFDS builder from a pre-filled clip cache
(no media decoding): 24 clips (16 train, 4 val, 4 test, 3 shard files), clip i with label i % 6,
a constant spectrogram i, and 3 + i % 3 frames of 64 x 48 where frame f is red 10 i, green
40 f + 20, and blue 220 on the left half, 30 on the right: every decoded row says which clip,
which frames and whether it was flipped. One test also reads shards that prepare.py converted
from raw media (tests/data/test_shards.py's fixture).
"""
import io
from pathlib import Path

import numpy as np
import pytest

try:
    import tensorflow_datasets as tfds
    from PIL import Image
    from data_prep import clips as clips_lib
    from data_prep import prepare, testing
    from data_prep.builders import CremaD
    from data_prep.datasets import CREMA_D_CLASSES, ClipTask, Index
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"tests/data/test_pipeline.py needs the data extra: pip install -e '.[data]' ({e})") from e

from ucmkd_jax.data import pipeline, shards, spec
from ucmkd_jax.data.regimes import distillation_pools, subsample

N_CLIPS, N_TRAIN, S = 24, 16, 32
MEAN, STD = np.array(spec.IMAGENET_MEAN), np.array(spec.IMAGENET_STD)


def _jpeg(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def n_frames(clip):
    return 3 + clip % 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    cache = out / "_cache"
    tasks = []
    for i in range(N_CLIPS):
        cid = f"{1001 + i}_DFA_{CREMA_D_CLASSES[i % 6]}_XX"
        split = "train" if i < N_TRAIN else ("val" if i < N_TRAIN + 4 else "test")
        frames = []
        for f in range(n_frames(i)):
            img = np.empty((48, 64, 3), np.uint8)
            img[..., 0], img[..., 1] = 10 * i, 40 * f + 20
            img[:, :32, 2], img[:, 32:, 2] = 220, 30
            frames.append(_jpeg(img))
        feats = clips_lib.ClipFeatures(np.full((257, 1004), i, np.float16), frames,
                                       np.arange(len(frames), dtype=np.int32), np.arange(len(frames), dtype=np.float32))
        clips_lib.save_cached(cache, cid, feats)
        tasks.append(ClipTask(key=cid, clip_id=cid, label=CREMA_D_CLASSES[i % 6], split=split, audio_path="-",
                              video_path="-", speaker=cid[:4]))
    builder = CremaD(index=Index("crema_d", CREMA_D_CLASSES, tasks, []), cache_dir=str(cache), data_dir=str(out),
                     config="speaker")
    tfds.disable_progress_bar()
    builder.download_and_prepare(download_dir=str(out / "_dl"), download_config=tfds.download.DownloadConfig(
        try_download_gcs=False, num_shards=3, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return out


def stream(data_dir, **kw):
    kw = {"student": "video", "teacher": "audio", "image_size": S, **kw}
    return pipeline.ShardStream("crema_d", data_dir, **kw)


def read_video(x):
    """(clip, frame indices (T,), flipped) of every row of a (B, T, S, S, 3) video batch."""
    px = (x * STD + MEAN) * 255.0
    left, right = px[:, :, 8:24, 2:10], px[:, :, 8:24, 22:30]
    clip = np.rint(left[..., 0].mean((2, 3)) / 10).astype(int)
    frame = np.rint((left[..., 1].mean((2, 3)) - 20) / 40).astype(int)
    flipped = left[..., 2].mean((2, 3)) < right[..., 2].mean((2, 3))
    assert (clip == clip[:, :1]).all() and (flipped == flipped[:, :1]).all()  # one clip, one flip per row
    return clip[:, 0], frame, flipped[:, 0]


def read_audio(x):
    return np.rint(x.reshape(len(x), -1).mean(1)).astype(int)


def epoch(st, e, batch_size=4, **kw):
    return list(st.epoch_batches(e, batch_size, **kw))


def test_pipeline_imports_no_tensorflow():
    head = Path(pipeline.__file__).read_text().split("def ", 1)[0]
    assert "import tensorflow" not in head


def test_batches_have_shapes_dtypes_labels_and_imagenet_normalisation(data_dir):
    st = stream(data_dir)
    assert st.num_samples == N_TRAIN and st.student_shape == (2, S, S, 3) and st.teacher_shape == (257, 1004, 1)
    batches = epoch(st, 0)
    assert len(batches) == N_TRAIN // 4
    for b in batches:
        assert sorted(b) == ["x_s", "x_t", "y_s", "y_t"]
        assert b["x_s"].shape == (4, 2, S, S, 3) and b["x_s"].dtype == np.float32
        assert b["x_t"].shape == (4, 257, 1004, 1) and b["x_t"].dtype == np.float32
        assert b["y_s"].dtype == np.int32 and b["y_t"].dtype == np.int32
        clip, frame, _ = read_video(b["x_s"])
        np.testing.assert_array_equal(b["y_s"], clip % 6)
        t_clip = read_audio(b["x_t"])
        np.testing.assert_array_equal(b["x_t"], np.broadcast_to(t_clip[:, None, None, None], b["x_t"].shape))
        np.testing.assert_array_equal(b["y_t"], t_clip % 6)
        # a constant colour c maps to (c / 255 - mean) / std (JPEG: a level or two)
        for r in range(4):
            for t in range(2):
                want = (np.array([10 * clip[r], 40 * frame[r, t] + 20]) / 255 - MEAN[:2]) / STD[:2]
                got = b["x_s"][r, t, 8:24, 2:10, :2].mean((0, 1))
                np.testing.assert_allclose(got, want, atol=0.04)
    seen = np.concatenate([read_video(b["x_s"])[0] for b in batches])
    assert sorted(seen) == list(range(N_TRAIN))  # one epoch: every student clip once


def test_positions_are_the_shard_order_of_load_shards(data_dir):
    mem = shards.load_shards("crema_d", data_dir, image_size=S, splits=("train",))
    a = mem.modalities["audio"]
    assert a.val is None and a.test is None and len(a.train) == N_TRAIN
    clip_at = a.train.x[:, 0, 0, 0].astype(int)  # position -> clip in load_shards' order
    np.testing.assert_array_equal(pipeline.train_labels("crema_d", data_dir), a.train.y)
    st = stream(data_dir, student="audio", teacher="video")
    s_order, t_order = st.epoch_order(0, 4)
    b = epoch(st, 0)
    np.testing.assert_array_equal(np.concatenate([read_audio(x["x_s"]) for x in b]), clip_at[s_order])
    np.testing.assert_array_equal(np.concatenate([read_video(x["x_t"])[0] for x in b]), clip_at[t_order])
    ev = shards.load_shards("crema_d", data_dir, image_size=S, splits=("val", "test"))
    assert ev.modalities["video"].train is None and len(ev.modalities["video"].val) == 4


def test_frames_are_redrawn_every_epoch_in_time_order_and_clips_flip(data_dir):
    st = stream(data_dir, teacher=None)
    draws = {}
    for e in range(3):
        (b,) = epoch(st, e, batch_size=N_TRAIN, with_teacher=False)
        assert sorted(b) == ["x_s", "y_s"]
        clip, frame, flipped = read_video(b["x_s"])
        for c, f, fl in zip(clip, frame, flipped):
            assert 0 <= f[0] < f[1] < n_frames(c)  # two distinct kept frames, in time order
            draws.setdefault(c, []).append((tuple(f), bool(fl)))
    assert any(len({d[0] for d in v}) > 1 for v in draws.values())  # a fresh frame draw per epoch
    flips = [d[1] for v in draws.values() for d in v]
    assert any(flips) and not all(flips)  # a random flip per clip
    (b,) = epoch(stream(data_dir, teacher=None, flip=False), 0, batch_size=N_TRAIN, with_teacher=False)
    assert not read_video(b["x_s"])[2].any()


def frame_flips(x):
    """(B, T) bool: which frames of a (B, T, S, S, 3) video batch are mirrored (blue 220 on the left)."""
    blue = (x[..., 2] * STD[2] + MEAN[2]) * 255.0
    return blue[:, :, 8:24, 2:10].mean((2, 3)) < blue[:, :, 8:24, 22:30].mean((2, 3))


def test_video_flip_frame_flips_each_frame_on_its_own_coin(data_dir):
    def run(**kw):
        (b,) = epoch(stream(data_dir, teacher=None, **kw), 1, batch_size=N_TRAIN, with_teacher=False)
        return b["x_s"]

    per_frame, plain = run(video_flip="frame"), run(video_flip="frame", flip=False)
    flips = frame_flips(per_frame)
    assert not frame_flips(plain).any()
    # the same frames as the unflipped decode (the flip key is separate from the frame draw's),
    # each one mirrored or not on its own
    for r in range(N_TRAIN):
        for t in range(2):
            want = plain[r, t, :, ::-1] if flips[r, t] else plain[r, t]
            np.testing.assert_array_equal(per_frame[r, t], want)
    assert (flips[:, 0] != flips[:, 1]).any() and (flips[:, 0] == flips[:, 1]).any()
    assert flips.any() and not flips.all()
    assert run(video_flip="frame").tobytes() == per_frame.tobytes()  # a function of (seed, epoch, clip)
    clip_flips = frame_flips(run())  # "clip" (the default): one coin for the clip's frames
    assert (clip_flips[:, 0] == clip_flips[:, 1]).all() and clip_flips.any() and not clip_flips.all()
    with pytest.raises(ValueError, match="video_flip must be one of"):
        stream(data_dir, video_flip="clips")


def test_video_crop_center_crop_reads_the_stored_frame_without_resize(data_dir):
    """64 x 48 stored frames, S = 32: the centre, rows 8..39 and columns 16..47, as decoded."""
    import tensorflow as tf

    b = tfds.builder_from_directory(str(shards.find_shard_dir("crema_d", data_dir)))
    jpegs = {}
    for split in ("train", "val"):
        for ex in tfds.as_numpy(b.as_dataset(split=split, shuffle_files=False,
                                             decoders={"frames": tfds.decode.SkipDecoding()})):
            jpegs[int(ex["clip_id"][:4]) - 1001] = ex["frames"]

    def want(clip, f):
        img = tf.io.decode_jpeg(jpegs[clip][f], channels=3).numpy().astype(np.float64)
        return (img[8:40, 16:48] - MEAN * 255) / (STD * 255)

    (batch,) = epoch(stream(data_dir, teacher=None, flip=False, video_crop="center_crop"), 0,
                     batch_size=N_TRAIN, with_teacher=False)
    clip, frame, _ = read_video(batch["x_s"])
    for r in range(N_TRAIN):
        for t in range(2):
            np.testing.assert_allclose(batch["x_s"][r, t], want(clip[r], frame[r, t]), rtol=0, atol=1e-5)
    val = shards.load_shards("crema_d", data_dir, image_size=S, video_crop="center_crop",
                             splits=("val",)).modalities["video"].val
    clip, frame, _ = read_video(val.x)  # val in shard order
    assert sorted(clip) == list(range(N_TRAIN, N_TRAIN + 4))
    for i, c in enumerate(clip):  # the middle two of each val clip
        np.testing.assert_array_equal(frame[i], (n_frames(c) - 2) // 2 + np.arange(2))
        for t in range(2):
            np.testing.assert_allclose(val.x[i, t], want(c, frame[i, t]), rtol=0, atol=1e-5)


def test_center_crop_larger_than_the_stored_frames_is_refused_with_the_fix(data_dir):
    msg = (r"crema_d/speaker/.*: clip 10\d\d_DFA_[A-Z]{3}_XX \(SPLIT\) has frames of 64 x 48 pixels, smaller than "
           r"the 64 x 64 crop of video_crop='center_crop'.*--short-side 0")
    with pytest.raises(ValueError, match=msg.replace("SPLIT", "train")):
        stream(data_dir, image_size=64, video_crop="center_crop")
    with pytest.raises(ValueError, match=msg.replace("SPLIT", "val")):
        shards.load_shards("crema_d", data_dir, image_size=64, video_crop="center_crop", splits=("val",))
    stream(data_dir, image_size=64, video_crop="center_crop", student="audio", teacher=None)  # no video: no check
    stream(data_dir, image_size=48, video_crop="center_crop", teacher=None)  # the shorter side fits exactly


def test_teacher_cache_fingerprint_of_a_video_stream_names_its_crop_and_flip(data_dir):
    from ucmkd_jax.data.base import ModalityData
    from ucmkd_jax.protocol import data_fingerprint

    def fp(**kw):
        return data_fingerprint(ModalityData("video", stream(data_dir, teacher=None, **kw), None, None))

    today = fp()
    assert today == fp(video_crop="resize_crop", video_flip="clip")
    assert len({today, fp(video_crop="center_crop"), fp(video_flip="frame"),
                fp(video_crop="center_crop", video_flip="frame"), fp(video_crop="center_crop", image_size=16)}) == 5
    audio = ModalityData("audio", stream(data_dir, student="audio", teacher=None, video_crop="center_crop"), None, None)
    assert data_fingerprint(audio) == data_fingerprint(ModalityData("audio", stream(data_dir, student="audio",
                                                                                    teacher=None), None, None))


def test_shard_config_chooses_the_prepared_config(data_dir):
    from ucmkd_jax.data import load_dataset

    with pytest.raises(FileNotFoundError, match=r"no config 'authors_raw' under .*found \['speaker'\]"):
        load_dataset("crema_d", str(data_dir), streaming=True, shard_config="authors_raw")
    with pytest.raises(FileNotFoundError, match="no config 'authors_raw'"):
        pipeline.protocol_streams("crema_d", data_dir, "a2v", config="authors_raw")


def test_same_seed_and_epoch_give_byte_identical_batches_whatever_the_parallelism(data_dir):
    one = epoch(stream(data_dir, parallel=1, seed=3), 1)
    many = epoch(stream(data_dir, parallel=4, seed=3), 1)
    for a, b in zip(one, many, strict=True):
        for k in a:
            assert a[k].tobytes() == b[k].tobytes()
    other = epoch(stream(data_dir, seed=4), 1)
    assert not np.array_equal(one[0]["x_s"], other[0]["x_s"])


def test_paired_stream_gives_partner_clips(data_dir):
    st = stream(data_dir, pairing="paired")
    for b in epoch(st, 0):
        np.testing.assert_array_equal(read_video(b["x_s"])[0], read_audio(b["x_t"]))
        np.testing.assert_array_equal(b["y_s"], b["y_t"])
    with pytest.raises(ValueError, match="same clips on both sides"):
        stream(data_dir, pairing="paired", student_indices=[0, 1, 2, 3], teacher_indices=[0, 1, 2, 4])


def test_unpaired_streams_have_their_own_orders_and_a_small_teacher_pool_cycles(data_dir):
    st = stream(data_dir, teacher_indices=[1, 4, 6, 9, 12])
    s_order, t_order = st.epoch_order(0, 4)
    assert not np.array_equal(s_order, t_order[:len(s_order)])
    cycles = [t_order[i:i + 5] for i in range(0, 15, 5)]
    assert all(sorted(c) == [1, 4, 6, 9, 12] for c in cycles)  # each cycle: a permutation of the pool
    assert len({tuple(c) for c in cycles}) > 1  # a fresh one each cycle
    full = stream(data_dir)
    s_full, t_full = full.epoch_order(0, 4)
    assert not np.array_equal(s_full, t_full) and sorted(t_full) == list(range(N_TRAIN))


def test_start_step_gives_the_tail_of_the_epoch(data_dir):
    st = stream(data_dir)
    full = epoch(st, 2)
    tail = epoch(st, 2, start_step=2)
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert epoch(st, 2, start_step=4) == []
    with pytest.raises(ValueError, match=r"start_step must be in \[0, 4\]"):
        epoch(st, 2, start_step=5)
    with pytest.raises(ValueError, match="no teacher modality"):
        epoch(stream(data_dir, teacher=None), 0)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 16\)"):
        stream(data_dir, student_indices=[0, 16])


@pytest.mark.parametrize("regime", ["medium", "hard"])
def test_protocol_streams_draw_the_in_memory_pools(data_dir, regime):
    """Subsample 0.75, then the regime: the streams' pools are the clips the in-memory path keeps."""
    mem = shards.load_shards("crema_d", data_dir, image_size=S, splits=("train",))
    audio, video = mem.modalities["audio"], mem.modalities["video"]
    t_sub, s_sub, _ = subsample(audio, video, 0.75, 5, paired=True)
    tp, sp, info = distillation_pools(t_sub.train, s_sub.train, regime, 5, paired=True, noise=0.0)
    t_pool = set(tp.x[:, 0, 0, 0].astype(int))
    s_pool = set(read_video(sp.x)[0])
    teacher, student, s_info = pipeline.protocol_streams("crema_d", data_dir, "a2v", seed=5, regime=regime,
                                                         subsample=0.75, noise=0.0, image_size=S)
    assert s_info["student_pool"] == info["student_pool"] and s_info["teacher_pool"] == info["teacher_pool"]
    clip_at = audio.train.x[:, 0, 0, 0].astype(int)
    assert teacher.teacher is None  # the teacher's pre-training stream: its subsampled train split
    np.testing.assert_array_equal(clip_at[teacher.student_indices], t_sub.train.x[:, 0, 0, 0])
    (b,) = epoch(student, 0, batch_size=student.num_samples)
    assert set(read_video(b["x_s"])[0]) == s_pool
    assert set(read_audio(b["x_t"])) == t_pool  # the teacher stream cycles over its pool
    assert not s_pool & t_pool


def test_hard_regime_noise_is_scaled_by_the_pool_std_and_fixed_per_clip(data_dir):
    pool = [0, 2, 3, 5, 7, 8, 11]
    st = stream(data_dir, teacher_indices=pool, teacher_noise=0.5, noise_sample=64)
    clip_at = shards.load_shards("crema_d", data_dir, image_size=S, splits=("train",)).modalities["audio"]
    values = clip_at.train.x[pool, 0, 0, 0]
    assert st.noise_std == pytest.approx(0.5 * np.std(values), rel=1e-6)  # the sample is the whole pool
    assert st.info["noise_std_estimated_on"] == len(pool)
    noise, repeats = {}, 0
    for e in range(2):  # 2 x 4 rows from a pool of 7: some clip comes back
        for x in epoch(st, e)[0]["x_t"]:
            c = read_audio(x[None])[0]
            assert c in values
            resid = x - c
            assert np.std(resid) == pytest.approx(st.noise_std, rel=0.02)
            if c in noise:
                np.testing.assert_array_equal(noise[c], resid)  # the same corruption every epoch
                repeats += 1
            noise[c] = resid
    assert repeats > 0


def test_prepared_raw_media_stream(tmp_path_factory):
    """Shards converted by prepare.py from raw .wav/.flv (the test_shards fixture's layout)."""
    raw = testing.make_crema_d(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out")
    assert prepare.main(["--dataset", "crema_d", "--raw-dir", str(raw), "--out-dir", str(out),
                         "--workers", "1", "--quiet"]) == 0
    st = pipeline.ShardStream("crema_d", out, student="video", teacher="audio", image_size=S)
    (b,) = epoch(st, 0, batch_size=st.num_samples)
    assert b["x_s"].shape == (st.num_samples, 2, S, S, 3) and np.isfinite(b["x_s"]).all()
    x = b["x_t"][..., 0]
    assert np.abs(x.mean((1, 2))).max() < 1e-2 and np.abs(x.std((1, 2)) - 1).max() < 1e-2  # standardised
    # the decoded frames are the stored JPEGs: ImageNet-normalised values of pixels in [0, 255]
    assert b["x_s"].min() >= (0 - MEAN.max()) / STD.min() - 1e-5 and b["x_s"].max() <= (1 - MEAN.min()) / STD.min()


def test_frames_stored_at_the_resize_size_skip_an_identity_resize():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(256, 300, 3), dtype=np.uint8)
    jpeg = tf.constant(_jpeg(img))
    got = shards.decode_frame(tf, jpeg, 224).numpy()  # round(224 * 256 / 224) = 256: no resize
    full = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), (256, 300), method="bilinear", antialias=True)
    want = (full.numpy()[16:240, 38:262] - MEAN * 255) / (STD * 255)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_run_cli_streams_a_real_dataset_end_to_end(data_dir, tmp_path):
    """experiments/run.py --dataset crema_d: fit's TrainStream hook end to end. The teacher
    pre-trains (ce) on its stream and the student distils (feature_kd: teacher batches from the
    stream) with the regime applied to the pools; val/test in memory."""
    from experiments import run

    out = tmp_path / "run"
    records = run.main(["--dataset", "crema_d", "--data-dir", str(data_dir), "--image-size", str(S), "--backbone", "resnet10",
                        "--width", "2",
                        "--epochs", "1", "--teacher-epochs", "1", "--seeds", "1", "--batch-size", "4",
                        "--eval-batch-size", "4",
                        "--methods", "feature_kd", "--unpaired", "medium", "--no-progress", "--out", str(out)])
    (fkd,) = records
    # 16 train clips, labels i % 6: medium halves each class (3,3,3,3,2,2 -> 2,2,2,2,1,1 for the student)
    assert fkd["student_train"] == 10 and fkd["teacher_pool"] == 6
    assert fkd["streaming"] is True and fkd["unpaired"] == "medium"
    assert fkd["epochs"] == 1 and 0.0 <= fkd["test_acc"] <= 1.0 and 0.0 <= fkd["teacher_test_acc"] <= 1.0
    assert (out / "results.md").exists()


def test_keep_last_ends_the_epoch_with_the_partial_batch(data_dir):
    st = stream(data_dir, teacher_indices=np.arange(6))  # a teacher pool shorter than the epoch: cycled
    kept = epoch(st, 1, batch_size=5, keep_last=True)
    assert [len(b["y_s"]) for b in kept] == [5, 5, 5, 1] and [len(b["y_t"]) for b in kept] == [5, 5, 5, 1]
    clips = np.concatenate([read_video(b["x_s"])[0] for b in kept])
    assert sorted(clips) == list(range(N_TRAIN))  # every train clip once
    dropped = epoch(st, 1, batch_size=5)
    assert [len(b["y_s"]) for b in dropped] == [5, 5, 5]
    np.testing.assert_array_equal(dropped[2]["x_s"], kept[2]["x_s"])  # the same order up to the remainder
    assert st.steps_per_epoch(5, keep_last=True) == 4

"""ucmkd_jax.data.shards: prepared TFRecord shards -> CrossModalDataset (tiny shards made here)."""
import io
from pathlib import Path

import numpy as np
import pytest

# data_prep/ is importable: pyproject sets pytest pythonpath = ["."] (the repository root)

try:
    import tensorflow_datasets as tfds
    from PIL import Image
    from data_prep import prepare, testing
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"tests/data/test_shards.py needs the data extra: pip install -e '.[data]' ({e})") from e

from ucmkd_jax.data import shards, spec
from ucmkd_jax.data.base import roles


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    raw = testing.make_crema_d(tmp_path_factory.mktemp("raw"))
    out = tmp_path_factory.mktemp("out")
    assert prepare.main(["--dataset", "crema_d", "--raw-dir", str(raw), "--out-dir", str(out),
                         "--workers", "1", "--quiet"]) == 0
    return out


def test_shards_import_no_tensorflow():
    src = Path(shards.__file__).read_text()
    head = src.split("def ", 1)[0]
    assert "import tensorflow" not in head and "import tensorflow_datasets" not in head


def test_load_shards_shapes_labels_and_pairing(prepared):
    ds = shards.load_shards("crema_d", prepared, image_size=32)
    assert ds.name == "crema_d" and ds.num_classes == 6 and ds.paired
    assert list(ds.class_names) == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    a, v = ds.modalities["audio"], ds.modalities["video"]
    assert a.sample_shape == (257, 1004, 1) and v.sample_shape == (2, 32, 32, 3)
    total = 0
    for s in ("train", "val", "test"):
        sa, sv = getattr(a, s), getattr(v, s)
        assert sa.x.dtype == np.float32 and sv.x.dtype == np.float32
        np.testing.assert_array_equal(sa.y, sv.y)  # the same clips in the same order
        total += len(sa)
    assert total == 9
    teacher, student = roles(ds, "a2v")
    assert teacher is a and student is v
    # audio is the per-clip standardised spectrogram (float16 on disk)
    x = a.test.x[0, ..., 0]
    assert abs(x.mean()) < 1e-2 and abs(x.std() - 1) < 1e-2


def test_video_is_middle_frames_centre_cropped_and_imagenet_normalised(prepared):
    ds = shards.load_shards("crema_d", prepared, image_size=224)  # stored short side 256: no resize
    b = tfds.builder_from_directory(str(shards.find_shard_dir("crema_d", prepared)))
    raw = list(tfds.as_numpy(b.as_dataset(split="test", shuffle_files=False,
                                          decoders={"frames": tfds.decode.SkipDecoding()})))
    mean, std = np.array(spec.IMAGENET_MEAN) * 255, np.array(spec.IMAGENET_STD) * 255
    for i, ex in enumerate(raw):
        n = len(ex["frames"])
        start = (n - 2) // 2
        for t in range(2):
            img = np.asarray(Image.open(io.BytesIO(ex["frames"][start + t])).convert("RGB"), np.float64)
            h, w, _ = img.shape
            assert min(h, w) == 256
            top, left = (h - 224) // 2, (w - 224) // 2
            ref = (img[top:top + 224, left:left + 224] - mean) / std
            # two JPEG decoders (PIL, TF) may differ by a level or two
            assert np.abs(ds.modalities["video"].test.x[i, t] - ref).mean() < 0.02
    assert ds.modalities["video"].test.x.shape[1:] == (2, 224, 224, 3)


def test_train_frames_are_a_fixed_seeded_choice(prepared):
    one = shards.load_shards("crema_d", prepared, image_size=16)
    two = shards.load_shards("crema_d", prepared, image_size=16)
    np.testing.assert_array_equal(one.modalities["video"].train.x, two.modalities["video"].train.x)
    mid = shards.load_shards("crema_d", prepared, image_size=16, train_frames="middle")
    np.testing.assert_array_equal(one.modalities["video"].test.x, mid.modalities["video"].test.x)


def test_split_fraction_and_errors(prepared, tmp_path):
    small = shards.load_shards("crema_d", prepared, image_size=16, split_fraction=0.5)
    full = shards.load_shards("crema_d", prepared, image_size=16)
    for s in ("train", "val", "test"):
        n = len(getattr(full.modalities["audio"], s))
        assert len(getattr(small.modalities["audio"], s)) == max(1, round(0.5 * n))
    with pytest.raises(FileNotFoundError, match="prepare.py --dataset ravdess"):
        shards.load_shards("ravdess", prepared)
    with pytest.raises(FileNotFoundError, match="no config 'authors'"):
        shards.load_shards("crema_d", prepared, config="authors")
    with pytest.raises(ValueError, match="split_fraction"):
        shards.load_shards("crema_d", prepared, split_fraction=0)
    # the version directory itself is accepted too
    vdir = shards.find_shard_dir("crema_d", prepared)
    assert vdir == Path(prepared) / "crema_d" / "speaker" / spec.SPEC_VERSION
    assert shards.find_shard_dir("crema_d", vdir) == vdir


def _tiny_jpeg(h=11, w=13):
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_center_crop_is_the_centre_of_the_stored_frame_and_resize_crop_is_unchanged():
    import tensorflow as tf

    jpeg = _tiny_jpeg()  # 13 x 11: odd margins 5 and 3 test torchvision's rounding
    # decoded once by TensorFlow (PIL upsamples the chroma of this noise differently), sliced by hand
    img = tf.io.decode_jpeg(jpeg, channels=3).numpy().astype(np.float64)
    mean, std = np.array(spec.IMAGENET_MEAN) * 255, np.array(spec.IMAGENET_STD) * 255
    top, left = int(round((11 - 8) / 2)), int(round((13 - 8) / 2))  # torchvision's center_crop: 2, 2
    want = (img[top:top + 8, left:left + 8] - mean) / std
    got = shards.decode_frame(tf, tf.constant(jpeg), 8, crop="center_crop").numpy()
    assert got.shape == (8, 8, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the default is today's: shorter side 11 -> round(8 * 256 / 224) = 9, (9, 11) resized, crop at (0, 1)
    default = shards.decode_frame(tf, tf.constant(jpeg), 8).numpy()
    assert default.tobytes() == shards.decode_frame(tf, tf.constant(jpeg), 8, crop="resize_crop").numpy().tobytes()
    full = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3), (9, 11), method="bilinear", antialias=True)
    np.testing.assert_allclose(default, (full.numpy()[0:8, 1:9] - mean) / std, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="crop must be one of"):
        shards.decode_frame(tf, tf.constant(jpeg), 8, crop="resize")


def test_center_crop_of_a_too_small_frame_says_to_prepare_raw_frames():
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"OUT/crema_d/speaker: a frame is smaller than the "
                                                             r"12 x 12 .*--short-side 0"):
        shards.decode_frame(tf, tf.constant(_tiny_jpeg()), 12, crop="center_crop", where="OUT/crema_d/speaker")


def test_center_crop_of_frames_resized_at_prep_is_flagged():
    """Frames stored at data_prep's default shorter side (256) were resized: a 224 centre crop of
    them is not the release's crop of a raw frame, and the note says so; raw frames pass."""
    from ucmkd_jax.data.shards import resized_frames_note
    note = resized_frames_note(256, 341, 224)
    assert "87.5% of the height" in note and "--short-side 0" in note
    assert resized_frames_note(360, 480, 224) is None

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

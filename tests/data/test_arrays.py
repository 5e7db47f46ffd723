"""ucmkd_jax.data.arrays: two labelled array datasets -> an unpaired CrossModalDataset.

Pure numpy: nothing here compiles. Every bad input has its own message."""
import warnings

import numpy as np
import pytest

from ucmkd_jax.data import roles
from ucmkd_jax.data.arrays import (DIRECTION, as_arrays, carve_validation, describe_arrays, load_arrays,
                                   make_arrays_dataset, read_npz)
from ucmkd_jax.data.base import ModalityData, Split

K = 3
SHAPES = {"vector": (12,), "image8": (8, 8, 1), "image32": (32, 32, 3), "frames": (2, 8, 8, 3)}


def side(shape, n=(48, 12, 12), splits=("train", "val", "test"), seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for s, m in zip(("train", "val", "test"), n):
        if s in splits:
            y = np.arange(m) % K
            out[f"x_{s}"] = (rng.normal(size=(m,) + shape) + y.reshape((-1,) + (1,) * len(shape))).astype(np.float32)
            out[f"y_{s}"] = y
    return out


def build(teacher, student, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean input raises no warning
        return make_arrays_dataset(teacher, student, log=None, **kw)


# ------------------------------------------------------------------------------------ good input
@pytest.mark.parametrize("form,kind", [("vector", "vector"), ("image8", "image"), ("image32", "image"),
                                       ("frames", "video")])
def test_kind_is_read_from_the_rank(form, kind):
    ds = build(side(SHAPES["vector"]), side(SHAPES[form]))
    t, s = roles(ds, DIRECTION)
    assert (t.modality, s.modality) == ("vector", kind)
    assert s.sample_shape == SHAPES[form] and s.train.x.dtype == np.float32 and s.train.y.dtype == np.int32
    assert ds.num_classes == K and not ds.paired and ds.notices == []
    assert [len(getattr(s, n)) for n in ("train", "val", "test")] == [48, 12, 12]


def test_npz_files_round_trip(tmp_path):
    t, s = side(SHAPES["frames"]), side(SHAPES["image32"], splits=("train", "test"))
    np.savez(tmp_path / "T.npz", **t)
    np.savez(tmp_path / "S.npz", **s)
    notices = []
    ds = load_arrays(tmp_path / "T.npz", tmp_path / "S.npz", log=notices.append)
    np.testing.assert_array_equal(ds.modalities["teacher"].test.x, t["x_test"])
    assert ds.sources == {"teacher": str(tmp_path / "T.npz"), "student": str(tmp_path / "S.npz")}
    assert len(notices) == 1 and "S.npz): no x_val" in notices[0] and notices == ds.notices


def test_missing_validation_is_carved_stratified_and_seeded():
    s = side(SHAPES["vector"], n=(60, 0, 0), splits=("train",))
    s["y_train"] = np.repeat(np.arange(K), [30, 20, 10])
    notices = []
    ds = make_arrays_dataset(None, s, log=notices.append)
    data = ds.modalities["student"]
    # 10% of each class (3, 2, 1), the rest for training, nothing lost or duplicated.
    assert np.bincount(data.val.y).tolist() == [3, 2, 1]
    assert np.bincount(data.train.y).tolist() == [27, 18, 9]
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert rows(data.val.x).isdisjoint(rows(data.train.x))
    assert rows(data.val.x) | rows(data.train.x) == rows(s["x_train"])
    assert "no x_val" in notices[0] and "stratified 10% validation split" in notices[0] and "6 of 60" in notices[0]
    assert "validation accuracy only" in notices[1]
    again = make_arrays_dataset(None, s, log=None).modalities["student"]
    np.testing.assert_array_equal(again.val.x, data.val.x)  # same seed, same split
    other = make_arrays_dataset(None, s, seed=1, log=None).modalities["student"]
    assert not np.array_equal(other.val.x, data.val.x)


def test_carve_keeps_singleton_classes_in_train():
    split = Split(np.arange(7, dtype=np.float32)[:, None], np.array([0, 0, 0, 0, 1, 1, 2]))
    train, val = carve_validation(split, 0.25, seed=0)
    assert np.bincount(val.y, minlength=3).tolist() == [1, 1, 0]
    assert np.bincount(train.y, minlength=3).tolist() == [3, 1, 1]


def test_student_without_test_reports_validation_only_teacher_without_test_is_allowed():
    notices = []
    ds = make_arrays_dataset(side(SHAPES["vector"], splits=("train", "val")),
                             side(SHAPES["image8"], splits=("train", "val")), log=notices.append)
    assert ds.modalities["student"].test is None and not ds.has_student_test
    assert notices == ["teacher data: no x_test, so the teacher's test accuracy is not reported",
                       "student data: no x_test, so the run reports validation accuracy only (no test accuracy)"]


def test_other_input_forms():
    s = side(SHAPES["vector"])
    for source in ((s["x_train"], s["y_train"]), Split(s["x_train"], s["y_train"])):
        arrays, where = as_arrays(source, "student")
        assert set(arrays) == {"x_train", "y_train"} and where == "student data"
    md = ModalityData("vector", Split(s["x_train"], s["y_train"]), Split(s["x_val"], s["y_val"]), None)
    ds = build(None, md)
    assert len(ds.modalities["student"].val) == 12 and list(ds.modalities) == ["student"]
    # uint8 images and integral float labels are accepted (cast to float32 / int32)
    img = {"x_train": np.full((6, 4, 4, 1), 255, np.uint8), "y_train": np.array([0., 1., 2., 0., 1., 2.]),
           "x_val": np.zeros((3, 4, 4, 1), np.uint8), "y_val": np.array([0, 1, 2])}
    got = build(None, img).modalities["student"]
    assert got.train.x.dtype == np.float32 and got.train.x.max() == 255.0 and got.train.y.tolist() == [0, 1, 2] * 2
    with pytest.raises(TypeError, match="expected a path to an .npz"):
        as_arrays(42, "teacher")


def test_num_classes_admits_a_class_absent_from_one_side():
    t = side(SHAPES["vector"])
    s = side(SHAPES["vector"])
    s["y_train"] = np.where(s["y_train"] == 2, 1, s["y_train"])
    for k in ("val", "test"):
        s[f"y_{k}"] = np.where(s[f"y_{k}"] == 2, 0, s[f"y_{k}"])
    with pytest.raises(ValueError, match="label sets differ"):
        make_arrays_dataset(t, s, log=None)
    with pytest.warns(UserWarning, match="no samples of class"):
        ds = make_arrays_dataset(t, s, num_classes=3, log=None)
    assert ds.num_classes == 3


# ------------------------------------------------------------------------------------ bad input
def _with(base, **changes):
    out = dict(base)
    for k, v in changes.items():
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    return out


GOOD = side(SHAPES["vector"])


@pytest.mark.parametrize("student,message", [
    (_with(GOOD, x_train=None), r"student data has no x_train \(it holds: x_test, x_val, y_test, y_train, y_val\)"),
    (_with(GOOD, y_train=None), r"student data has no y_train"),
    (_with(GOOD, y_val=None), r"has x_val but no y_val"),
    (_with(GOOD, x_test=None), r"has y_test but no x_test"),
    (_with(GOOD, x_train=np.zeros((48, 4, 4))), r"unsupported rank 3.*needs a channel axis: x\[\.\.\., None\]"),
    (_with(GOOD, x_train=np.zeros(48)), r"x_train has shape \(48,\), an unsupported rank 1"),
    (_with(GOOD, x_val=np.zeros((0, 12)), y_val=np.zeros(0, int)), r"x_val is empty"),
    (_with(GOOD, x_train=np.zeros((48, 0))), r"zero-size axis"),
    (_with(GOOD, x_test=GOOD["x_test"][:5]), r"x_test has 5 samples but y_test has 12 labels"),
    (_with(GOOD, x_val=np.zeros((12, 13), np.float32)), r"x_val has per-sample shape \(13,\) but x_train has \(12,\)"),
    (_with(GOOD, x_train=np.full((48, 12), "a")), r"x_train has dtype <U1: expected numbers"),
    (_with(GOOD, y_train=np.eye(3)[GOOD["y_train"]]), r"y_train has shape \(48, 3\).*one-hot labels"),
    (_with(GOOD, y_val=GOOD["y_val"] + 0.5), r"y_val holds non-integer label 0\.5 at index 0"),
    (_with(GOOD, y_train=np.where(np.arange(48) == 7, -1, GOOD["y_train"])),
     r"y_train has label -1 at index 7, outside 0\.\.2"),
    (_with(GOOD, x_val=np.where(np.arange(12)[:, None] == 4, np.nan, GOOD["x_val"])),
     r"x_val has NaN or infinite values in 1 sample\(s\), the first at index 4"),
    (_with(GOOD, x_train=np.where(np.arange(48)[:, None] >= 40, np.inf, GOOD["x_train"])),
     r"x_train has NaN or infinite values in 8 sample\(s\), the first at index 40"),
    (_with(GOOD, x_test=np.full((12, 12), 1e300)), r"x_test has NaN or infinite values.*beyond float32 range"),
])
def test_bad_student_input_is_named(student, message):
    with pytest.raises(ValueError, match=message):
        make_arrays_dataset(GOOD, student, log=None)


def test_mismatched_label_sets():
    four = _with(GOOD, y_train=np.arange(48) % 4)
    with pytest.raises(ValueError, match=r"label sets differ: teacher labels span 0\.\.3 \(K = 4\), student "
                                         r"labels span 0\.\.2 \(K = 3\)"):
        make_arrays_dataset(four, GOOD, log=None)


def test_labels_outside_the_given_k():
    with pytest.raises(ValueError, match=r"teacher data: y_train has label 2 at index 2, outside 0\.\.1 \(K = 2\)"):
        make_arrays_dataset(GOOD, GOOD, num_classes=2, log=None)


def test_single_class_is_refused():
    one = {"x_train": np.ones((4, 2)), "y_train": np.zeros(4, int), "x_val": np.ones((2, 2)), "y_val": np.zeros(2, int)}
    with pytest.raises(ValueError, match="at least 2 classes"):
        make_arrays_dataset(None, one, log=None)


def test_a_class_missing_from_a_split_warns_and_names_it():
    s = _with(GOOD, y_test=np.zeros(12, int))
    with pytest.warns(UserWarning, match=r"student data: the test split has no samples of class\(es\) \[1, 2\]"):
        ds = make_arrays_dataset(GOOD, s, log=None)
    assert ds.num_classes == K  # still usable


def test_unknown_arrays_warn():
    with pytest.warns(UserWarning, match="ignoring array.*x_extra"):
        ds = make_arrays_dataset(GOOD, _with(GOOD, x_extra=np.zeros(3)), log=None)
    assert ds.num_classes == K  # the known arrays are still used


def test_npz_without_x_train_and_unreadable_files(tmp_path):
    np.savez(tmp_path / "T.npz", **GOOD)
    np.savez(tmp_path / "S.npz", features=np.zeros((4, 2)), labels=np.zeros(4))
    with pytest.raises(ValueError, match=r"student data \(.*S\.npz\) has no x_train or y_train \(it holds: "
                                         r"features, labels\)"):
        load_arrays(tmp_path / "T.npz", tmp_path / "S.npz", log=None)
    with pytest.raises(ValueError, match=r"teacher data: no such file .*missing\.npz"):
        load_arrays(tmp_path / "missing.npz", tmp_path / "S.npz", log=None)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"not a readable \.npz of plain arrays"):
        read_npz(tmp_path / "text.npz", "student")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"single array"):
        read_npz(tmp_path / "one.npy", "student")
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=np.zeros(1))
    with pytest.raises(ValueError, match=r"not a readable \.npz of plain arrays"):
        load_arrays(tmp_path / "T.npz", tmp_path / "obj.npz", log=None)


def test_describe_arrays_names_files_by_hash_and_sizes(tmp_path):
    import hashlib

    np.savez(tmp_path / "T.npz", **GOOD)
    np.savez(tmp_path / "S.npz", **_with(GOOD, x_val=None, y_val=None))
    desc = describe_arrays(load_arrays(tmp_path / "T.npz", tmp_path / "S.npz", log=None))
    assert desc["num_classes"] == K and len(desc["notices"]) == 1
    assert desc["student"] == {"file": str(tmp_path / "S.npz"),
                               "sha256": hashlib.sha256((tmp_path / "S.npz").read_bytes()).hexdigest(),
                               "sizes": {"train": 42, "val": 6, "test": 12}}  # 2 of 16 per class
    assert desc["teacher"]["sizes"] == {"train": 48, "val": 12, "test": 12}

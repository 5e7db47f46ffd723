"""End to end: tiny raw datasets -> prepare.py -> TFRecord shards -> read back."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import clips as clips_lib
from data_prep import prepare, testing
from ucmkd_jax.data.spec import FEATURES, SPEC_VERSION

from data_prep.testing import AVE_CLASSES, CORRUPT_ID, CREMA_D_TINY


def _run(raw, out, *extra):
    return prepare.main(["--raw-dir", str(raw), "--out-dir", str(out), "--workers", "1", "--quiet", *extra])


def _read(version_dir, split):
    b = tfds.builder_from_directory(str(version_dir))
    ds = b.as_dataset(split=split, shuffle_files=False, decoders={"frames": tfds.decode.SkipDecoding()})
    return b, list(tfds.as_numpy(ds))


def _shard_bytes(version_dir):
    return {p.name: p.read_bytes() for p in sorted(Path(version_dir).glob("*.tfrecord*"))}


@pytest.fixture(scope="module")
def crema_d_out(crema_d_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("crema_d_out")
    rc = _run(crema_d_raw, out, "--dataset", "crema_d")
    return rc, out / "crema_d" / "speaker" / SPEC_VERSION


def test_crema_d_end_to_end_shards(crema_d_out):
    rc, vdir = crema_d_out
    b, train = _read(vdir, "train")
    assert b.info.features["label"].names == ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
    assert set(b.info.features) == set(FEATURES)  # what the readers of ucmkd_jax.data look up
    sizes = {s: b.info.splits[s].num_examples for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 8 and all(n > 0 for n in sizes.values())  # 9 clips, 1 corrupt
    seen = {}
    for s in ("train", "val", "test"):
        for ex in _read(vdir, s)[1]:
            cid = ex["clip_id"].decode()
            seen[cid] = s
            assert b.info.features["label"].int2str(ex["label"]) == cid.split("_")[2]
            assert ex["speaker"].decode() == cid[:4]
            assert ex["spectrogram"].shape == (257, 1004) and ex["spectrogram"].dtype == np.float16
            assert abs(float(ex["spectrogram"].astype(np.float32).mean())) < 1e-2
            assert len(ex["frames"]) >= 3 and len(ex["frame_times"]) == len(ex["frames"])
            assert all(f[:3] == b"\xff\xd8\xff" for f in ex["frames"])
    assert CORRUPT_ID not in seen
    speakers = {s: {c[:4] for c, sp in seen.items() if sp == s} for s in ("train", "val", "test")}
    assert not (speakers["train"] & speakers["test"] or speakers["train"] & speakers["val"])


def test_crema_d_report_lists_every_skip_and_exits_nonzero_over_the_limit(crema_d_out):
    rc, vdir = crema_d_out
    # 4 bad of 12 (corrupt .flv, bad name, unknown label, missing .flv) > the default 5%: exit 3,
    # shards still written
    assert rc == 3
    report = json.loads((vdir / "prep_report.json").read_text())
    assert report["written"] == {s: len(_read(vdir, s)[1]) for s in ("train", "val", "test")}
    sk = report["skipped"]
    assert sk["corrupt_media"]["ids"] == [CORRUPT_ID]
    assert sk["corrupt_media"]["details"][0]["path"].endswith(f"VideoFlash/{CORRUPT_ID}.flv")
    assert sk["malformed_name"]["ids"] == ["not_a_crema_name"]
    assert sk["unknown_label"]["ids"] == ["1007_DFA_XYZ_XX"]
    assert sk["missing_file"]["ids"] == ["1008_DFA_NEU_XX"]
    assert report["num_bad"] == 4 and report["bad_fraction"] == pytest.approx(4 / 12)
    assert report["spectrogram"] == {"shape": [257, 1004], "dtype": "float16"}
    assert not (vdir.parents[2] / "_cache" / "crema_d").exists()  # cache removed after success


def test_bad_fraction_limit_can_be_raised(crema_d_raw, tmp_path, capsys):
    assert _run(crema_d_raw, tmp_path, "--dataset", "crema_d", "--max-bad-fraction", "0.5") == 0
    out = capsys.readouterr().out
    assert re.search(r"written: train \d+, val \d+, test \d+ \(total 8\)", out)
    assert "corrupt_media: 1" in out and CORRUPT_ID in out
    # a second run finds the prepared dataset and leaves it alone
    assert _run(crema_d_raw, tmp_path, "--dataset", "crema_d", "--max-bad-fraction", "0.5") == 0
    assert "already prepared" in capsys.readouterr().out


def test_missing_raw_dir_and_missing_authors_lists_are_clear_errors(tmp_path, crema_d_clean_raw, capsys):
    assert _run(tmp_path / "nowhere", tmp_path / "out", "--dataset", "crema_d") == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "AudioWAV" in err and "VideoFlash" in err
    assert _run(crema_d_clean_raw, tmp_path / "out", "--dataset", "crema_d", "--split", "authors",
                "--split-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "crema_d_train.csv" in err and "--split speaker" in err
    assert not (tmp_path / "out").exists()


def test_interrupted_run_resumes_to_byte_identical_shards(crema_d_clean_raw, tmp_path, monkeypatch):
    clean = tmp_path / "clean"
    assert _run(crema_d_clean_raw, clean, "--dataset", "crema_d") == 0
    expected = _shard_bytes(clean / "crema_d" / "speaker" / SPEC_VERSION)
    assert len(expected) == 3

    resumed = tmp_path / "resumed"
    real, calls = clips_lib.run_task, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(clips_lib, "run_task", interrupted)
    assert _run(crema_d_clean_raw, resumed, "--dataset", "crema_d") == 130
    monkeypatch.setattr(clips_lib, "run_task", real)
    cache = resumed / "_cache" / "crema_d" / "speaker"
    assert len(list(cache.glob("*.npz"))) == 3
    assert not (resumed / "crema_d" / "speaker" / SPEC_VERSION).exists()  # nothing looks complete
    # a crash while writing shards leaves TFDS's temporary directory: it must not be mistaken
    # for output, and is cleared on the next run
    stale = resumed / "crema_d" / "speaker" / f"incomplete.ABC123_{SPEC_VERSION}"
    stale.mkdir(parents=True)
    (stale / "crema_d-train.tfrecord-00000-of-00001").write_bytes(b"partial")
    assert _run(crema_d_clean_raw, resumed, "--dataset", "crema_d", "--workers", "2") == 0
    assert not stale.exists()
    assert _shard_bytes(resumed / "crema_d" / "speaker" / SPEC_VERSION) == expected


def test_ravdess_end_to_end(ravdess_raw, tmp_path):
    assert _run(ravdess_raw, tmp_path, "--dataset", "ravdess") == 0
    vdir = tmp_path / "ravdess" / "speech" / SPEC_VERSION
    report = json.loads((vdir / "prep_report.json").read_text())
    assert sum(report["written"].values()) == 18 and report["skipped"] == {}
    b, _ = _read(vdir, "train")
    assert len(b.info.features["label"].names) == 8
    actors = {}
    for s in ("train", "val", "test"):
        for ex in _read(vdir, s)[1]:
            cid = ex["clip_id"].decode()
            assert cid.startswith("01-01-") and ex["speaker"].decode() == cid[-2:]
            assert b.info.features["label"].int2str(ex["label"]) == \
                ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"][int(cid[6:8]) - 1]
            assert ex["spectrogram"].shape == (257, 1004) and len(ex["frames"]) >= 3
            actors.setdefault(s, set()).add(cid[-2:])
    assert not (actors["train"] & actors["test"])


def test_ave_end_to_end_crops_to_the_event(ave_raw, tmp_path):
    rc = _run(ave_raw, tmp_path, "--dataset", "ave", "--max-bad-fraction", "0.9")
    assert rc == 0
    vdir = tmp_path / "ave" / "official" / SPEC_VERSION
    report = json.loads((vdir / "prep_report.json").read_text())
    assert report["written"] == {"train": 3, "val": 1, "test": 2}
    assert set(report["skipped"]) == {"duplicate_row", "in_two_splits", "conflicting_labels",
                                      "zero_length_event", "missing_file", "malformed_line", "unknown_label"}
    assert report["num_bad"] == 6  # duplicate_row / in_two_splits are bookkeeping, not bad
    b, train = _read(vdir, "train")
    assert b.info.features["label"].names == sorted(AVE_CLASSES)
    vid_b = next(ex for ex in train if ex["clip_id"] == b"vidB")  # event [1, 3) s
    assert len(vid_b["frames"]) == 10
    assert vid_b["frame_times"].min() >= 1 - 1e-3 and vid_b["frame_times"].max() < 3


def test_vggsound_end_to_end_with_a_class_subset(vggsound_raw, tmp_path):
    assert _run(vggsound_raw, tmp_path, "--dataset", "vggsound", "--classes", "2", "--max-bad-fraction", "0.5") == 0
    vdir = tmp_path / "vggsound" / "classes2" / SPEC_VERSION
    report = json.loads((vdir / "prep_report.json").read_text())
    assert report["class_names"] == ["cat meowing", "dog barking"]
    assert report["skipped"]["missing_file"]["ids"] == ["kkkkkkkkkkk_000007"]
    assert sum(report["written"].values()) == 8 and report["written"]["val"] == 1
    _, test = _read(vdir, "test")
    assert sorted(ex["clip_id"].decode() for ex in test) == ["ggggggggggg_000000", "hhhhhhhhhhh_000000"]
    assert all(len(ex["frames"]) == 10 for ex in test)


def _report(version_dir):
    return json.loads((Path(version_dir) / "prep_report.json").read_text())


def _clip_ids(version_dir):
    return {ex["clip_id"].decode() for s in ("train", "val", "test") for ex in _read(version_dir, s)[1]}


def test_truncated_media_is_skipped_and_reported(crema_d_clean_raw, tmp_path):
    raw = shutil.copytree(crema_d_clean_raw, tmp_path / "raw")
    # cut to a third of their bytes, as an interrupted copy leaves them: the 2.3 s .flv of one
    # clip, the 1.2 s .wav of another (CREMA_D_TINY)
    cut_video, cut_audio = "1002_ITS_NEU_XX", "1001_DFA_ANG_XX"
    testing.truncate(raw / "VideoFlash" / f"{cut_video}.flv", 1 / 3)
    testing.truncate(raw / "AudioWAV" / f"{cut_audio}.wav", 1 / 3)
    assert _run(raw, tmp_path / "out", "--dataset", "crema_d", "--max-bad-fraction", "0.5") == 0
    vdir = tmp_path / "out" / "crema_d" / "speaker" / SPEC_VERSION
    report = _report(vdir)
    cut = report["skipped"]["truncated_media"]
    assert cut["count"] == 2 and cut["ids"] == [cut_audio, cut_video]
    paths = {d["clip_id"]: d["path"] for d in cut["details"]}
    assert paths[cut_audio].endswith(f"AudioWAV/{cut_audio}.wav")
    assert paths[cut_video].endswith(f"VideoFlash/{cut_video}.flv")
    assert all("truncated" in d["detail"] for d in cut["details"])
    assert set(report["skipped"]) == {"truncated_media"} and report["num_bad"] == 2  # counted as bad
    assert sum(report["written"].values()) == len(CREMA_D_TINY) - 2
    assert _clip_ids(vdir) == {cid for cid, _ in CREMA_D_TINY} - {cut_audio, cut_video}


def test_empty_and_small_splits_are_warned_about(tmp_path, capsys):
    # 3 actors held out 70/10/20 by actor: round(2.1) = 2 train, round(2.4) - 2 = 0 val, 1 test;
    # 2 clips each (CREMA_D_TINY's first 6)
    raw = testing.make_crema_d(tmp_path / "raw", CREMA_D_TINY[:6])
    assert _run(raw, tmp_path / "out", "--dataset", "crema_d") == 0  # warnings do not fail the run
    report = _report(tmp_path / "out" / "crema_d" / "speaker" / SPEC_VERSION)
    assert report["written"] == {"train": 4, "val": 0, "test": 2}
    warnings = report["warnings"]
    assert len(warnings) == 3
    assert "'val' is empty" in warnings[1]
    assert "'train' has 4 clips" in warnings[0] and "'test' has 2 clips" in warnings[2]
    assert all("fewer than --min-split-clips 64" in w for w in (warnings[0], warnings[2]))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(err) == 3 and all("crema_d/speaker" in line and "prep_report.json" in line for line in err)
    # below the threshold only the empty split is left to warn about
    assert _run(raw, tmp_path / "out1", "--dataset", "crema_d", "--min-split-clips", "1") == 0
    report = _report(tmp_path / "out1" / "crema_d" / "speaker" / SPEC_VERSION)
    assert len(report["warnings"]) == 1 and "'val' is empty" in report["warnings"][0]


def test_a_non_default_short_side_gets_its_own_config_and_cache(crema_d_clean_raw, tmp_path, monkeypatch):
    """Frames of another size never reuse the default's folder or feature cache (stage 1 is
    stubbed: only the folders main chooses are checked)."""
    import argparse

    def name(**kw):
        args = dict(dataset="crema_d", split="speaker", channel="speech", classes=None, seed=0, short_side=256)
        return prepare.config_name(argparse.Namespace(**{**args, **kw}))

    assert name() == "speaker" and name(short_side=0) == "speaker_raw" and name(short_side=320) == "speaker_s320"
    assert name(split="authors", short_side=0, seed=2) == "authors_seed2_raw"
    assert name(dataset="ave", short_side=0, seed=2) == "official_raw"  # AVE's split is official: no seed
    out = tmp_path / "out"
    default = out / "crema_d" / "speaker" / SPEC_VERSION
    default.mkdir(parents=True)
    (default / "dataset_info.json").write_text("{}")  # the default is prepared already
    seen = []

    def stage1(tasks, cache_dir, workers, short_side, quiet=False, desc=""):
        seen.append((cache_dir, short_side))
        raise KeyboardInterrupt  # main stops there, exit 130

    monkeypatch.setattr(prepare, "process_all", stage1)
    assert _run(crema_d_clean_raw, out, "--dataset", "crema_d") == 0  # "already prepared"
    assert _run(crema_d_clean_raw, out, "--dataset", "crema_d", "--short-side", "0") == 130
    assert _run(crema_d_clean_raw, out, "--dataset", "crema_d", "--short-side", "96") == 130
    assert seen == [(out / "_cache" / "crema_d" / "speaker_raw", None), (out / "_cache" / "crema_d" / "speaker_s96", 96)]
    assert _run(crema_d_clean_raw, out, "--dataset", "crema_d", "--short-side", "-1") == 2

"""Raw layouts, label parsing, splits and anomaly reporting (data_prep.datasets; no TensorFlow)."""
import collections

import pytest

from data_prep import datasets as D
from data_prep import testing

from data_prep.testing import CORRUPT_ID


def _reasons(index):
    out = collections.defaultdict(set)
    for s in index.skipped:
        out[s.reason].add(s.clip_id)
    return out


def test_crema_d_labels_speakers_and_reported_skips(crema_d_raw):
    idx = D.index_crema_d(crema_d_raw)
    assert idx.class_names == ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    by_id = {t.clip_id: t for t in idx.tasks}
    assert by_id["1001_IEO_HAP_LO"].label == "HAP" and by_id["1001_IEO_HAP_LO"].speaker == "1001"
    assert by_id["1003_TIE_DIS_XX"].label == "DIS"
    assert by_id["1002_DFA_SAD_XX"].audio_path.endswith("AudioWAV/1002_DFA_SAD_XX.wav")
    assert by_id["1002_DFA_SAD_XX"].video_path.endswith("VideoFlash/1002_DFA_SAD_XX.flv")
    assert CORRUPT_ID in by_id  # media problems are found at decode time, not here
    r = _reasons(idx)
    assert r["malformed_name"] == {"not_a_crema_name"}
    assert r["unknown_label"] == {"1007_DFA_XYZ_XX"}
    assert r["missing_file"] == {"1008_DFA_NEU_XX"}
    missing = next(s for s in idx.skipped if s.reason == "missing_file")
    assert missing.path.endswith("VideoFlash/1008_DFA_NEU_XX.flv")


def test_crema_d_speaker_split_holds_out_whole_actors(crema_d_clean_raw):
    idx = D.index_crema_d(crema_d_clean_raw, seed=0)
    spk = {s: {t.speaker for t in idx.tasks if t.split == s} for s in D.SPLITS}
    assert not (spk["train"] & spk["val"] or spk["train"] & spk["test"] or spk["val"] & spk["test"])
    assert [len(spk[s]) for s in D.SPLITS] == [4, 1, 1]  # 6 actors: round(4.2), round(4.8) - 4
    again = D.index_crema_d(crema_d_clean_raw, seed=0)
    assert [t.split for t in again.tasks] == [t.split for t in idx.tasks]
    other = [D.index_crema_d(crema_d_clean_raw, seed=s).notes["speakers_per_split"]["test"] for s in range(1, 6)]
    assert any(o != idx.notes["speakers_per_split"]["test"] for o in other)


def test_split_by_group_fractions_on_91_actors():
    assign = D.split_by_group([str(1001 + i) for i in range(91)], seed=0)
    counts = collections.Counter(assign.values())
    assert (counts["train"], counts["val"], counts["test"]) == (64, 9, 18)


def test_crema_d_authors_split_without_lists_fails_with_where_to_put_them(crema_d_clean_raw, tmp_path):
    with pytest.raises(D.SplitListError) as e:
        D.index_crema_d(crema_d_clean_raw, split="authors", split_dir=tmp_path)
    msg = str(e.value)
    assert "crema_d_train.csv" in msg and str(tmp_path) in msg and "6698" in msg


def test_crema_d_authors_split_from_lists(crema_d_clean_raw, tmp_path):
    present = [c for c, _ in testing.CREMA_D_TINY]
    train = present[:7] + [f"{2000 + i}_XXX_ANG_XX" for i in range(6698 - 7)]
    test = present[7:] + [f"{3000 + i}_XXX_SAD_XX" for i in range(744 - 2)]
    (tmp_path / "crema_d_train.csv").write_text("\n".join(f"{c},{c.split('_')[2]}" for c in train) + "\n")
    (tmp_path / "crema_d_test.csv").write_text("\n".join(test) + "\n")
    idx = D.index_crema_d(crema_d_clean_raw, split="authors", split_dir=tmp_path)
    splits = {t.clip_id: t.split for t in idx.tasks}
    assert {c for c, s in splits.items() if s == "test"} == set(present[7:])
    assert {c for c, s in splits.items() if s in ("train", "val")} == set(present[:7])
    # val is a seeded 10% of the authors' whole train list (670 of 6698), whichever clips are present
    val_ids = D.validation_keys(train, seed=0, fraction=0.1)
    assert len(val_ids) == 670
    assert {c for c, s in splits.items() if s == "val"} == set(present[:7]) & val_ids
    assert len(_reasons(idx)["missing_file"]) == 6698 + 744 - 9
    (tmp_path / "crema_d_test.csv").write_text("\n".join(test[:-1]) + "\n")
    with pytest.raises(D.SplitListError, match="expected 744"):
        D.index_crema_d(crema_d_clean_raw, split="authors", split_dir=tmp_path)


def test_crema_d_authors_split_uses_the_shipped_lists(crema_d_clean_raw):
    # read the shipped csv files directly (not through datasets.py) as the reference
    ref = {}
    for split in ("train", "test"):
        with open(D.SPLITS_PACKAGE_DIR / f"crema_d_{split}.csv", encoding="utf-8-sig") as f:
            rows = [line.strip().split(",") for line in f if line.strip()]
        assert len(rows) == {"train": 6698, "test": 744}[split]
        ref.update({cid: split for cid, label in rows})
    assert len(ref) == 6698 + 744  # disjoint lists
    idx = D.index_crema_d(crema_d_clean_raw, split="authors")
    got = {t.clip_id: t.split for t in idx.tasks}
    assert got, "no fixture clip is in the authors' lists"
    for cid, split in got.items():
        assert ref[cid] == ("train" if split == "val" else split), cid
    assert len(_reasons(idx)["missing_file"]) == len(ref) - len(got)


def test_crema_d_authors_list_with_a_wrong_label_is_refused_naming_the_line(crema_d_clean_raw, tmp_path):
    train = [f"{2000 + i}_XXX_ANG_XX,ANG" for i in range(6698)]
    train[41] = "2041_XXX_ANG_XX,SAD"
    (tmp_path / "crema_d_train.csv").write_text("\n".join(train) + "\n")
    (tmp_path / "crema_d_test.csv").write_text("\n".join(f"{3000 + i}_XXX_SAD_XX" for i in range(744)) + "\n")
    with pytest.raises(D.SplitListError, match=r"crema_d_train.csv:42: label 'SAD' does not match"):
        D.index_crema_d(crema_d_clean_raw, split="authors", split_dir=tmp_path)


def test_missing_raw_dirs_name_the_expected_layout(tmp_path):
    with pytest.raises(D.RawLayoutError, match="AudioWAV"):
        D.index_crema_d(tmp_path / "nope")
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(D.RawLayoutError, match="VideoFlash"):
        D.index_crema_d(tmp_path)
    with pytest.raises(D.RawLayoutError, match="Actor_"):
        D.index_ravdess(tmp_path)
    with pytest.raises(D.RawLayoutError, match="Annotations.txt|AVE"):
        D.index_ave(tmp_path)
    with pytest.raises(D.RawLayoutError, match="vggsound.csv"):
        D.index_vggsound(tmp_path)


def test_ravdess_modality_channel_labels_and_actor_split(ravdess_raw):
    idx = D.index_ravdess(ravdess_raw)
    assert len(idx.class_names) == 8
    assert len(idx.tasks) == 6 * 3  # audio-video speech clips only
    for t in idx.tasks:
        assert t.video_path.endswith(".mp4") and t.clip_id.startswith("01-01-")
        assert t.label == D.RAVDESS_CLASSES[int(t.clip_id.split("-")[2]) - 1]
        assert t.speaker == t.clip_id.split("-")[6]
    assert {t.label for t in idx.tasks} == {"neutral", "happy", "angry"}
    with_wav = [t for t in idx.tasks if t.audio_path.endswith(".wav")]
    assert {t.speaker for t in with_wav} == {"01"} and all("/03-01-" in t.audio_path for t in with_wav)
    assert idx.notes["ignored"] == {"modality_02": 6, "channel_02": 1, "audio_only_wav": 3}
    spk = {s: {t.speaker for t in idx.tasks if t.split == s} for s in D.SPLITS}
    assert not (spk["train"] & spk["test"] or spk["train"] & spk["val"] or spk["val"] & spk["test"])
    both = D.index_ravdess(ravdess_raw, channel="both")
    assert len(both.tasks) == 6 * 3 + 1


def test_ravdess_bad_names_are_reported(tmp_path):
    testing.make_ravdess(tmp_path, actors=(1,), emotions=(1,), with_wav_for=(), song_actor=None)
    testing.write_video(tmp_path / "Actor_01" / "01-01-09-01-01-01-01.mp4", seconds=0.5, fps=25)
    testing.write_video(tmp_path / "Actor_01" / "01-01-01-01-01-01-02.mp4", seconds=0.5, fps=25)
    testing.write_video(tmp_path / "Actor_01" / "clip.mp4", seconds=0.5, fps=25)
    r = _reasons(D.index_ravdess(tmp_path))
    assert r["unknown_label"] == {"01-01-09-01-01-01-01"}
    assert r["malformed_name"] == {"01-01-01-01-01-01-02", "clip"}


def test_ave_anomalies_are_each_reported(ave_raw):
    idx = D.index_ave(ave_raw)
    assert len(idx.class_names) == 28 and "warning" not in idx.notes
    got = {t.clip_id: (t.split, t.label, t.start, t.end) for t in idx.tasks}
    assert got == {"vidA": ("train", "Class00", 0, 3), "vidB": ("train", "Class01", 1, 3),
                   "vidC": ("train", "Class02", 0, 2), "vidD": ("val", "Class03", 0, 3),
                   "vidE": ("test", "Class04", 0, 3), "vidH": ("test", "Class08", 0, 3)}
    assert all(t.min_frames == 10 for t in idx.tasks)
    r = _reasons(idx)
    assert r["duplicate_row"] == {"vidC"}
    assert r["in_two_splits"] == {"vidE"}
    assert r["conflicting_labels"] == {"vidF"}
    assert len([s for s in idx.skipped if s.reason == "conflicting_labels"]) == 2  # both rows
    assert r["zero_length_event"] == {"vidG"}
    assert r["missing_file"] == {"vidMissing"}
    assert r["malformed_line"] == {"vidBroken"}
    assert r["unknown_label"] == {"vidA2"}
    bad_line = next(s for s in idx.skipped if s.reason == "malformed_line")
    assert bad_line.path.endswith("testSet.txt:7")  # header + 5 rows before it


def test_vggsound_class_subset_val_carve_out_and_missing_files(vggsound_raw, tmp_path):
    idx = D.index_vggsound(vggsound_raw)
    assert idx.class_names == ("cat meowing", "dog barking", "playing piano, jazz")
    assert _reasons(idx)["missing_file"] == {"kkkkkkkkkkk_000007"}
    assert {t.split for t in idx.tasks} == {"train", "val", "test"}
    assert sum(t.split == "val" for t in idx.tasks) == 1  # round(0.1 * 7 train clips)
    assert all(t.video_path.endswith(f"video/{t.key}.mp4") and t.min_frames == 10 for t in idx.tasks)
    two = D.index_vggsound(vggsound_raw, classes="2")
    assert two.class_names == ("cat meowing", "dog barking") and two.notes["excluded_by_class_subset"] == 2
    f = tmp_path / "classes.txt"
    f.write_text("playing piano, jazz\ndog barking\n")
    assert D.index_vggsound(vggsound_raw, classes=str(f)).class_names == ("dog barking", "playing piano, jazz")
    f.write_text("no such class\n")
    with pytest.raises(ValueError, match="no such class"):
        D.index_vggsound(vggsound_raw, classes=str(f))

"""--protocol clean|authors: the presets set what docs/protocol.md says, mix with later overrides,
and the report says when a run selected its epochs on the test split."""
import dataclasses

import pytest

from experiments import run as run_cli
from ucmkd_jax.config import ExperimentConfig, get_preset
from ucmkd_jax.experiment import TEST_SELECTION_NOTICE, summarize
from ucmkd_jax.fidelity import PROTOCOLS, apply_protocol
from ucmkd_jax.overrides import ConfigError, get_field
from ucmkd_jax.results import mean_std


def test_clean_is_the_defaults_and_both_protocols_set_the_same_fields():
    assert [p for p, _ in PROTOCOLS["clean"]] == [p for p, _ in PROTOCOLS["authors"]]
    default = ExperimentConfig()
    for path, value in PROTOCOLS["clean"]:
        assert get_field(default, path) == value, path
    authors = apply_protocol(get_preset("crema_d"), "authors")
    assert authors.protocol == "authors"
    for path, value in PROTOCOLS["authors"]:
        assert get_field(authors, path) == value, path
    assert apply_protocol(authors, "clean") == dataclasses.replace(get_preset("crema_d"))


def test_cli_applies_the_protocol_before_flags_and_set():
    _, cfg = run_cli.parse(["--dataset", "crema_d", "--data-dir", "D", "--protocol", "authors",
                            "--set", "train.model_selection=val", "--hypergrad", "unrolled",
                            "--set", "method.inner_eps_root=1e-8"])
    assert cfg.protocol == "authors" and cfg.optim.schedule_unit == "epoch"
    assert cfg.train.model_selection == "val" and cfg.method.hypergrad == "unrolled"
    assert cfg.method.inner_eps_root == 1e-8
    _, cfg = run_cli.parse(["--set", "protocol=authors"])  # --set protocol=... applies the preset too
    assert cfg.method.fa.objective == "transport"
    with pytest.raises(ConfigError, match="unknown protocol"):
        apply_protocol(ExperimentConfig(), "paper")


def test_unrolled_with_the_release_adamw_is_refused_before_the_run(tmp_path):
    with pytest.raises(ConfigError, match="inner_eps_root > 0"):
        run_cli.main(["--protocol", "authors", "--hypergrad", "unrolled", "--methods", "ucmkd", "--epochs", "1",
                      "--teacher-epochs", "1", "--seeds", "1", "--no-progress", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "teachers").exists()  # refused before any training


def _rec(method, acc, selection):
    return {"direction": "a2v", "method": method, "val_acc": acc, "test_acc": acc, "teacher_test_acc": 0.5,
            "wall_s": 1.0, "model_selection": selection}


def test_report_warns_of_test_selection_and_uses_the_protocol_ddof():
    recs = [_rec("ce", 0.5, "test"), _rec("ce", 0.7, "test")]
    table = summarize(recs, ddof=0)
    assert table.startswith(TEST_SELECTION_NOTICE)
    assert "60.00 ± 10.00" in table  # population std of 50 and 70
    assert "60.00 ± 14.14" in summarize([_rec("ce", 0.5, "val"), _rec("ce", 0.7, "val")])
    assert TEST_SELECTION_NOTICE not in summarize([_rec("ce", 0.5, "val")])
    assert mean_std([0.5, 0.7], ddof=0)[1] == pytest.approx(10.0)


def test_release_video_frames_follow_the_backbone():
    from ucmkd_jax.experiment import video_frames
    assert video_frames("release", "vit_s16") == "mean_pixels"  # the ViT release: x.mean(dim=2)
    assert video_frames("release", "resnet18") == "per_frame"  # the CREMA-D release: frames folded, pooled
    assert video_frames("mean_pixels", "resnet18") == "mean_pixels"
    assert apply_protocol(ExperimentConfig(), "authors").model.video_frames == "release"


def test_release_video_crop_and_flip_are_protocol_fields_reachable_with_set():
    authors = apply_protocol(ExperimentConfig(), "authors")
    assert (authors.video_crop, authors.video_flip) == ("center_crop", "frame")  # docs/protocol.md row 11
    assert (ExperimentConfig().video_crop, ExperimentConfig().video_flip) == ("resize_crop", "clip")
    _, cfg = run_cli.parse(["--dataset", "crema_d", "--data-dir", "D", "--set", "video_crop=center_crop",
                            "--set", "video_flip=frame", "--set", "shard_config=authors_raw"])
    assert (cfg.video_crop, cfg.video_flip, cfg.shard_config) == ("center_crop", "frame", "authors_raw")
    with pytest.raises(ConfigError, match="video_crop"):
        ExperimentConfig(video_crop="resize")
